"""ModelStore: last.pbuf is replaced atomically, reusing the file of two saves ago."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedrun.errors import StateError
from fedrun.storage.model_file import load_model, open_model_view
from fedrun.storage.model_store import ModelStore


def model(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(1000, value, dtype=np.float32), "b": np.full(3, value)}


def test_last_reuses_the_file_of_two_saves_ago_and_never_touches_newer_ones(tmp_path):
    store = ModelStore(tmp_path / "best.pbuf", tmp_path / "last.pbuf", "p")
    inodes = []
    for r in range(1, 5):
        store.save_last(model(float(r)), r)
        inodes.append((tmp_path / "last.pbuf").stat().st_ino)
        # what a checkpoint link and the aggregator's served view hold: the newest file
        os.link(tmp_path / "last.pbuf", tmp_path / f"checkpoint{r}.pbuf")
        view = open_model_view(tmp_path / "last.pbuf").tensors
        assert view["w"][0] == r
    assert inodes[2] == inodes[0] and inodes[3] == inodes[1]
    assert load_model(tmp_path / "last.pbuf").round == 4
    # the two newest models are intact (the current one and the one before it)
    assert load_model(tmp_path / "checkpoint4.pbuf").tensors["w"][0] == 4
    assert load_model(tmp_path / "checkpoint3.pbuf").tensors["w"][0] == 3
    store.finish(None)
    assert not list(tmp_path.glob(".last.pbuf.spare*"))


def test_a_spare_left_by_an_earlier_process_is_never_overwritten(tmp_path):
    # a resumed run may start from the model the spare name still points at
    first = ModelStore(tmp_path / "best.pbuf", tmp_path / "last.pbuf", "p")
    first.save_last(model(1.0), 1)
    first.save_last(model(2.0), 2)  # the spare is now the round-1 file
    os.link(tmp_path / ".last.pbuf.spare", tmp_path / "resume_from.pbuf")
    second = ModelStore(tmp_path / "best.pbuf", tmp_path / "last.pbuf", "p")
    second.save_last(model(3.0), 3)
    second.save_last(model(4.0), 4)
    assert load_model(tmp_path / "resume_from.pbuf").tensors["w"][0] == 1
    assert load_model(tmp_path / "last.pbuf").tensors["w"][0] == 4


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    """A SIGKILL while writing leaves AtomicFile's temporary behind (no handler runs); the next
    store over the same files removes it, and only it."""
    from fedrun.storage.model_file import AtomicFile, stale_temporaries

    half = AtomicFile(tmp_path / "last.pbuf")
    half.write(b"half a model")
    half.out.close()  # the process died here: no commit, no cleanup
    leftover = half.tmp
    best_leftover = tmp_path / ".best.pbuf.k3_x9q0z"
    best_leftover.write_bytes(b"x")
    keep = [
        tmp_path / name
        for name in (".last.pbuf.notes", "last.pbuf.abcdefgh", ".other.pbuf.abcdefgh")
    ]
    for path in keep:
        path.write_bytes(b"not ours")
    assert stale_temporaries(tmp_path / "last.pbuf") == [leftover]

    ModelStore(tmp_path / "best.pbuf", tmp_path / "last.pbuf", "p")

    assert not leftover.exists() and not best_leftover.exists()
    assert all(path.exists() for path in keep)


def test_a_save_that_cannot_clear_its_way_is_a_state_error_and_keeps_the_last_model(tmp_path):
    # Prepare: a saved model, and a failing file system where the next save starts (a directory
    # with content stands where the spare's temporary name must be removed: unlink fails)
    store = ModelStore(tmp_path / "best.pbuf", tmp_path / "last.pbuf", "p")
    store.save_last(model(1.0), 1)
    blocker = tmp_path / ".last.pbuf.spare.next"
    blocker.mkdir()
    (blocker / "x").write_text("x")

    # Execute
    with pytest.raises(StateError) as caught:
        store.save_last(model(2.0), 2)

    # Assert: a clean state error naming last.pbuf; the round-1 model is untouched
    assert caught.value.code == "FX-STATE-005" and "last.pbuf" in caught.value.message
    assert load_model(tmp_path / "last.pbuf").round == 1
