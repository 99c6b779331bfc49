"""`fx workspace dockerize` through click's CliRunner, on a machine without a Docker engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import assert_clean_failure

import fedrun
from fedrun.cli.main import cli
from fedrun.plan.initialize import initialize_plan
from fedrun.workspace.create import create_workspace
from fedrun.workspace.dockerize import fedrun_wheel

VERSION = fedrun.__version__


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fedrun_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialized no-op workspace, the current directory, with no `docker` on PATH."""
    ws = create_workspace(tmp_path / "ws", "no-op")
    initialize_plan(ws / "plan" / "plan.yaml", agg_addr="localhost")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.chdir(ws)
    return ws


def test_without_docker_it_leaves_the_context_and_prints_the_exact_commands(runner, workspace):
    # Execute: no --wheel, so the wheel is built from this fedrun's source tree
    result = runner.invoke(cli, ["workspace", "dockerize", "--save", "-t", "example_workspace"])

    # Assert
    assert result.exit_code == 0, result.output
    context = workspace / "docker"
    lines = result.output.splitlines()
    start = lines.index(f"no Docker engine found; build context left in {context}; run:")
    assert lines[start + 1 : start + 5] == [
        f"  cd {context}",
        f"  docker build -f Dockerfile.base -t fedrun:{VERSION} .",
        "  docker build -t example_workspace .",
        "  docker save -o example_workspace.tar example_workspace",
    ]
    assert f"docker run examples: {context / 'BUILD.md'}" in result.output
    for name in ("Dockerfile.base", "Dockerfile", ".dockerignore", "BUILD.md", "workspace.zip"):
        assert (context / name).is_file(), name
    assert (context / "wheels" / f"fedrun-{VERSION}-py3-none-any.whl").is_file()
    assert not (context / "example_workspace.tar").exists()  # nothing was built or saved


def test_no_build_only_writes_the_context(runner, workspace, wheel, tmp_path):
    # Execute
    result = runner.invoke(
        cli,
        ["workspace", "dockerize", "--no-build", "--wheel", str(wheel), "-o", str(tmp_path / "c")],
    )

    # Assert
    assert result.exit_code == 0, result.output
    assert f"not building (--no-build); build context left in {tmp_path / 'c'}; run:" in (
        result.output
    )
    assert "  docker build -t ws ." in result.output.splitlines()
    assert "docker save" not in result.output


def test_rebuild_is_openfl_s_no_cache_build(runner, workspace, wheel, tmp_path):
    args = ["workspace", "dockerize", "--rebuild", "--no-build", "--wheel", str(wheel)]
    result = runner.invoke(cli, [*args, "-o", str(tmp_path / "c")])

    assert result.exit_code == 0, result.output
    assert "  docker build --no-cache -t ws ." in result.output.splitlines()


def test_outside_a_workspace_it_names_the_fix(runner, tmp_path, monkeypatch):
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute
    result = runner.invoke(cli, ["workspace", "dockerize"])

    # Assert
    assert_clean_failure(result, 3, "FX-WS-030")
    assert "fx workspace create" in result.output
    assert not (tmp_path / "docker").exists()


def test_a_non_empty_context_folder_is_refused(runner, workspace, wheel):
    # Prepare
    (workspace / "docker").mkdir()
    (workspace / "docker" / "notes.txt").write_text("mine")

    # Execute
    result = runner.invoke(cli, ["workspace", "dockerize", "--wheel", str(wheel)])

    # Assert
    assert_clean_failure(result, 3, "FX-WS-031")
    assert "--force" in result.output
    assert [p.name for p in (workspace / "docker").iterdir()] == ["notes.txt"]


def test_gramine_without_a_key_is_refused(runner, workspace, wheel):
    # Execute
    result = runner.invoke(cli, ["workspace", "dockerize", "--gramine", "--wheel", str(wheel)])

    # Assert
    assert_clean_failure(result, 3, "FX-WS-033")
    assert "--enclave-key" in result.output
    assert not (workspace / "docker").exists()


def test_an_invalid_tag_is_refused(runner, workspace):
    # Execute
    result = runner.invoke(cli, ["workspace", "dockerize", "--tag", "Not Valid"])

    # Assert
    assert_clean_failure(result, 3, "FX-WS-032")
    assert not (workspace / "docker").exists()


def test_help_lists_the_options(runner):
    # Execute
    result = runner.invoke(cli, ["workspace", "dockerize", "--help"])

    # Assert
    assert result.exit_code == 0
    for option in ("--base-image", "--save", "--gramine", "--enclave-key", "--tag", "--output"):
        assert option in result.output
