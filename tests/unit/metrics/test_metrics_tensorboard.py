"""TensorBoard event files written by hand, read back by the real tensorboard package."""

from __future__ import annotations

import math
import os
import struct
import threading
from pathlib import Path

import pytest

from fedrun.metrics import TensorBoardWriter
from fedrun.metrics.tensorboard import (
    crc32c,
    encode_scalar_event,
    frame_record,
    masked_crc32c,
)

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _load(logdir: Path):  # noqa: ANN202 (tensorboard's own type)
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _records(path: Path) -> list[bytes]:
    """Split a TFRecord file, checking both CRCs of every record."""
    data = path.read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert len_crc == masked_crc32c(header)
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert body_crc == masked_crc32c(body)
        out.append(body)
        pos += 16 + length
    assert pos == len(data)
    return out


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),
        (b"", 0x00000000),
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4: 32 bytes of zeros
        (b"\xff" * 32, 0x62A8AB43),  # RFC 3720 B.4: 32 bytes of 0xff
        (bytes(range(32)), 0x46DD794E),  # RFC 3720 B.4: incrementing
    ],
)
def test_crc32c_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


def test_crc32c_can_continue() -> None:
    assert crc32c(b"6789", crc32c(b"12345")) == crc32c(b"123456789")


def test_masked_crc_formula() -> None:
    crc = crc32c(b"abc")
    assert masked_crc32c(b"abc") == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def test_frame_record_layout() -> None:
    record = frame_record(b"hello")
    assert len(record) == 8 + 4 + 5 + 4
    assert record[:8] == (5).to_bytes(8, "little")
    assert record[12:17] == b"hello"


def test_scalars_read_back_by_tensorboard(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    with TensorBoardWriter(logdir) as tb:
        for step in range(5):
            tb.add_scalar("train/loss", 1.0 / (step + 1), step, wall_time=1000.0 + step)
            tb.add_scalar("valid/accuracy", 0.5 + step / 10, step)
        tb.add_scalar("big/step", 2.5, 2**40)
        path = tb.path
    assert path.parent == logdir
    parts = path.name.split(".")
    assert parts[:3] == ["events", "out", "tfevents"]
    assert parts[3].isdigit() and parts[-1] == "fedrun" and parts[-2].isdigit()
    assert parts[-3] == str(os.getpid())

    acc = _load(logdir)
    assert sorted(acc.Tags()["scalars"]) == ["big/step", "train/loss", "valid/accuracy"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 1, 2, 3, 4]
    assert [e.wall_time for e in loss] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    for e in loss:
        assert e.value == pytest.approx(1.0 / (e.step + 1), rel=1e-6)
    acc_values = [e.value for e in acc.Scalars("valid/accuracy")]
    assert acc_values == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9], rel=1e-6)
    assert acc.Scalars("big/step")[0].step == 2**40
    assert acc.file_version == 2.0


def test_first_record_is_file_version(tmp_path: Path) -> None:
    with TensorBoardWriter(tmp_path) as tb:
        tb.add_scalar("x", 1.0, 1)
    records = _records(tb.path)
    assert len(records) == 2
    assert b"brain.Event:2" in records[0]
    assert records[1] == encode_scalar_event("x", 1.0, 1, struct.unpack("<d", records[1][1:9])[0])


def test_special_values_and_numpy_scalars(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    with TensorBoardWriter(tmp_path) as tb:
        tb.add_scalar("s", float("nan"), 0)
        tb.add_scalar("s", float("inf"), 1)
        tb.add_scalar("s", 1e300, 2)  # beyond float32: stored as +inf
        tb.add_scalar("s", np.float64(0.25), np.int64(3))
        tb.add_scalar("s", -2, -1)  # negative step: 10-byte varint
        tb.add_scalar("unicode/é", 1.0, 0)
    acc = _load(tmp_path)
    values = {e.step: e.value for e in acc.Scalars("s")}
    assert math.isnan(values[0])
    assert values[1] == math.inf and values[2] == math.inf
    assert values[3] == 0.25
    assert values[-1] == -2.0
    assert "unicode/é" in acc.Tags()["scalars"]


def test_data_visible_before_close(tmp_path: Path) -> None:
    tb = TensorBoardWriter(tmp_path)
    try:
        tb.add_scalar("live", 3.0, 7)
        # No flush or close: each add_scalar already reached the OS.
        assert [e.step for e in _load(tmp_path).Scalars("live")] == [7]
        tb.flush()
    finally:
        tb.close()


def test_two_writers_use_distinct_files(tmp_path: Path) -> None:
    with TensorBoardWriter(tmp_path) as a, TensorBoardWriter(tmp_path) as b:
        a.add_scalar("a", 1.0, 0)
        b.add_scalar("b", 2.0, 0)
    assert a.path != b.path
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2


def test_concurrent_writes_do_not_interleave(tmp_path: Path) -> None:
    with TensorBoardWriter(tmp_path) as tb:

        def work(k: int) -> None:
            for step in range(50):
                tb.add_scalar(f"t{k}", float(step), step)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(_records(tb.path)) == 1 + 4 * 50


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    tb = TensorBoardWriter(tmp_path / "nested" / "dir")
    assert not tb.closed
    tb.close()
    tb.close()
    tb.flush()
    assert tb.closed
    with pytest.raises(ValueError, match="closed"):
        tb.add_scalar("x", 1.0, 0)


@pytest.mark.parametrize(
    ("tag", "step", "error"),
    [("", 0, ValueError), (None, 0, ValueError), ("x", 1.5, ValueError), ("x", True, TypeError)],
)
def test_bad_arguments(tmp_path: Path, tag: object, step: object, error: type) -> None:
    with TensorBoardWriter(tmp_path) as tb, pytest.raises(error):
        tb.add_scalar(tag, 1.0, step)  # type: ignore[arg-type]
