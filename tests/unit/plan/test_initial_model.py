"""A federation never starts from a model holding NaN or inf: every result trained from it would
be refused as diverged, round after round, and the error would blame the collaborators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrun.errors import WorkspaceError
from fedrun.plan.components import build_aggregator
from fedrun.plan.initialize import initialize_plan
from fedrun.plan.loader import Plan
from fedrun.storage.model_file import load_model, save_model
from fedrun.workspace.create import create_workspace


@pytest.fixture
def no_op(tmp_path: Path) -> Path:
    """An initialized no-op workspace with one collaborator."""
    ws = create_workspace(tmp_path / "ws", "no-op")
    (ws / "plan" / "cols.yaml").write_text("collaborators: [one]\n")
    initialize_plan(ws / "plan" / "plan.yaml")
    return ws


def _spoiled(model: Path, target: Path, value: float) -> str:
    """Write ``model`` to ``target`` with one element of its last tensor set to ``value``."""
    tensors = {k: np.array(v) for k, v in load_model(model).tensors.items()}
    name = sorted(tensors)[-1]
    tensors[name].reshape(-1)[-1] = value
    save_model(target, tensors, round_num=0, plan_hash="", kind="init")
    return name


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_the_aggregator_refuses_an_initial_model_of_nan_or_inf(no_op: Path, value: float) -> None:
    # Prepare: a finished earlier run's models, and an initial model spoiled by hand
    init = no_op / "save" / "init.pbuf"
    name = _spoiled(init, init, value)
    (no_op / "save" / "last.pbuf").write_bytes(b"last model")
    plan = Plan.load(no_op / "plan" / "plan.yaml", workspace=no_op)

    # Execute
    with pytest.raises(WorkspaceError) as caught:
        build_aggregator(plan)

    # Assert: named with its tensor and the fix, before the earlier run's models were moved
    assert caught.value.code == "FX-MODEL-004"
    assert str(init) in caught.value.message and name in caught.value.message
    assert "fx plan initialize" in caught.value.fix
    assert (no_op / "save" / "last.pbuf").read_bytes() == b"last model"
    assert not list((no_op / "save").glob("previous-*"))


def test_initialize_refuses_a_given_model_of_nan_and_keeps_the_initial_model(no_op: Path) -> None:
    # Prepare
    init = no_op / "save" / "init.pbuf"
    before = init.read_bytes()
    spoiled = no_op / "spoiled.pbuf"
    name = _spoiled(init, spoiled, np.nan)

    # Execute
    with pytest.raises(WorkspaceError) as caught:
        initialize_plan(no_op / "plan" / "plan.yaml", init_model=spoiled)

    # Assert
    assert caught.value.code == "FX-MODEL-004"
    assert str(spoiled) in caught.value.message and name in caught.value.message
    assert init.read_bytes() == before


def test_a_finite_initial_model_starts(no_op: Path) -> None:
    plan = Plan.load(no_op / "plan" / "plan.yaml", workspace=no_op)

    agg = build_aggregator(plan, reset=True)  # the finiteness check runs once per start

    assert agg.round_num == 0
    agg.state_store.close()
