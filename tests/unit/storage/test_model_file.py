"""Model files: round trip, atomic writes, corruption, and the streaming writer/reader."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from fedrun.errors import StateError
from fedrun.storage.model_file import (
    MAGIC,
    TensorFileWriter,
    _read_varint,
    iter_tensor_file,
    load_model,
    save_model,
)


@pytest.fixture
def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "conv.bias": np.zeros(4, dtype=np.float32),
        "steps": np.array(12, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 5), dtype=np.float16),
        "big_endian": np.arange(6, dtype=">f8"),
    }


def frame_ends(path) -> list[int]:
    """Byte offsets at which each part of a model file ends: the model header frame, then for
    every tensor its header frame and its raw payload."""
    from fedrun.protocol import federation_pb2 as pb

    ends = []
    with open(path, "rb") as f:
        assert f.read(len(MAGIC)) == MAGIC
        while (size := _read_varint(f)) is not None:
            frame = pb.TensorFrame()
            frame.ParseFromString(f.read(size))
            ends.append(f.tell())
            if frame.WhichOneof("body") == "header" and frame.header.payload_bytes:
                f.seek(frame.header.payload_bytes, 1)
                ends.append(f.tell())
    return ends


def other_files(folder, keep) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


# ---------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path, tensors):
    # Execute
    path = save_model(
        tmp_path / "save" / "best.pbuf",
        tensors,
        round_num=4,
        plan_hash="abc123",
        kind="best",
        metrics={"aggregated_model_validation/acc": 0.875},
    )
    snapshot = load_model(path)

    # Assert
    assert path == tmp_path / "save" / "best.pbuf"
    assert list(snapshot.tensors) == list(tensors)
    for name, array in tensors.items():
        out = snapshot.tensors[name]
        assert out.shape == array.shape
        assert out.dtype == array.dtype.newbyteorder("<")
        np.testing.assert_array_equal(out, array)
    assert (snapshot.round, snapshot.plan_hash, snapshot.kind) == (4, "abc123", "best")
    assert snapshot.metrics == {"aggregated_model_validation/acc": 0.875}


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, tensors):
    # Prepare
    path = tmp_path / "last.pbuf"
    save_model(path, {"old": np.ones(3)}, round_num=1)

    # Execute
    save_model(path, tensors, round_num=2)

    # Assert
    assert other_files(tmp_path, "last.pbuf") == []
    assert load_model(path).round == 2
    assert "old" not in load_model(path).tensors
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others, not 0600


def test_failed_save_keeps_the_previous_file_and_no_temporary(tmp_path):
    # Prepare
    path = tmp_path / "last.pbuf"
    save_model(path, {"w": np.ones(3)}, round_num=1)
    before = path.read_bytes()

    # Execute: an object tensor cannot be written; the failure happens mid-file
    with pytest.raises(Exception, match="FX-WIRE-001"):
        save_model(path, {"w": np.ones(3), "bad": np.array([None])}, round_num=2)

    # Assert
    assert path.read_bytes() == before
    assert other_files(tmp_path, "last.pbuf") == []


def test_save_into_an_unwritable_place_is_a_state_error(tmp_path):
    # Prepare: the parent "folder" is a file
    blocker = tmp_path / "save"
    blocker.write_text("not a folder")

    # Execute
    with pytest.raises(StateError) as caught:
        save_model(blocker / "best.pbuf", {"w": np.ones(1)}, round_num=0)

    # Assert
    assert caught.value.code == "FX-STATE-001"
    assert caught.value.fix


@pytest.mark.parametrize("failure", ["ENOSPC", "EIO", "EROFS"])
def test_a_disk_failing_as_the_file_is_created_is_a_write_failure(tmp_path, monkeypatch, failure):
    # a result file the disk cannot create (full, or an I/O error) is FX-STATE-005 like any
    # failed write: the collaborator sends the result again; it was FX-STATE-001 with advice
    # about permissions and *_state_path
    import errno
    import os

    from fedrun.storage import model_file

    def failing(*args, **kwargs):
        code = getattr(errno, failure)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(model_file.tempfile, "mkstemp", failing)
    with pytest.raises(StateError) as caught:
        save_model(tmp_path / "spool" / "r1_a_train-0.result", {"w": np.ones(1)}, round_num=0)

    assert caught.value.code == "FX-STATE-005"
    assert "state_path" not in caught.value.fix and "run the command again" in caught.value.fix


def test_missing_file_is_a_state_error(tmp_path):
    # Execute
    with pytest.raises(StateError) as caught:
        load_model(tmp_path / "init.pbuf")

    # Assert
    assert caught.value.code == "FX-STATE-003"
    assert "fx plan initialize" in caught.value.fix


def test_file_with_bad_magic_is_a_state_error(tmp_path):
    # Prepare
    path = tmp_path / "init.pbuf"
    path.write_bytes(b"\x0a\x03abc" * 10)

    # Execute
    with pytest.raises(StateError) as caught:
        load_model(path)

    # Assert
    assert caught.value.code == "FX-STATE-002"
    assert "bad magic" in caught.value.message


def truncations(path) -> dict[str, int]:
    """Cut points: inside a frame, and at each frame boundary after the model header."""
    ends = frame_ends(path)
    cuts = {"inside_first_frame": len(MAGIC) + 3, "inside_last_frame": ends[-1] - 2}
    for i, end in enumerate(ends[:-1]):
        cuts[f"after_frame_{i}"] = end
    return cuts


@pytest.mark.parametrize("reader", ["load_model", "iter_tensor_file"])
def test_every_truncation_is_a_state_error(tmp_path, tensors, reader):
    # Prepare
    path = save_model(tmp_path / "m.pbuf", tensors, round_num=1)
    raw = path.read_bytes()
    read = load_model if reader == "load_model" else lambda p: list(iter_tensor_file(p))

    for label, cut in truncations(path).items():
        broken = tmp_path / f"{label}.pbuf"
        broken.write_bytes(raw[:cut])

        # Execute
        with pytest.raises(StateError) as caught:
            read(broken)

        # Assert
        assert caught.value.code == "FX-STATE-002", label
        assert str(broken) in caught.value.message
        assert caught.value.fix


@pytest.mark.parametrize("reader", ["load_model", "iter_tensor_file"])
def test_garbage_frame_is_a_state_error(tmp_path, reader):
    # Prepare
    path = tmp_path / "m.pbuf"
    path.write_bytes(MAGIC + b"\x05\xff\xff\xff\xff\xff")
    read = load_model if reader == "load_model" else lambda p: list(iter_tensor_file(p))

    # Execute
    with pytest.raises(StateError) as caught:
        read(path)

    # Assert
    assert caught.value.code == "FX-STATE-002"


# ---------------------------------------------------------------------- streaming writer
def test_tensor_file_writer_and_iter_tensor_file(tmp_path, tensors):
    # Prepare
    path = tmp_path / "spool" / "r0_one_train.result"
    writer = TensorFileWriter(path, round_num=0, tensor_count=len(tensors), kind="result")

    # Execute
    for i, (name, array) in enumerate(tensors.items()):
        writer.write(name, array, delta=i % 2 == 1)
    assert not path.exists()  # nothing visible before commit
    committed = writer.commit()
    read = list(iter_tensor_file(committed))

    # Assert
    assert committed == path
    assert [name for name, _, _ in read] == list(tensors)
    assert [delta for _, _, delta in read] == [i % 2 == 1 for i in range(len(tensors))]
    for (name, array, _), original in zip(read, tensors.values(), strict=True):
        np.testing.assert_array_equal(array, original, err_msg=name)
    assert load_model(path).kind == "result"
    assert other_files(path.parent, path.name) == []


def test_tensor_file_writer_abort_leaves_nothing(tmp_path):
    # Prepare
    folder = tmp_path / "spool"
    writer = TensorFileWriter(folder / "r0_one_train.result", round_num=0, tensor_count=2)
    writer.write("w", np.ones((100, 100)))

    # Execute
    writer.abort()
    writer.abort()  # idempotent

    # Assert
    assert list(folder.iterdir()) == []


def test_tensor_file_with_fewer_tensors_than_announced_is_refused(tmp_path):
    # Prepare: a writer committed with one of the two announced tensors
    path = tmp_path / "r0_one_train.result"
    writer = TensorFileWriter(path, round_num=0, tensor_count=2, durable=False)
    writer.write("w", np.ones(3))
    writer.commit()

    # Execute
    with pytest.raises(StateError) as caught:
        list(iter_tensor_file(path))

    # Assert
    assert caught.value.code == "FX-STATE-002"
    assert "1 of 2 tensors" in caught.value.message


def test_model_view_maps_tensors_without_reading_them(tmp_path, tensors):
    from fedrun.protocol.codec import mapped_file_range
    from fedrun.storage.model_file import open_model_view

    path = save_model(tmp_path / "m.pbuf", tensors, round_num=4, kind="last")
    view = open_model_view(path)
    assert (view.round, view.kind) == (4, "last")
    for name, array in tensors.items():
        np.testing.assert_array_equal(view.tensors[name], array)
        if array.size:
            assert mapped_file_range(view.tensors[name])[0] == str(path)
            assert not view.tensors[name].flags.writeable


def test_model_view_refuses_a_truncated_file(tmp_path, tensors):
    from fedrun.storage.model_file import open_model_view

    path = save_model(tmp_path / "m.pbuf", tensors, round_num=0)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(StateError) as info:
        open_model_view(path)
    assert info.value.code == "FX-STATE-002"


def test_copy_model_rewrites_only_the_header(tmp_path, tensors):
    from fedrun.storage.model_file import copy_model, mapped_model_file, open_model_view

    src = save_model(tmp_path / "last.pbuf", tensors, round_num=3, kind="last")
    view = open_model_view(src).tensors
    assert mapped_model_file(view) == src
    assert mapped_model_file(dict(list(view.items())[:1])) is None  # not the whole file
    assert mapped_model_file(tensors) is None  # in memory
    copy_model(src, tmp_path / "best.pbuf", round_num=2, kind="best", metrics={"acc": 0.9})
    best = load_model(tmp_path / "best.pbuf")
    assert (best.round, best.kind, best.metrics) == (2, "best", {"acc": 0.9})
    assert list(best.tensors) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(best.tensors[name], array)


def test_a_mapped_model_is_still_served_correctly_after_its_file_is_replaced(tmp_path, tensors):
    from fedrun.protocol.codec import encode_tensor_wire
    from fedrun.storage.model_file import mapped_model_file, open_model_view

    path = save_model(tmp_path / "last.pbuf", tensors, round_num=1)
    view = open_model_view(path).tensors
    save_model(path, {k: np.zeros_like(v) for k, v in tensors.items()}, round_num=2)
    assert mapped_model_file(view) is None  # last.pbuf is another file now: write, not copy
    for name, array in tensors.items():
        frames = [
            f if isinstance(f, bytes) else f.SerializeToString()
            for f in encode_tensor_wire(name, view[name], chunk_bytes=16)
        ]
        expected = [
            f if isinstance(f, bytes) else f.SerializeToString()
            for f in encode_tensor_wire(
                name, array.astype(array.dtype.newbyteorder("<")), chunk_bytes=16
            )
        ]
        assert frames == expected


def test_a_full_disk_is_a_clear_state_error_and_leaves_no_file(tmp_path, tensors):
    import os

    # /dev/full fails every write with ENOSPC, like a full disk; reached through a symlink so
    # that the clean-up removes only the link
    os.symlink("/dev/full", tmp_path / "spare")
    with pytest.raises(StateError) as info:
        save_model(tmp_path / "last.pbuf", tensors, round_num=1, reuse=tmp_path / "spare")
    assert info.value.code == "FX-STATE-005"
    assert "No space left on device" in info.value.message
    assert "resumes" in info.value.fix
    assert not (tmp_path / "last.pbuf").exists() and os.path.exists("/dev/full")


def test_a_missing_model_file_gets_a_fix_that_fits_it(tmp_path):
    with pytest.raises(StateError) as caught:
        load_model(tmp_path / "save" / "last.pbuf")
    assert caught.value.code == "FX-STATE-003" and "check the path" in caught.value.fix
    with pytest.raises(StateError) as caught:
        load_model(tmp_path / "save" / "init.pbuf")
    assert "fx plan initialize" in caught.value.fix


# ---------------------------------------------------------------------- early writeback
@pytest.fixture
def writeback_requests(monkeypatch):
    """The (offset, length) ranges a file asked the kernel to start writing, and the bytes the
    file held at that moment (a range must already be in the file, not in Python's buffer)."""
    from fedrun.storage import model_file

    requests: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, length: int, flags: int) -> int:
        assert flags == 2  # SYNC_FILE_RANGE_WRITE: start writing, do not wait
        requests.append((offset, length, os.fstat(fd).st_size))
        return 0

    monkeypatch.setattr(model_file, "_sync_file_range", record)
    monkeypatch.setattr(model_file, "WRITEBACK_BYTES", 1 << 20)
    return requests


