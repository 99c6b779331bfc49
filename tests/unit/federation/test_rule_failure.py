"""A round whose aggregation rule cannot aggregate its results stops the aggregator: a round
that changed nothing must not pass for a trained one (it used to be logged and skipped, and the
experiment 'finished' on the initial model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from result_uploads import INITIAL, make, send, trained, validate

from fedrun.aggregation import Krum
from fedrun.errors import PlanError
from fedrun.plan.components import build_aggregator
from fedrun.plan.loader import Plan


def test_a_rule_that_fails_at_the_round_s_end_stops_the_aggregator(tmp_path: Path) -> None:
    # Prepare: Krum tolerating no one needs 3 updates; two collaborators send theirs
    agg = make(tmp_path, rules={"train": Krum(num_byzantine=0)})
    for who in ("a", "b"):
        validate(agg, who)

    # Execute: the second result closes the round
    send(agg, "a", trained(1.0), 10, None)
    with pytest.raises(PlanError) as caught:
        send(agg, "b", trained(2.0), 10, None)

    # Assert: said with the rule, the task and the fix; the aggregator is stopped
    assert caught.value.code == "FX-ROUND-020"
    assert "Krum" in caught.value.message and "'train'" in caught.value.message
    assert "more than 2f + 2" in caught.value.message
    assert "--reset-state" in caught.value.fix
    assert agg.broken is caught.value
    assert agg.round_num == 0
    for name, array in INITIAL.items():
        assert agg.global_model[name].tobytes() == array.tobytes()


def test_a_rule_the_federation_cannot_meet_is_refused_before_the_start(tmp_path: Path) -> None:
    # Prepare: a digits workspace of two collaborators whose train task uses Krum
    from fedrun.workspace.create import create_workspace

    ws = create_workspace(tmp_path / "ws", "torch/digits")
    (ws / "plan" / "cols.yaml").write_text("collaborators: [one, two]\n")
    (ws / "save").mkdir(exist_ok=True)
    (ws / "save" / "last.pbuf").write_bytes(b"an earlier run's model")
    plan = Plan.load(
        ws / "plan" / "plan.yaml",
        overrides=["tasks.train.aggregation_type.template=Krum"],
        workspace=ws,
    )

    # Execute
    with pytest.raises(PlanError) as caught:
        build_aggregator(plan)

    # Assert: named with the task, before anything was moved
    assert caught.value.code == "FX-PLAN-037"
    assert "tasks.train.aggregation_type" in caught.value.message
    assert "has 2 collaborator(s)" in caught.value.message
    assert (ws / "save" / "last.pbuf").read_bytes() == b"an earlier run's model"
