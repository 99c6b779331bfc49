"""Starting over never destroys a finished run's models: --reset-state (and every start without
persisted state) moves them to save/previous-<time>/ first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrun.errors import PlanError, StateError, WorkspaceError
from fedrun.plan.components import (
    build_aggregator,
    keep_previous_models,
    reset_state,
    state_store,
)
from fedrun.plan.initialize import initialize_plan
from fedrun.plan.loader import Plan
from fedrun.workspace.create import create_workspace


def _previous_run(ws: Path) -> dict[str, bytes]:
    files = {
        "save/best.pbuf": b"best model",
        "save/last.pbuf": b"last model",
        "save/best_native.pt": b"native best",
        "save/init.pbuf": b"initial model",  # stays: the new run starts from it
        "local_state/tensor.db": b"state",
        "local_state/tensor.db-wal": b"wal",
    }
    for rel, data in files.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data)
    return files


def _previous_folders(ws: Path) -> list[Path]:
    return sorted((ws / "save").glob("previous-*"))


def test_reset_state_moves_the_models_and_deletes_the_state(workspace: Path) -> None:
    _previous_run(workspace)

    reset_state(Plan.load(workspace / "plan" / "plan.yaml", workspace=workspace))

    [kept] = _previous_folders(workspace)
    assert sorted(p.name for p in kept.iterdir()) == ["best.pbuf", "best_native.pt", "last.pbuf"]
    assert (kept / "last.pbuf").read_bytes() == b"last model"
    assert (kept / "best_native.pt").read_bytes() == b"native best"
    assert (workspace / "save" / "init.pbuf").read_bytes() == b"initial model"
    assert not (workspace / "save" / "last.pbuf").exists()
    assert not (workspace / "local_state" / "tensor.db").exists()
    assert not (workspace / "local_state" / "tensor.db-wal").exists()


def test_nothing_to_keep_makes_no_folder_and_two_resets_make_two(workspace: Path) -> None:
    plan = Plan.load(workspace / "plan" / "plan.yaml", workspace=workspace)
    reset_state(plan)
    assert _previous_folders(workspace) == []
    for _ in range(2):  # within the same second: the second folder gets a suffix
        _previous_run(workspace)
        reset_state(plan)
    assert len(_previous_folders(workspace)) == 2


def test_without_persisted_state_every_start_keeps_the_last_runs_models(
    workspace: Path, edit_plan
) -> None:
    edit_plan(lambda c: c["aggregator"]["settings"].update(persist_checkpoint=False))
    plan = Plan.load(workspace / "plan" / "plan.yaml", workspace=workspace)
    _previous_run(workspace)

    state_store(plan, persist=False)  # an evaluation run writes no model: nothing moves
    assert _previous_folders(workspace) == []
    state_store(plan)  # a training run would overwrite them
    assert len(_previous_folders(workspace)) == 1
    assert not (workspace / "save" / "best.pbuf").exists()


def test_a_move_that_fails_is_a_state_error_and_the_model_stays(tmp_path, monkeypatch) -> None:
    save = tmp_path / "save"
    save.mkdir()
    (save / "last.pbuf").write_bytes(b"x")

    def refuse(self: Path, target: Path) -> Path:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(Path, "rename", refuse)  # e.g. a read-only or foreign-owned save/
    with pytest.raises(StateError) as err:
        keep_previous_models([save / "last.pbuf"])
    assert err.value.code == "FX-STATE-016" and "last.pbuf" in err.value.message
    assert "Permission denied" in err.value.message and str(save) in err.value.fix
    assert (save / "last.pbuf").read_bytes() == b"x"


def test_models_in_two_folders_are_each_kept_beside_themselves(tmp_path: Path) -> None:
    save, other = tmp_path / "save", tmp_path / "elsewhere"
    for folder in (save, other):
        folder.mkdir()
    (save / "last.pbuf").write_bytes(b"l")
    (other / "best.pbuf").write_bytes(b"b")
    (save / "last_native").mkdir()  # a native export may be a folder
    (save / "last_native" / "saved_model.pb").write_bytes(b"n")

    kept = keep_previous_models([other / "best.pbuf", save / "last.pbuf", save / "missing.pbuf"])

    assert [k.parent for k in kept] == [other, save]
    assert (kept[0] / "best.pbuf").read_bytes() == b"b"
    assert (kept[1] / "last.pbuf").read_bytes() == b"l"
    assert (kept[1] / "last_native" / "saved_model.pb").read_bytes() == b"n"


def test_a_start_that_finds_no_saved_state_keeps_the_models_it_finds(workspace: Path) -> None:
    # Prepare: a finished run's models, but local_state/ was lost (deleted, another disk...)
    plan_path = workspace / "plan" / "plan.yaml"
    initialize_plan(plan_path)
    (workspace / "plan" / "cols.yaml").write_text("collaborators: [one]\n")
    (workspace / "save" / "best.pbuf").write_bytes(b"best model")
    (workspace / "save" / "last.pbuf").write_bytes(b"last model")

    # Execute
    agg = build_aggregator(Plan.load(plan_path, workspace=workspace))
    agg.state_store.close()

    # Assert: moved aside before the new run could overwrite them; the initial model stays
    [kept] = _previous_folders(workspace)
    assert (kept / "best.pbuf").read_bytes() == b"best model"
    assert (kept / "last.pbuf").read_bytes() == b"last model"
    assert (workspace / "save" / "init.pbuf").is_file()


def test_a_resume_past_round_0_does_not_need_the_initial_model(tmp_path: Path) -> None:
    # Prepare: a no-op experiment of 3 rounds whose round 0 finished, then init.pbuf is lost
    ws = create_workspace(tmp_path / "ws", "no-op")
    plan_path = ws / "plan" / "plan.yaml"
    (ws / "plan" / "cols.yaml").write_text("collaborators: [one]\n")
    initialize_plan(plan_path)
    plan = Plan.load(plan_path, overrides=["aggregator.rounds_to_train=3"], workspace=ws)
    agg = build_aggregator(plan)
    for task in agg.get_tasks("one", wait=0).tasks:
        model = agg.global_model if task == "train" else {}
        upload = agg.open_result("one", 0, task, 1, {"m": 1.0}, len(model))
        for name, array in model.items():
            upload.add(name, np.array(array))
        upload.commit()
    assert agg.round_num == 1
    agg.state_store.close()
    (ws / "save" / "init.pbuf").unlink()

    # Execute / Assert: the resume starts from round 1's checkpoint; a new run needs the file
    resumed = build_aggregator(plan)
    assert resumed.round_num == 1
    resumed.state_store.close()
    with pytest.raises(WorkspaceError) as caught:
        build_aggregator(plan, reset=True)
    assert caught.value.code == "FX-WS-010"
    assert (ws / "local_state" / "tensor.db").exists()  # checked before the reset deleted it


@pytest.mark.parametrize("reset", [False, True])
def test_a_start_refused_for_want_of_collaborators_moves_and_deletes_nothing(
    workspace: Path, reset: bool
) -> None:
    files = _previous_run(workspace)
    (workspace / "plan" / "cols.yaml").write_text("collaborators: []\n")
    plan = Plan.load(workspace / "plan" / "plan.yaml", workspace=workspace)

    with pytest.raises(PlanError) as caught:
        build_aggregator(plan, reset=reset)

    assert caught.value.code == "FX-PLAN-021"
    assert f"{workspace / 'plan' / 'cols.yaml'} lists none" in caught.value.message
    assert _previous_folders(workspace) == []
    for rel, data in files.items():
        assert (workspace / rel).read_bytes() == data
