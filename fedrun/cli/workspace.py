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


@workspace.command("export")
@click.option("-o", "--output", default=None, type=click.Path(path_type=Path), help="zip to write")
@handle_errors
def export_(output: Path | None) -> None:
    """Zip this workspace (plan, src, requirements, init model; never keys or data)."""
    from fedrun.workspace.archive import export_workspace

    archive = export_workspace(Path.cwd(), output)
    ok(f"exported {archive}; copy it to each collaborator node and run `fx workspace import`")


@workspace.command("import")
@click.option("--archive", required=True, type=click.Path(path_type=Path), help="workspace zip")
@click.option("--no-install", is_flag=True, help="do not pip-install the archive's requirements")
@handle_errors
def import_(archive: Path, no_install: bool) -> None:
    """Unpack a workspace archive here and install its requirements."""
    from fedrun.workspace.archive import import_workspace

    target = import_workspace(archive, install=not no_install)
    ok(f"imported workspace into {target}")
    console(stderr=False).print(
        f"  next: cd {target.name} && fx collaborator create -n NAME -d DATA && "
        "fx collaborator generate-cert-request -n NAME"
    )
