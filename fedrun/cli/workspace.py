"""`fx workspace`: create, export, import, certify and dockerize workspaces."""

from __future__ import annotations

from pathlib import Path

import click

from fedrun.cli.common import console, handle_errors, key_type_option, ok, require_workspace
from fedrun.workspace.templates_catalog import DESCRIPTIONS


def _template_help() -> str:
    lines = "\n".join(f"  {name:17s} {text}" for name, text in DESCRIPTIONS.items())
    return f"\b\nTemplates:\n{lines}"


@click.group()
def workspace() -> None:
    """Create, export, import, certify and dockerize workspaces."""


@workspace.command(epilog=_template_help())
@click.option("--prefix", required=True, type=click.Path(), help="folder to create")
@click.option("--template", default="torch/digits", show_default=True, help="workspace template")
@handle_errors
def create(prefix: str, template: str) -> None:
    """Create a workspace from a template, with a fully expanded plan."""
    if not prefix.strip():
        raise click.BadParameter("is empty: give the folder to create", param_hint="--prefix")
    from fedrun.workspace.create import create_workspace

    target = create_workspace(prefix, template)
    ok(f"created workspace {target} from template {template!r}")
    console(stderr=False).print(
        f"  next: cd {target} && fx plan initialize   (then see README: certificates, start)"
    )


@workspace.command()
@key_type_option
@handle_errors
def certify(key_type: str) -> None:
    """Create the federation's certificate authority under cert/ (run once, on the CA node)."""
    from fedrun.pki import create_certificate_authority

    require_workspace("the certificate authority")
    ca = create_certificate_authority(Path("cert"), key_type=key_type)
    ok(f"certificate authority created; trust anchor {ca.chain}")


@workspace.command("export")
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(),  # kept as typed: a trailing "/" names a folder
    help="zip to write (a folder: <folder>/<workspace>.zip); default <workspace>/<workspace>.zip, as OpenFL",
)
@click.option("--force", is_flag=True, help="replace an existing file that is not an archive")
@handle_errors
def export_(output: str | None, force: bool) -> None:
    """Zip this workspace (plan, src, requirements, init model; never keys or data)."""
    from fedrun.workspace.archive import export_workspace

    archive = export_workspace(Path.cwd(), output, force=force)
    ok(f"exported {archive}; copy it to each collaborator node and run `fx workspace import`")


@workspace.command("import")
@click.option("--archive", required=True, type=click.Path(path_type=Path), help="workspace zip")
@click.option(
    "--install/--no-install",
    default=False,
    help="pip-install the archive's requirements.txt (never changing fedrun's own packages); "
    "default: unpack only, as OpenFL 1.7+ does",
)
@handle_errors
def import_(archive: Path, install: bool) -> None:
    """Unpack a workspace archive here (and, with --install, install its requirements)."""
    from fedrun.workspace.archive import import_workspace

    target = import_workspace(archive, install=install)
    ok(f"imported workspace into {target}")
    requirements = target / "requirements.txt"
    if not install and requirements.is_file() and requirements.read_text().strip():
        console(stderr=False).print(
            f"  its packages were not installed: {requirements} lists what its code needs "
            "(pip install what is missing, or use --install)"
        )
    console(stderr=False).print(
        f"  next: cd {target.name} && fx collaborator create -n NAME -d DATA && "
        "fx collaborator generate-cert-request -n NAME"
    )


@workspace.command()
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(path_type=Path),
    help="build context folder  [default: docker/ in the workspace]",
)
@click.option(
    "-t", "--tag", default=None, help="workspace image NAME[:TAG]  [default: the folder's name]"
)
@click.option(
    "--base-image",
    default=None,
    help="image Dockerfile.base starts from  [default: python:X.Y-slim-bookworm, X.Y this Python]",
)
@click.option("--save", is_flag=True, help="also `docker save` the image to <name>.tar")
@click.option(
    "--gramine", is_flag=True, help="add a Gramine manifest and stage: `gramine-sgx fx ...` in SGX"
)
@click.option(
    "--enclave-key",
    default=None,
    type=click.Path(path_type=Path),
    help="RSA-3072 enclave signing key for --gramine (a build secret, never copied)",
)
@click.option(
    "--wheel",
    default=None,
    type=click.Path(path_type=Path),
    help="fedrun wheel to install instead of building one from this fedrun",
)
@click.option("--no-build", is_flag=True, help="only write the build context, even if Docker runs")
@click.option(
    "--rebuild",
    is_flag=True,
    help="build the images from scratch, reusing no cached layer (docker build --no-cache)",
)
@click.option(
    "--force", is_flag=True, help="write into a non-empty --output (its other files are kept)"
)
@handle_errors
def dockerize(
    output: Path | None,
    tag: str | None,
    base_image: str | None,
    save: bool,
    gramine: bool,
    enclave_key: Path | None,
    wheel: Path | None,
    no_build: bool,
    rebuild: bool,
    force: bool,
) -> None:
    """Write a Docker build context for this workspace; build the image if Docker runs here.

    The image holds the exported workspace and fedrun, never keys, certificates or data
    (mount those at run time: see BUILD.md in the build context).
    """
    from fedrun.workspace.dockerize import build_images, docker_engine, dockerize_workspace

    context = dockerize_workspace(
        Path.cwd(),
        output,
        tag=tag,
        base_image=base_image,
        save=save,
        gramine=gramine,
        enclave_key=enclave_key,
        force=force,
        wheel=wheel,
        rebuild=rebuild,
    )
    ok(
        f"wrote the build context {context.folder} (image {context.tag}, "
        f"fedrun base image {context.base_tag})"
    )
    out = console(stderr=False)
    docker = None if no_build else docker_engine()
    if docker is None:
        reason = "not building (--no-build)" if no_build else "no Docker engine found"
        out.print(
            f"{reason}; build context left in {context.folder}; run:", soft_wrap=True, markup=False
        )
        for line in context.shell_lines():
            out.print(f"  {line}", soft_wrap=True, markup=False)
        out.print(
            f"  docker run examples: {context.folder / 'BUILD.md'}", soft_wrap=True, markup=False
        )
        return
    out.print(f"building with {docker} from {context.folder}", soft_wrap=True, markup=False)
    build_images(context, docker)
    ok(f"built {context.base_tag} and {context.tag}")
    if save:
        ok(f"saved {context.tag} to {context.tarball}")
