"""``fx plan initialize``: write the initial model and the aggregator address."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedrun.errors import CertificateError, PlanError, WorkspaceError
from fedrun.pki.names import default_fqdn, validate_fqdn
from fedrun.plan.components import build_task_runner, require_finite_model
from fedrun.plan.loader import Plan, load_yaml
from fedrun.storage.model_file import load_model, save_model


def initialize_plan(
    plan_path: str | os.PathLike[str] = "plan/plan.yaml",
    cols_path: str | os.PathLike[str] | None = None,
    data_path: str | os.PathLike[str] | None = None,
    *,
    agg_addr: str | None = None,
    init_model: str | os.PathLike[str] | None = None,
) -> tuple[Plan, Path]:
    """Build the task runner (no data needed), save its weights, record the aggregator address.

    Returns the reloaded plan and the path of the initial model.
    """
    if agg_addr is not None:
        try:
            validate_fqdn(agg_addr)
        except CertificateError:
            raise PlanError(
                "FX-PLAN-029",
                f"aggregator address {agg_addr!r} is neither a host name nor an IP address",
                "pass the name collaborators will reach the aggregator by with -a, e.g. "
                "agg.example.org, localhost or 10.0.0.5 (its certificate must carry the same name)",
            ) from None
    plan = Plan.load(plan_path, cols_path, data_path)
    current = str(plan.network.get("agg_addr") or "auto")
    address = agg_addr or (default_fqdn() if current == "auto" else None)
    original: str | None = None
    if address and address != current:
        raw = load_yaml(plan.path, "plan file")
        raw.setdefault("network", {}).setdefault("settings", {})["agg_addr"] = address
        from fedrun.workspace.create import dump_plan

        original = plan.path.read_text()
        header = "".join(line + "\n" for line in original.splitlines() if line.startswith("#"))
        dump_plan(raw, plan.path, header.rstrip("\n"))
    try:
        if original is not None:
            plan = Plan.load(plan_path, cols_path, data_path)
        # what the aggregator would refuse is said now, not after the certificates are made
        from fedrun.plan.components import check_aggregator_parts

        check_aggregator_parts(plan)
        return plan, _write_initial_model(plan, init_model)
    except BaseException:
        if original is not None:  # no model made: the plan stays as it was, not half done
            plan.path.write_text(original)
        raise


def _write_initial_model(plan: Plan, init_model: str | os.PathLike[str] | None) -> Path:
    target = plan.resolve_path(plan.settings("aggregator")["init_state_path"])
    if init_model:
        source = Path(init_model)
        if not source.is_file():
            raise WorkspaceError(
                "FX-WS-011", f"initial model {source} does not exist", "check the -i path"
            )
        if source.suffix == ".pbuf":  # fedrun's or OpenFL's
            tensors = load_model(source).tensors
            _check_fits(build_task_runner(plan, None), tensors, source)
        else:
            runner = build_task_runner(plan, None)
            runner.load_native(source)
            tensors = runner.get_tensor_dict(with_opt_vars=False)
    else:
        runner = build_task_runner(plan, None)
        tensors = runner.get_tensor_dict(with_opt_vars=False)
    require_finite_model(
        tensors,
        Path(init_model) if init_model else f"that {plan.template('task_runner')} builds",
        "pass a model whose weights are finite"
        if init_model
        else "the task runner's model starts with NaN or inf: check how src/ initializes it",
    )
    save_model(target, tensors, round_num=0, plan_hash=plan.hash, kind="init")
    return target


def _check_fits(runner: Any, tensors: dict[str, Any], source: Path) -> None:
    """Refuse a model whose names or shapes are not the task runner's (FX-WS-013)."""
    try:
        runner.set_tensor_dict(tensors, with_opt_vars=False)
    except PlanError as exc:
        raise WorkspaceError(
            "FX-WS-013",
            f"the initial model {source} does not fit this workspace's task runner: {exc.message}",
            "pass a model saved from the same task runner code (src/): same tensor names and "
            "shapes",
        ) from None
