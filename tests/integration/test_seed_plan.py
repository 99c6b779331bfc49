"""The seed document's example plan.yaml, copied verbatim, runs to the end over mutual TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fxnodes import fx, fx_env

from fedrun.metrics.records import read_metrics
from fedrun.storage.model_file import load_model
from fedrun.workspace.create import create_workspace

# The example plan of the seed's "FL Plan Settings" section, as printed there (its odd
# "defaults :" and "assigner :" spacing included).
SEED_PLAN = """\
# Copyright (C) 2020-2024 Intel Corporation
# Licensed subject to the terms of the separately executed evaluation license agreement between Intel Corporation and you.
aggregator:
  settings:
    best_state_path: save/best.pbuf
    db_store_rounds: 2
    init_state_path: save/init.pbuf
    last_state_path: save/last.pbuf
    rounds_to_train: 2
    write_logs: false
  template: openfl.component.aggregator.Aggregator
  defaults : plan/defaults/aggregator.yaml
assigner :
  defaults : plan/defaults/assigner.yaml
collaborator:
  settings:
    db_store_rounds: 1
    use_delta_updates: false
    opt_treatment: RESET
  template: openfl.component.collaborator.Collaborator
compression_pipeline:
  settings: {}
  template: openfl.pipelines.NoCompressionPipeline
data_loader:
  settings:
    batch_size: 64
    collaborator_count: 2
  template: src.dataloader.PyTorchMNISTInMemory
network:
  defaults: plan/defaults/network.yaml
task_runner:
  settings: {}
  template: src.taskrunner.TemplateTaskRunner
tasks:
  aggregated_model_validation:
    function: validate_task
    kwargs:
      apply: global
      metrics:
      - acc
  locally_tuned_model_validation:
    function: validate_task
    kwargs:
      apply: local
      metrics:
      - acc
  settings: {}
  train:
    function: train_task
    kwargs:
      epochs: 1
      metrics:
      - loss
"""


def test_seed_plan_verbatim_on_real_mnist_over_mutual_tls(tmp_path: Path, mnist_dir: Path) -> None:
    ws = create_workspace(tmp_path / "ws", "torch/mnist")
    (ws / "plan" / "plan.yaml").write_text(SEED_PLAN)
    fx(ws, "plan", "validate")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedrun.cli.main",
            "simulate",
            "--workspace",
            str(ws),
            "--prefix",
            str(tmp_path / "run"),
            "--seed",
            "1",
        ],
        env={**fx_env(), "FEDRUN_MNIST_DIR": str(mnist_dir)},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "run"  # the simulation ran in a copy; the workspace kept its plan
    assert (ws / "plan" / "plan.yaml").read_text() == SEED_PLAN
    assert "mutual TLS" in (run / "logs" / "aggregator.log").read_text()
    records = list(read_metrics(run / "logs" / "metrics.jsonl"))
    final = [r.value for r in records if r.origin == "aggregator" and r.round == 2]
    assert final and final[0] >= 0.97, final  # README: 0.9733 with --seed 1
    assert load_model(run / "save" / "last.pbuf").round == 2
