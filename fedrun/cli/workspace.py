"""`fx workspace`: create, export, import and certify workspaces."""

from __future__ import annotations

from pathlib import Path

import click

from fedrun.cli.common import console, handle_errors, ok
from fedrun.workspace.templates_catalog import DESCRIPTIONS


def _template_help() -> str:
    lines = "\n".join(f"  {name:17s} {text}" for name, text in DESCRIPTIONS.items())
    return f"\b\nTemplates:\n{lines}"


@click.group()
def workspace() -> None:
    """Create, export, import and certify workspaces."""


@workspace.command(epilog=_template_help())
@click.option("--prefix", required=True, type=click.Path(path_type=Path), help="folder to create")
@click.option("--template", default="torch/digits", show_default=True, help="workspace template")
@handle_errors
def create(prefix: Path, template: str) -> None:
    """Create a workspace from a template, with a fully expanded plan."""
    from fedrun.workspace.create import create_workspace

    target = create_workspace(prefix, template)
    ok(f"created workspace {target} from template {template!r}")
    console(stderr=False).print(
        f"  next: cd {target} && fx plan initialize   (then see README: certificates, start)"
    )


@workspace.command()
@handle_errors
def certify() -> None:
    """Create the federation's certificate authority under cert/ (run once, on the CA node)."""
    from fedrun.pki import create_certificate_authority

    ca = create_certificate_authority(Path("cert"))
    ok(f"certificate authority created; trust anchor {ca.chain}")
