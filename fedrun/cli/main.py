"""The `fx` command (also installed as `fedrun`).

Sub-command groups are imported only when used, so `fx --help` stays fast and no command that
trains nothing imports an ML framework.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
from typing import Any

import click

from fedrun import __version__

WORLD_WRITABLE = stat.S_IWOTH

GROUPS = {
    "workspace": (
        "fedrun.cli.workspace",
        "workspace",
        "create, export, import, certify and dockerize workspaces",
    ),
    "plan": ("fedrun.cli.plan", "plan", "initialize, validate, show and freeze FL plans"),
    "aggregator": ("fedrun.cli.aggregator", "aggregator", "run the aggregator; its certificate"),
    "collaborator": (
        "fedrun.cli.collaborator",
        "collaborator",
        "run a collaborator; its certificate",
    ),
    "model": ("fedrun.cli.model", "model", "export a saved model in its framework's format"),
    "simulate": ("fedrun.cli.simulate", "simulate", "run a whole federation on this machine"),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands live in modules imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = GROUPS.get(name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        return getattr(module, entry[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in GROUPS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-l",
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
    help="how much to log",
)
@click.option("--no-warnings", is_flag=True, help="hide Python warnings (as OpenFL's fx does)")
@click.version_option(__version__, "-v", "--version", prog_name="fedrun")
@click.pass_context
def cli(ctx: click.Context, log_level: str, no_warnings: bool) -> None:
    """fedrun: federated learning with an aggregator, collaborators and one FL plan.

    \b
    Start here:   fx simulate                  (a whole federation on this machine, offline)
    Bare metal:   fx workspace create --prefix DIR --template torch/mnist, then see the README.
    Completion:   _FX_COMPLETE=bash_source fx > ~/.fx-autocomplete.sh; source ~/.fx-autocomplete.sh
    """
    if no_warnings:
        import warnings

        warnings.simplefilter("ignore")
    # nothing fx writes is world-writable, whatever umask it was started with: a
    # world-writable cert/ or save/ would let any local user replace the federation's trust
    # anchor or its models (group permissions stay as the umask says)
    os.umask(os.umask(0) | WORLD_WRITABLE)
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level


def main(argv: Any = None) -> None:
    """Run `fx`. click reports Ctrl-C as "Aborted!" with exit 1; fedrun says "interrupted" and
    exits 130 (128 + SIGINT), as its commands do once running."""
    try:
        code = cli.main(args=argv, prog_name="fx", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            sys.exit(130)
        click.echo("Aborted!", err=True)  # stdin closed at a prompt
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code:  # ctx.exit(code): click returns it here
        sys.exit(code)


if __name__ == "__main__":
    main()
