"""`fx aggregator`: start the aggregator; make and sign its certificate."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fedrun.cli.common import (
    confirm,
    console,
    exit_now,
    handle_errors,
    key_type_option,
    not_confirmed,
    ok,
    plan_config_option,
    require_workspace,
    setup_logging,
    to_log_files,
)

if TYPE_CHECKING:
    from fedrun.plan.loader import Plan


@click.group()
def aggregator() -> None:
    """Run the aggregator; make and sign its certificate."""


@aggregator.command()
@plan_config_option
@click.option(
    "-c",
    "--authorized_cols",
    "--cols_config",
    "--cols-config",
    "cols_config",
    default=None,  # the plan's workspace's plan/cols.yaml; a named file must exist
    show_default="plan/cols.yaml",
    help="authorized collaborator list",
)
@click.option(
    "--task-group",
    "--task_group",
    "task_group",
    default=None,
    help="run only this assigner group (e.g. evaluation: one round, no model saved)",
)
@click.option(
    "--reset-state",
    is_flag=True,
    help="discard the saved progress (local_state/) and start the experiment over",
)
@click.pass_context
@handle_errors
def start(
    ctx: click.Context,
    plan_config: str,
    cols_config: str | None,
    task_group: str | None,
    reset_state: bool,
) -> None:
    """Start the aggregator and serve until the experiment ends."""
    from fedrun.plan.loader import Plan

    setup_logging(
        ctx.obj.get("log_level", "info") if ctx.obj else "info",
        # no plan here: the start fails at once, and leaves no logs/ folder behind
        Path("logs/aggregator.log") if Path(plan_config).is_file() else None,
    )
    from fedrun.nodes import run_aggregator

    loaded = Plan.load(plan_config, cols_config)
    try:
        agg = run_aggregator(loaded, task_group=task_group, reset_state=reset_state)
    except KeyboardInterrupt:
        # Ctrl-C while starting, or a second one while a round's end was saved: leave now,
        # without the teardown that would wait for that round's end (the next start ends it)
        hint = resume_hint(loaded, reset_state)
        to_log_files(logging.WARNING, f"interrupted (Ctrl-C): stopped at once; {hint}")
        console().print(f"[yellow]interrupted: stopped at once[/]; {hint}")
        exit_now(130)
        raise
    from fedrun.metrics.summary import round_table

    if agg.round_history:
        console(stderr=False).print(round_table(agg.round_history))
    if agg.finished_event.is_set():
        settings = loaded.settings("aggregator")
        models = [
            str(path)
            for key in ("last_state_path", "best_state_path")
            if (path := loaded.resolve_path(settings[key])).is_file()
        ]
        if models:
            ok(f"models: {' and '.join(models)}")
        exit_now(0)
    console().print(
        "[yellow]aggregator stopped before the experiment finished[/]; "
        + resume_hint(loaded, reset_state)
    )
    # the shell's convention, as for any command a signal ends: 130 after Ctrl-C, 143 SIGTERM
    exit_now(128 + int(agg.stopped_by_signal or signal.SIGTERM))


def resume_hint(plan: Plan, reset_state: bool) -> str:
    """How to go on with an experiment whose aggregator stopped before its end (started with
    ``--reset-state`` or not)."""
    if not plan.settings("aggregator").get("persist_checkpoint", True):
        return (
            "its progress was not saved (aggregator.settings.persist_checkpoint is false): "
            "the next start begins the experiment again"
        )
    if reset_state:
        return (
            "run the same command without --reset-state to resume it (with it, the rounds "
            "finished so far are discarded)"
        )
    return "run the same command again to resume it from its last round"


@aggregator.command("generate-cert-request")
@click.option(
    "--fqdn", default=None, help="aggregator host name (default: $FQDN or this host's FQDN)"
)
@click.option(
    "--force", is_flag=True, help="replace a key that already has a signed certificate here"
)
@key_type_option
@handle_errors
def generate_cert_request(fqdn: str | None, force: bool, key_type: str) -> None:
    """Make the aggregator's key and certificate request (cert/server/agg_<fqdn>.{key,csr})."""
    from fedrun.pki import (
        aggregator_paths,
        default_fqdn,
        generate_csr,
        refuse_to_replace_certified_key,
    )

    name = (default_fqdn() if fqdn is None else fqdn).lower()
    require_workspace("the aggregator's key")
    paths = aggregator_paths(Path("cert"), name)
    if not force:
        refuse_to_replace_certified_key(name, paths.key, paths.crt)
    digest = generate_csr(
        name, server=True, key_path=paths.key, csr_path=paths.csr, key_type=key_type
    )
    ok(f"certificate request {paths.csr} (key {paths.key})")
    console(stderr=False).print(f"  CSR hash (SHA-384): {digest}")


@aggregator.command()
@click.option(
    "-n", "--fqdn", default=None, help="aggregator host name (default: $FQDN or this host's FQDN)"
)
@click.option("-s", "--silent", is_flag=True, help="sign without asking to confirm the CSR hash")
@handle_errors
def certify(fqdn: str | None, silent: bool) -> None:
    """Sign the aggregator's certificate request with the workspace CA."""
    from fedrun.pki import (
        aggregator_paths,
        csr_hash,
        default_fqdn,
        load_certificate_authority,
        sign_csr,
    )

    require_workspace("the aggregator's certificate")
    name = (default_fqdn() if fqdn is None else fqdn).lower()
    cert_dir = Path("cert")
    ca = load_certificate_authority(cert_dir)
    paths = aggregator_paths(cert_dir, name)
    if not paths.csr.is_file():
        from fedrun.errors import CertificateError

        raise CertificateError(
            "FX-PKI-004",
            f"no certificate request {paths.csr}",
            f"run `fx aggregator generate-cert-request --fqdn {name}` first",
        )
    digest = csr_hash(paths.csr.read_bytes())
    console(stderr=False).print(f"CSR hash (SHA-384): {digest}")
    if not silent and not confirm("Do you want to sign this certificate?"):
        raise not_confirmed(paths.csr)
    sign_csr(ca, paths.csr, paths.crt, server=True)
    ok(f"aggregator certificate {paths.crt}")