def streamed_result(path, durable: bool, chunks: int, chunk_bytes: int = 300_000) -> bytes:
    """A result spooled as it arrives from the network: a header, then payload chunks."""
    from fedrun.protocol.codec import raw_header

    payload = np.random.default_rng(5).integers(0, 255, chunks * chunk_bytes, dtype=np.uint8)
    writer = TensorFileWriter(path, round_num=1, tensor_count=1, durable=durable)
    writer.begin_tensor(raw_header("w", payload))
    for i in range(chunks):
        writer.write_payload(memoryview(payload[i * chunk_bytes : (i + 1) * chunk_bytes]))
    writer.commit()
    return payload.tobytes()


def test_a_durable_file_is_written_back_as_it_is_written(tmp_path, writeback_requests):
    path = tmp_path / "r1_one_train.result"

    payload = streamed_result(path, durable=True, chunks=20)  # 6 MB in 300 kB chunks

    # every MiB given (in this test) was handed to the kernel at once, range after range,
    # each range already in the file when asked for
    assert len(writeback_requests) == 5
    offset = 0
    for start, length, size_then in writeback_requests:
        assert start == offset and length >= 1 << 20 and start + length <= size_then
        offset = start + length
    assert offset <= path.stat().st_size
    [(name, array, _)] = list(iter_tensor_file(path))
    assert name == "w" and array.tobytes() == payload


def test_a_file_that_need_not_survive_a_crash_is_not_written_back_early(
    tmp_path, writeback_requests
):
    path = tmp_path / "r1_one_train.result"

    payload = streamed_result(path, durable=False, chunks=20)

    assert writeback_requests == []
    [(_, array, _)] = list(iter_tensor_file(path))
    assert array.tobytes() == payload


def test_a_saved_model_is_written_back_tensor_by_tensor(tmp_path, writeback_requests):
    big = {f"t{i}": np.full(400_000, i, dtype=np.float32) for i in range(4)}  # 1.6 MB each

    save_model(tmp_path / "last.pbuf", big, round_num=3)

    assert [start for start, _, _ in writeback_requests][:1] == [0]
    assert len(writeback_requests) == 4  # one per tensor: each is over a (test) MiB
    loaded = load_model(tmp_path / "last.pbuf").tensors
    for name, array in big.items():
        np.testing.assert_array_equal(loaded[name], array)
