"""SqliteStateStore: accepted results survive a restart; a result can be forgotten (its spool file
was damaged) so that the collaborator does the task again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedrun.errors import StateError
from fedrun.storage.sqlite_state import SqliteStateStore, unreadable_state
from fedrun.storage.state_store import AcceptedResult


def result(collaborator: str, task: str, spool: str = "") -> AcceptedResult:
    return AcceptedResult(0, collaborator, task, 10, {"loss": 0.5}, spool, 4, 4)


def test_a_dropped_result_is_gone_after_a_restart_and_the_others_stay(tmp_path: Path):
    store = SqliteStateStore(tmp_path / "tensor.db")
    store.start("h" * 64, 0)
    assert store.record_result(result("a", "train", str(tmp_path / "a.result")))
    assert store.record_result(result("b", "train"))

    store.drop_result(0, "a", "train")
    store.close()
    again = SqliteStateStore(tmp_path / "tensor.db")

    assert [(r.collaborator, r.task) for r in again.load().results] == [("b", "train")]
    assert again.record_result(result("a", "train"))  # may be sent again


def test_a_result_whose_spool_file_is_gone_is_loaded_for_the_aggregator_to_drop(tmp_path: Path):
    store = SqliteStateStore(tmp_path / "tensor.db")
    store.start("h" * 64, 0)
    store.record_result(result("a", "train", str(tmp_path / "missing.result")))

    (loaded,) = store.load().results  # the aggregator's resume finds it unreadable and drops it

    assert loaded.spool_path.endswith("missing.result")


def test_a_full_database_refuses_the_result_with_a_state_error_and_loses_nothing(tmp_path):
    # Prepare: SQLite's own size cap makes the next insert fail as a full disk does (SQLITE_FULL)
    store = SqliteStateStore(tmp_path / "tensor.db")
    store.start("h" * 64, 0)
    assert store.record_result(result("a", "train"))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    big = AcceptedResult(0, "b", "train", 10, {f"m{i}": 0.5 for i in range(2000)}, "", 4, 4)

    # Execute
    with pytest.raises(StateError) as caught:
        store.record_result(big)

    # Assert: a state error (the server answers UNAVAILABLE: the collaborator sends it again)
    assert caught.value.code == "FX-STATE-005"
    assert "full" in caught.value.message and "'b'" in caught.value.message
    store._db.execute("PRAGMA max_page_count = 1073741823")
    assert store.record_result(big)
    assert [r.collaborator for r in store.load().results] == ["a", "b"]


def test_a_state_file_on_a_full_disk_is_not_called_damaged():
    full = unreadable_state(
        Path("/x/tensor.db"), sqlite3.OperationalError("database or disk is full")
    )
    broken = unreadable_state(Path("/x/tensor.db"), sqlite3.DatabaseError("file is not a database"))

    assert full.code == broken.code == "FX-STATE-011"
    assert "free space" in full.fix and "--reset-state" not in full.fix
    assert "--reset-state" in broken.fix


def test_an_empty_state_file_is_said_not_taken_silently_for_a_first_run(tmp_path, caplog):
    import logging

    path = tmp_path / "tensor.db"
    path.write_bytes(b"")  # e.g. truncated by a disk problem

    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        SqliteStateStore(path)

    assert f"the aggregator state file {path} is empty" in caplog.text
    assert "starts from round 0" in caplog.text


def test_the_end_is_dated_when_committed_and_a_clean_stop_is_noted(tmp_path: Path):
    import time

    store = SqliteStateStore(tmp_path / "tensor.db")
    store.start("h" * 64, 0)
    store.finish_round(0, None, None, experiment_done=False, next_model={})
    assert store.load().finished_at is None  # not finished yet

    before = time.time()
    store.finish_round(1, None, None, experiment_done=True)
    store.close()
    again = SqliteStateStore(tmp_path / "tensor.db")
    saved = again.load()
    assert saved.experiment_done and not saved.ended
    assert saved.finished_at is not None and before <= saved.finished_at <= time.time()

    again.record_ended()
    again.close()
    assert SqliteStateStore(tmp_path / "tensor.db").load().ended


def test_checkpoints_a_kill_left_behind_are_removed_when_the_state_is_loaded(tmp_path: Path):
    # Prepare: at round 2, the checkpoint of round 1 (killed between the commit and its
    # removal), a half-written checkpoint and a link being staged
    store = SqliteStateStore(tmp_path / "tensor.db")
    store.start("h" * 64, 0)
    store.finish_round(0, None, None, experiment_done=False, next_model={"w": np.ones(3)})
    store.finish_round(1, None, None, experiment_done=False, next_model={"w": np.zeros(3)})
    store.close()
    folder = tmp_path / "checkpoints"
    for name in (
        "global_r1.pbuf",
        "aggregation_r1.pbuf",
        ".global_r2.pbuf.ab12cd34",
        ".global_r2.pbuf.link",
    ):
        (folder / name).write_bytes(b"left behind")

    # Execute
    again = SqliteStateStore(tmp_path / "tensor.db")
    saved = again.load()

    # Assert: only the running round's checkpoint stays, and it still loads
    assert saved.round == 2
    assert sorted(p.name for p in folder.iterdir()) == ["global_r2.pbuf"]
    model, _ = again.load_checkpoint(2)
    assert np.array_equal(model["w"], np.zeros(3))


def test_a_state_file_lost_beside_checkpoints_of_a_later_round_is_refused_not_started_over(
    tmp_path: Path,
):
    # Prepare: an experiment at round 2, then its tensor.db (and -wal) deleted or replaced
    store = SqliteStateStore(tmp_path / "tensor.db")
    store.start("h" * 64, 0)
    store.close()
    checkpoint = tmp_path / "checkpoints" / "global_r2.pbuf"
    checkpoint.write_bytes(b"the model of round 2")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'tensor.db'}{suffix}").unlink(missing_ok=True)

    # Execute
    again = SqliteStateStore(tmp_path / "tensor.db")
    with pytest.raises(StateError) as caught:
        again.load()
    again.close()

    # Assert: refused, naming the round, and the checkpoint is kept (starting over deleted it)
    assert caught.value.code == "FX-STATE-022"
    assert "checkpoint of round 2" in caught.value.message and "--reset-state" in caught.value.fix
    assert checkpoint.read_bytes() == b"the model of round 2"


def test_a_damaged_checkpoint_says_it_is_one_file_with_the_saved_model(tmp_path: Path):
    # truncating save/last.pbuf damaged the checkpoint: the error named a file the user had
    # not touched, and pointed at a save/previous-*/ folder that did not exist
    import os

    from fedrun.storage.model_file import save_model

    store = SqliteStateStore(tmp_path / "local_state" / "tensor.db")
    last = tmp_path / "save" / "last.pbuf"
    save_model(last, {"w": np.ones(1000, np.float32)}, round_num=1)
    os.link(last, store.checkpoint_path(1))  # as a round's commit links them
    os.truncate(last, 100)

    with pytest.raises(StateError) as caught:
        store.load_checkpoint(1)
    store.close()

    assert caught.value.code == "FX-STATE-002"
    assert "checkpoint of round 1" in caught.value.message
    assert "one file with the model of that round in save/" in caught.value.message
    assert "--reset-state" in caught.value.fix and "previous-" not in caught.value.fix
