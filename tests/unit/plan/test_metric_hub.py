"""The aggregator's metric sinks: a new experiment moves an earlier one's files aside."""

from __future__ import annotations

import logging
from pathlib import Path

from fedrun.plan.components import metric_hub
from fedrun.plan.initialize import initialize_plan
from fedrun.plan.loader import Plan
from fedrun.workspace.create import create_workspace


def test_a_new_experiment_moves_the_earlier_one_s_files_aside_and_a_resume_keeps_them(
    tmp_path: Path, caplog
):
    # TensorBoard drew three experiments' curves over each other after two --reset-state
    ws = create_workspace(tmp_path / "ws", "no-op")
    initialize_plan(ws / "plan" / "plan.yaml")
    import yaml

    config = yaml.safe_load((ws / "plan" / "plan.yaml").read_text())
    config["aggregator"]["settings"]["write_logs"] = True
    (ws / "plan" / "plan.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    plan = Plan.load(ws / "plan" / "plan.yaml")
    assert plan.settings("aggregator")["write_logs"]
    board = ws / "logs" / "tensorboard" / "aggregator"
    board.mkdir(parents=True)
    (board / "events.out.tfevents.1").write_bytes(b"an earlier experiment")
    (ws / "logs" / "metrics.jsonl").write_text('{"round": 0}\n')

    with caplog.at_level(logging.INFO, logger="fedrun"):
        metric_hub(plan, resuming=True).close()
    assert (board / "events.out.tfevents.1").is_file()  # a resume appends to its own files

    with caplog.at_level(logging.INFO, logger="fedrun"):
        metric_hub(plan).close()

    (moved,) = (ws / "logs").glob("tensorboard.*")
    assert (moved / "aggregator" / "events.out.tfevents.1").read_bytes() == b"an earlier experiment"
    assert len(list((ws / "logs").glob("metrics.*.jsonl"))) == 1
    assert not (ws / "logs" / "tensorboard").exists() or not any(
        (ws / "logs" / "tensorboard").rglob("events*")
    )
    assert f"TensorBoard event files go to {ws / 'logs' / 'tensorboard'}" in caplog.text
