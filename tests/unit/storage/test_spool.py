"""Spool: result files, and finished ones overwritten in place by the next round."""

from __future__ import annotations

import numpy as np

from fedrun.storage.model_file import load_model
from fedrun.storage.spool import Spool


def write(spool: Spool, round_num: int, who: str, array: np.ndarray):
    writer = spool.writer(round_num, who, "train", tensor_count=1, plan_hash="p", durable=True)
    writer.write("w", array)
    return writer.commit()


def test_a_retired_result_file_is_overwritten_by_the_next_round(tmp_path):
    spool = Spool(tmp_path)
    first = write(spool, 0, "a", np.arange(1000, dtype=np.float32))
    inode = first.stat().st_ino
    spool.retire_round(0)
    assert not first.exists() and [p.name for p in tmp_path.iterdir()] == ["free-0.spool"]
    # a shorter result in the same file: the old tail is cut off
    second = write(spool, 1, "a", np.arange(10, dtype=np.float32))
    assert second.name.startswith("r1_a_train-") and second.stat().st_ino == inode
    np.testing.assert_array_equal(load_model(second).tensors["w"], np.arange(10))
    assert [p.name for p in tmp_path.iterdir()] == [second.name]


def test_the_free_list_is_bounded_and_dropped_at_the_end(tmp_path):
    spool = Spool(tmp_path, max_free=2, max_free_bytes=0)
    for who in "abc":
        write(spool, 0, who, np.ones(4, dtype=np.float32))
    spool.retire_round(0)
    assert len(list(tmp_path.glob("free-*.spool"))) == 2
    assert not list(tmp_path.glob("*.result"))
    spool.drop_free()
    assert list(tmp_path.iterdir()) == []


def test_free_files_of_an_earlier_run_are_removed(tmp_path):
    (tmp_path / "free-3.spool").write_bytes(b"old")
    Spool(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_small_files_beyond_the_count_are_kept_within_the_byte_budget(tmp_path):
    # Prepare: 2 files kept whatever their size, more while all kept files total <= 3 KiB
    spool = Spool(tmp_path, max_free=2, max_free_bytes=3 << 10)
    small = np.ones(100, dtype=np.float32)  # about 0.5 KiB as a file
    large = np.ones(1000, dtype=np.float32)  # about 4 KiB: over the budget on its own
    for who in "abcd":
        write(spool, 0, who, small)
    write(spool, 0, "e", large)
    sizes = {p.name: p.stat().st_size for p in tmp_path.glob("*.result")}

    # Execute
    spool.retire_round(0)

    # Assert: the four small ones are kept (two by count, two by bytes), the large one is not
    kept = sorted(tmp_path.glob("free-*.spool"))
    assert len(kept) == 4
    assert sum(p.stat().st_size for p in kept) == sum(
        size for name, size in sizes.items() if not name.startswith("r0_e_")
    )
    assert not list(tmp_path.glob("*.result"))
    # the next round overwrites them: no new files
    inodes = {p.stat().st_ino for p in kept}
    for who in "abcd":
        assert write(spool, 1, who, small).stat().st_ino in inodes
    assert not list(tmp_path.glob("free-*.spool"))


def test_results_a_kill_cut_off_mid_stream_are_removed_when_the_aggregator_starts(tmp_path):
    # Prepare: a result being written when the aggregator was killed (AtomicFile's temporary),
    # and an accepted result of the running round
    (tmp_path / ".r3_a_train.result.k2x9_q0z").write_bytes(b"half a model")
    (tmp_path / "r3_b_train.result").write_bytes(b"accepted")

    # Execute
    Spool(tmp_path)

    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r3_b_train.result"]
