"""`fx plan`: initialize, validate, show and freeze FL plans."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from fedrun.cli.common import (
    OpenFLAwareGroup,
    console,
    handle_errors,
    ok,
    plan_config_option,
    plan_options,
)


@click.group(cls=OpenFLAwareGroup)
def plan() -> None:
    """Initialize, validate, show and freeze FL plans."""


@plan.command()
@plan_options
@click.option(
    "-a",
    "--aggregator_address",
    "--aggregator-address",
    "agg_addr",
    default=None,
    help="aggregator host name written into the plan (default: $FQDN or this host's FQDN)",
)
@click.option(
    "-i",
    "--init_model_path",
    "--init-model-path",
    "init_model",
    default=None,
    type=click.Path(path_type=Path),
    help="start from this model (.pbuf or native file)",
)
@click.option(
    "-f",
    "--input_shape",
    "--input-shape",
    "input_shape",
    default=None,
    help="accepted for OpenFL scripts and ignored: the task runner knows its input shape",
)
@handle_errors
def initialize(
    plan_config: str,
    cols_config: str | None,
    data_config: str | None,
    agg_addr: str | None,
    init_model: Path | None,
    input_shape: str | None,
) -> None:
    """Write save/init.pbuf (no collaborator data needed) and the aggregator address."""
    from fedrun.plan.initialize import initialize_plan

    if input_shape is not None:
        console().print(
            f"[yellow]note:[/] --input_shape {input_shape} is ignored (as in OpenFL 1.9): "
            "the model is built by the task runner, which knows its input shape"
        )

    ran_before = _experiment_in_save(plan_config, cols_config, data_config)
    loaded, target = initialize_plan(
        plan_config, cols_config, data_config, agg_addr=agg_addr, init_model=init_model
    )
    ok(f"initial model written to {target}")
    if ran_before is not None:
        console().print(
            f"[yellow]note:[/] the experiment already in {ran_before.parent} ({ran_before.name}) "
            f"started from the {target.name} this replaced, as do workspace archives exported "
            "before: export the workspace again before you send it"
        )
    console(stderr=False).print(
        f"  aggregator address {loaded.agg_addr}:{loaded.agg_port}, plan hash {loaded.hash[:16]}"
    )


def _experiment_in_save(
    plan_config: str, cols_config: str | None, data_config: str | None
) -> Path | None:
    """The model an experiment of this workspace saved (last.pbuf), if any, while its initial
    model is still there: `fx plan initialize` is about to replace what it started from."""
    from fedrun.errors import FedrunError
    from fedrun.plan.loader import Plan

    try:
        settings = (plan := Plan.load(plan_config, cols_config, data_config)).settings("aggregator")
        init = plan.resolve_path(settings["init_state_path"])
        last = plan.resolve_path(settings["last_state_path"])
    except (FedrunError, KeyError, OSError):
        return None  # initialize says what is wrong with the plan
    return last if init.is_file() and last.is_file() else None


@plan.command()
@plan_options
@handle_errors
def validate(plan_config: str, cols_config: str | None, data_config: str | None) -> None:
    """Check a plan (sections, keys, types, templates, tasks) without running anything."""
    from rich.markup import escape

    from fedrun.plan.components import check_aggregator_parts
    from fedrun.plan.loader import Plan
    from fedrun.transport.network import Network

    # no ML framework is imported here (the aggregator's machine may have none): the tasks'
    # kwargs are checked against the task runner's methods when a collaborator starts
    loaded = Plan.load(plan_config, cols_config, data_config)
    check_aggregator_parts(loaded)
    ok(
        f"{loaded.path} is valid (hash {loaded.hash[:16]}, {len(loaded.cols)} authorized collaborators)"
    )
    out = console(stderr=False)
    unprotected = Network.from_plan(loaded).unprotected
    if unprotected:
        out.print(f"  [yellow]warning:[/] {escape(unprotected)}", soft_wrap=True)
    for note in loaded.ignored_settings():
        out.print(f"  note: {escape(note)}", soft_wrap=True)
    for name, spec in loaded.tasks.items():
        out.print(
            f"  task {escape(name)}: {escape(spec.kind)} (function {escape(spec.function)})",
            soft_wrap=True,
        )


@plan.command()
@plan_options
@handle_errors
def show(plan_config: str, cols_config: str | None, data_config: str | None) -> None:
    """Print the merged plan and its hash."""
    import yaml

    from fedrun.plan.loader import Plan

    loaded = Plan.load(plan_config, cols_config, data_config)
    click.echo(yaml.safe_dump(loaded.config, sort_keys=False), nl=False)
    click.echo(f"# plan hash: {loaded.hash}")
    click.echo(f"# federation id: {loaded.federation_id}")


@plan.command()
@plan_config_option
@handle_errors
def freeze(plan_config: str) -> None:
    """Write a read-only plan/plan_<hash>.yaml copy of the merged plan for auditing."""
    from fedrun.plan.loader import Plan
    from fedrun.workspace.create import dump_plan

    loaded = Plan.load(plan_config)
    target = loaded.path.parent / f"plan_{loaded.hash[:8]}.yaml"
    if not target.exists():
        dump_plan(loaded.config, target, f"# frozen plan, hash {loaded.hash}")
        os.chmod(target, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    ok(f"frozen plan: {target}")
