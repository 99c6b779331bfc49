"""Aggregation rules, compression, straggler policies and evaluation runs, with real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fxnodes import Nodes

from fedrun.metrics.records import read_metrics
from fedrun.simulate.local import LocalFederation
from fedrun.workspace.create import create_workspace

SLOW_RUNNER = '''
import os
import time

from src.taskrunner import DigitsCNN


class SlowDigitsCNN(DigitsCNN):
    """Sleeps in round 0 on the collaborator named by FEDRUN_TEST_SLOW (a straggler)."""

    def train_task(self, col_name, round_num, input_tensor_dict, **kwargs):
        if col_name == os.environ.get("FEDRUN_TEST_SLOW") and round_num == 0:
            time.sleep(float(os.environ["FEDRUN_TEST_SLOW_SECONDS"]))
        return super().train_task(col_name, round_num, input_tensor_dict, **kwargs)
'''


@pytest.mark.parametrize(
    ("label", "plan_set", "minimum"),
    [
        (
            "median",
            [
                "tasks.train.aggregation_type={template: openfl.interface.aggregation_functions.Median}"
            ],
            0.80,
        ),
        (
            "fedadam",
            [
                "tasks.train.aggregation_type={template: AdamAdaptiveAggregation, settings: {learning_rate: 0.05}}"
            ],
            0.70,
        ),
        (
            "stc",
            [
                "compression_pipeline.template=openfl.pipelines.STCPipeline",
                "compression_pipeline.settings={p_sparsity: 0.1}",
            ],
            0.50,
        ),
    ],
)
def test_rules_and_pipelines_learn_digits(
    tmp_path: Path, label: str, plan_set: list[str], minimum: float
) -> None:
    result = LocalFederation(
        tmp_path / label,
        template="torch/digits",
        collaborators=3,
        rounds=3,
        plan_set=plan_set,
        seed=1,
    ).run(timeout=300)
    accuracy = result.final_metrics["aggregated_model_validation/accuracy"]
    assert accuracy >= minimum, (label, accuracy)
    comm = {
        r.round: r.value
        for r in result.records
        if r.origin == "aggregator" and r.metric == "compression_ratio"
    }
    assert comm, "bytes and compression ratio are logged per round"
    if label == "stc":
        assert max(comm.values()) < 0.05
    else:
        assert min(comm.values()) == pytest.approx(1.0)


def _slow_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float) -> Path:
    ws = create_workspace(tmp_path / "ws", "torch/digits")
    (ws / "src" / "slow.py").write_text(SLOW_RUNNER)
    monkeypatch.setenv("FEDRUN_TEST_SLOW", "collaborator4")
    monkeypatch.setenv("FEDRUN_TEST_SLOW_SECONDS", str(seconds))
    return ws


def test_cutoff_policy_closes_the_round_without_the_straggler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _slow_workspace(tmp_path, monkeypatch, seconds=13)
    LocalFederation(
        ws,
        collaborators=4,
        rounds=2,
        plan_set=[
            "task_runner.template=src.slow.SlowDigitsCNN",
            "straggler_handling_policy.template=openfl.component.aggregator.straggler_handling.CutoffTimePolicy",
            "straggler_handling_policy.settings={straggler_cutoff_time: 10, minimum_reporting: 3}",
            "tasks.train.kwargs.epochs=1",
        ],
    ).run(timeout=300)
    log = (ws / "logs" / "aggregator.log").read_text()
    assert "round 0 closed without waiting for its stragglers: collaborator4" in log
    assert "result of 'collaborator4' for task 'train' of round 0 refused" in log
    records = list(read_metrics(ws / "logs" / "metrics.jsonl"))
    trained = {
        (r.round, r.origin) for r in records if r.task == "train" and r.origin != "aggregator"
    }
    assert (0, "collaborator4") not in trained
    assert {(0, f"collaborator{i}") for i in (1, 2, 3)} <= trained
    assert (1, "collaborator4") in trained, "the late collaborator joins the next round"


def test_percentage_policy_closes_at_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _slow_workspace(tmp_path, monkeypatch, seconds=8)
    LocalFederation(
        ws,
        collaborators=4,
        rounds=1,
        plan_set=[
            "task_runner.template=src.slow.SlowDigitsCNN",
            "straggler_handling_policy.template=PercentageBasedStragglerHandling",
            "straggler_handling_policy.settings={percent_collaborators_needed: 0.5, minimum_reporting: 2}",
            "tasks.train.kwargs.epochs=1",
        ],
    ).run(timeout=300)
    log = (ws / "logs" / "aggregator.log").read_text()
    line = next(
        x for x in log.splitlines() if "round 0 closed without waiting for its stragglers" in x
    )
    assert "collaborator4" in line
    records = list(read_metrics(ws / "logs" / "metrics.jsonl"))
    done = {
        r.origin for r in records if r.round == 0 and r.task == "locally_tuned_model_validation"
    }
    assert 2 <= len(done) <= 3 and "collaborator4" not in done


def test_evaluation_task_group_runs_one_round_and_saves_nothing(
    tmp_path: Path, nodes: Nodes
) -> None:
    fed = LocalFederation(tmp_path / "ws", template="torch/digits", collaborators=2, rounds=5)
    fed.prepare()
    ws = fed.workspace
    nodes.start("aggregator", ws, "aggregator", "start", "--task-group", "evaluation")
    for name in fed.names:
        nodes.start(name, ws, "collaborator", "start", "-n", name)
    for name in [*fed.names, "aggregator"]:
        assert nodes.wait(name) == 0, nodes.log(name)[-2000:]
    records = [json.loads(x) for x in (ws / "logs" / "metrics.jsonl").read_text().splitlines()]
    tasks = {(r["round"], r["task"]) for r in records if r["origin"] == "aggregator"}
    assert tasks == {(0, "aggregated_model_validation")}
    assert not (ws / "save" / "best.pbuf").exists() and not (ws / "save" / "last.pbuf").exists()


def test_a_long_task_is_not_mistaken_for_a_gone_collaborator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _slow_workspace(tmp_path, monkeypatch, seconds=7)
    monkeypatch.setenv("FEDRUN_TEST_SLOW", "collaborator2")
    LocalFederation(
        ws,
        collaborators=2,
        rounds=1,
        plan_set=[
            "task_runner.template=src.slow.SlowDigitsCNN",
            "aggregator.collaborator_timeout=3",
            "tasks.train.kwargs.epochs=1",
        ],
    ).run(timeout=300)
    log = (ws / "logs" / "aggregator.log").read_text()
    assert "round 0: collaborator2 finished its tasks" in log
    assert "is gone" not in log, "the heartbeat keeps a busy collaborator alive"
