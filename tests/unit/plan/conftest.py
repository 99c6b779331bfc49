"""Fixtures shared by the plan tests: a real workspace made from the torch/digits template."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedrun.workspace.create import create_workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A fresh torch/digits workspace (its plan is fully expanded, no plan/defaults folder)."""
    return create_workspace(tmp_path / "ws", "torch/digits")


@pytest.fixture
def plan_path(workspace: Path) -> Path:
    return workspace / "plan" / "plan.yaml"


@pytest.fixture
def edit_plan(plan_path: Path) -> Callable[[Callable[[dict[str, Any]], None]], Path]:
    """Apply ``change(config)`` to the workspace's plan.yaml and write it back."""

    def edit(change: Callable[[dict[str, Any]], None]) -> Path:
        config = yaml.safe_load(plan_path.read_text())
        change(config)
        plan_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return plan_path

    return edit
