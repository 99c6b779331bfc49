"""docs/taskrunner.md's example src/ runs as a real federation (fx simulate: an aggregator and two
collaborator processes over mutual TLS), and the regression keeps its lowest-loss model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from fxnodes import fx, fx_env

from fedrun.metrics.records import read_metrics
from fedrun.workspace.create import create_workspace

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "taskrunner.md"


def guide_sources() -> dict[str, str]:
    """The guide's python blocks that start with `# src/<file>`, by file name."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    out = {}
    for block in blocks:
        first = block.splitlines()[0]
        if first.startswith("# src/"):
            out[first.removeprefix("# src/")] = block
    return out


def test_the_guide_s_regression_trains_and_keeps_its_lowest_loss(tmp_path: Path) -> None:
    # Prepare: a workspace whose src/ and plan are the guide's
    sources = guide_sources()
    assert set(sources) == {"dataloader.py", "taskrunner.py"}
    ws = create_workspace(tmp_path / "line", "torch/digits")
    for name, text in sources.items():
        (ws / "src" / name).write_text(text)
    plan_path = ws / "plan" / "plan.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    plan["data_loader"] = {"template": "src.dataloader.LineShard", "settings": {}}
    plan["task_runner"] = {"template": "src.taskrunner.LineFit", "settings": {}}
    plan["tasks"]["train"]["kwargs"]["use_tqdm"] = True  # OpenFL's: taken silently
    plan["tasks"]["aggregated_model_validation"]["kwargs"]["batchsize"] = 8  # a typo
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    shown = fx(ws, "plan", "validate").stdout
    assert "task train: trains (function train_task)" in shown

    # Execute
    proc = subprocess.run(
        [sys.executable, "-m", "fedrun.cli.main", "simulate", "--workspace", str(ws)]
        + ["--prefix", str(tmp_path / "run"), "--rounds", "4", "--seed", "1"],
        env=fx_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )

    # Assert: trained to the line, and the best model is the lowest loss; the typo was shown
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kwargs.batchsize is not used by LineFit.validate_task" in proc.stdout
    assert "did you mean 'batch_size'?" in proc.stdout and "use_tqdm" not in proc.stdout
    run = tmp_path / "run"
    mse = {
        r.round: r.value
        for r in read_metrics(run / "logs" / "metrics.jsonl")
        if r.origin == "aggregator" and r.metric == "val_mse"
        and r.task == "aggregated_model_validation"
    }  # fmt: skip
    assert mse[4] < 0.05 < mse[0], mse
    log = (run / "logs" / "aggregator.log").read_text()
    assert "best model: the lowest aggregated_model_validation/val_mse" in log
    best = min(mse.values())
    assert f"val_mse = {best:.4f}" in log
