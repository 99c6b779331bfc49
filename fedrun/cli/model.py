"""`fx model save`: export a .pbuf model through the task runner's save_native."""

from __future__ import annotations

from pathlib import Path

import click

from fedrun.cli.common import console, handle_errors, ok, plan_options


@click.group()
def model() -> None:
    """Export saved models in their framework's native format."""


@model.command()
@click.option(
    "-i",
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="model file, e.g. save/best.pbuf",
)
@click.option(
    "-o",
    "--output",
    "output",
    default="output_model",
    show_default=True,
    type=click.Path(path_type=Path),
    help="where to write the native model",
)
@click.option("-f", "--force", is_flag=True, help="overwrite an existing output")
@click.option(
    "--input-shape",
    "--input_shape",
    "input_shape",
    default=None,
    help="accepted for OpenFL scripts and ignored: the task runner knows its input shape",
)
@plan_options
@handle_errors
def save(
    input_path: Path,
    output: Path,
    force: bool,
    input_shape: str | None,
    plan_config: str,
    cols_config: str | None,
    data_config: str | None,
) -> None:
    """Write the model in INPUT as a native model (torch state dict, .keras file)."""
    from fedrun.errors import WorkspaceError
    from fedrun.model import get_model, native_model_path, save_native

    if input_shape is not None:
        console().print(
            f"[yellow]note:[/] --input-shape {input_shape} is ignored: the model is built by "
            "the task runner, which knows its input shape"
        )
    runner = get_model(plan_config, cols_config, data_config, input_path)
    target = native_model_path(runner, output)  # into a folder: the model file inside it
    if target.exists() and not force:
        raise WorkspaceError(
            "FX-WS-012", f"{target} already exists", "pass --force to overwrite it"
        )
    written = save_native(runner, output)
    ok(f"native model written to {written}")
