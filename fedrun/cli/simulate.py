"""`fx simulate`: a whole federation on this machine, with live progress and a summary."""

from __future__ import annotations

import time
from pathlib import Path

import click

from fedrun.cli.common import console, handle_errors


@click.command()
@click.option("--template", default=None, help="workspace template (default torch/digits, offline)")
@click.option(
    "--workspace",
    "workspace",
    default=None,
    type=click.Path(path_type=Path),
    help="simulate this existing workspace (in a copy: the workspace itself is left as it is)",
)
@click.option(
    "--prefix",
    default=None,
    type=click.Path(path_type=Path),
    help="where to create the workspace (default ./fedrun-workspaces/<template>-<time>; with "
    "--workspace, <workspace>-simulate-<time> beside it)",
)
@click.option(
    "-n",
    "--collaborators",
    default=2,
    show_default=True,
    type=click.IntRange(1, 512),
    help="collaborator processes",
)
@click.option(
    "-r",
    "--rounds",
    default=None,
    type=click.IntRange(1),
    help="rounds to train  [default: the plan's rounds_to_train]",
)
@click.option(
    "--plan-set",
    "plan_set",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a plan setting, e.g. aggregator.write_logs=true (repeatable)",
)
@click.option("--seed", default=None, type=int, help="seed for reproducible training")
@click.option("--no-tls", is_flag=True, help="run without TLS (explicitly insecure; for debugging)")
@click.option(
    "--timeout",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="give up after this many seconds",
)
@click.pass_context
@handle_errors
def simulate(
    ctx: click.Context,
    template: str | None,
    workspace: Path | None,
    prefix: Path | None,
    collaborators: int,
    rounds: int | None,
    plan_set: tuple[str, ...],
    seed: int | None,
    no_tls: bool,
    timeout: float | None,
) -> None:
    """Run a whole federation here: one aggregator and N collaborator processes over gRPC
    with mutual TLS on localhost, then print per-round metrics and where the models are."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedrun.metrics.summary import metrics_table
    from fedrun.simulate.local import LocalFederation, refuse_owned_settings

    con = console(stderr=False)
    if workspace is not None and template is not None:
        raise click.UsageError("--workspace uses an existing workspace; drop --template")
    refuse_owned_settings(plan_set)  # before a workspace is made or copied
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # a workspace this command makes is removed again if preparing it fails (a plan typo...)
    made_here = False
    if workspace is None:
        template = template or "torch/digits"
        from fedrun.workspace.templates_catalog import template_dir

        template_dir(template)  # an unknown name is refused before anything is said or made
        if prefix is None:
            prefix = Path("fedrun-workspaces") / f"{template.replace('/', '_')}-{stamp}"
        target, create_from = prefix, template
        made_here = not (prefix.exists() and any(prefix.iterdir()))
    else:
        from fedrun.simulate.local import copy_workspace

        # the simulation rewrites the plan (address, port, TLS, rounds), cols.yaml and
        # data.yaml and makes its own CA and models: never in the user's own workspace
        if prefix is None:
            resolved = workspace.resolve()
            prefix = resolved.parent / f"{resolved.name}-simulate-{stamp}"
        target, create_from = copy_workspace(workspace, prefix), None
        made_here = True
        con.print(f"simulating a copy of {workspace} ({workspace} itself is not changed)")
    if no_tls:
        con.print("[yellow]warning:[/] --no-tls: traffic and identities are NOT protected")
    fed = LocalFederation(
        target,
        template=create_from,
        collaborators=collaborators,
        rounds=rounds,
        plan_set=plan_set,
        tls=not no_tls,
        seed=seed,
        log_level=(ctx.obj or {}).get("log_level", "info"),
    )
    con.print(f"preparing workspace {fed.workspace} ...")
    try:
        plan = fed.prepare()
    except BaseException:
        if made_here:
            import shutil

            shutil.rmtree(fed.workspace, ignore_errors=True)
        raise
    from rich.markup import escape

    from fedrun.plan.components import task_kwargs_warnings

    runner_class = plan.import_template(plan.template("task_runner"), "task_runner.template")
    for warning in task_kwargs_warnings(plan, runner_class):  # else only in the nodes' logs
        con.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    total = plan.rounds_to_train
    final_validation = bool(plan.settings("aggregator").get("final_validation", True))
    con.print(
        f"starting 1 aggregator + {collaborators} collaborators on {plan.agg_addr}:{plan.agg_port} "
        f"({'mutual TLS' if not no_tls else 'no TLS'}), {total} rounds"
    )
    started = time.monotonic()
    with (
        fed.stopping_on_signals(),
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            console=con,
            transient=False,
        ) as progress,
    ):
        fed.start()
        # the final model's validation is a step of its own: N rounds show as N + 1 steps
        label = "rounds + final validation" if final_validation else "rounds"
        bar = progress.add_task(label, total=total + (1 if final_validation else 0), last="")

        rounds_done: set[int] = set()
        shown = [-1, ""]  # the newest round with a global validation, and its figure

        def on_progress(new_records: list) -> None:
            for r in new_records:
                if r.origin != "aggregator":
                    continue
                rounds_done.add(r.round)
                if r.task == "aggregated_model_validation" and r.round > shown[0]:
                    shown[:] = [r.round, f"{r.metric} {r.value:.4f}"]
            newest = max(rounds_done, default=-1)
            last = str(shown[1]) if shown[0] == newest else ""
            progress.update(bar, completed=len(rounds_done), last=last)

        fed.wait(on_progress, timeout)
    elapsed = time.monotonic() - started
    if fed.late:
        con.print(
            f"[yellow]warning:[/] {', '.join(fed.late)} never joined before the experiment ended"
        )
    from fedrun.metrics.records import read_metrics

    records = list(read_metrics(fed.workspace / "logs" / "metrics.jsonl"))
    con.print(metrics_table(records, total))
    ws = fed.workspace
    con.print(f"[green]✔[/] federation finished in {elapsed:.1f} s")
    best = ws / "save" / "best.pbuf"
    kept = f", {best} (best)" if best.is_file() else " (no best model: see the aggregator's log)"
    if not best.is_file():
        # the aggregator's reason (best_model_metric not reported...) belongs on this screen
        log_file = ws / "logs" / "aggregator.log"
        lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
        for line in (line for line in lines if "best_model_metric" in line):
            con.print(f"[yellow]warning:[/] {line.split(': ', 1)[-1]}", soft_wrap=True)
    con.print(f"  models:  {ws / 'save' / 'last.pbuf'} (final){kept}")
    con.print(f"  logs:    {ws / 'logs'} (metrics.jsonl, aggregator.log, collaborator_*.log)")
