"""Create a workspace from a template: folders, code, and a fully expanded plan."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from fedrun.errors import WorkspaceError
from fedrun.plan.loader import Plan
from fedrun.workspace.templates_catalog import EXTENDS_FILE, template_layers

WORKSPACE_DIRS = ("cert", "data", "logs", "save", "local_state", "src", "plan", "plan/defaults")


def dump_plan(config: dict[str, Any], path: Path, header: str = "") -> None:
    """Write a merged plan as YAML (sections in their usual order)."""
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    path.write_text((header + "\n" if header else "") + text)


def create_workspace(prefix: str | Path, template: str) -> Path:
    """Copy ``template`` into ``prefix`` and write its expanded plan; returns the folder."""
    layers = template_layers(template)
    target = Path(prefix).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WorkspaceError(
            "FX-WS-002",
            f"{target} already exists and is not empty",
            "choose another --prefix, or remove that folder first",
        )
    try:
        for layer in layers:  # base template first, the variant's own files on top
            shutil.copytree(
                layer,
                target,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", EXTENDS_FILE),
                dirs_exist_ok=True,
            )
        for name in WORKSPACE_DIRS:
            (target / name).mkdir(exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(
            "FX-WS-003",
            f"cannot create the workspace at {target}: {exc.strerror}",
            "choose a writable --prefix",
        ) from exc
    plan_path = target / "plan" / "plan.yaml"
    plan = Plan.load(plan_path, workspace=target)
    dump_plan(
        plan.config,
        plan_path,
        f"# FL plan of a fedrun workspace made from template {template!r}; defaults are expanded.\n"
        "# Every participant must use this exact plan: its hash identifies the experiment.",
    )
    return target
