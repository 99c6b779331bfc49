"""`fx simulate --plan-set` of a network setting the simulation chooses itself is refused,
not silently replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrun.errors import WorkspaceError
from fedrun.simulate.local import LocalFederation


@pytest.mark.parametrize(
    "item",
    ["network.agg_port=70000", "network.settings.agg_addr=10.0.0.5", "network.use_tls=false"],
)
def test_a_setting_the_simulation_owns_is_refused(tmp_path: Path, item: str):
    with pytest.raises(WorkspaceError) as caught:
        LocalFederation(tmp_path / "ws", template="no-op", plan_set=[item])

    assert caught.value.code == "FX-SIM-004"
    assert "fx simulate sets network.settings." in caught.value.message


def test_other_network_settings_pass(tmp_path: Path):
    LocalFederation(tmp_path / "ws", template="no-op", plan_set=["network.chunk_bytes=2097152"])


def test_a_refused_setting_leaves_no_copy_or_folder_behind(tmp_path: Path, monkeypatch):
    # Prepare: an existing workspace to simulate, and a fresh folder for --template runs
    from click.testing import CliRunner

    from fedrun.cli.main import cli
    from fedrun.workspace.create import create_workspace

    create_workspace(tmp_path / "ws1", "no-op")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    # Execute: twice within a second (a copy left by the first made the second fail otherwise)
    runs = [
        CliRunner().invoke(cli, ["simulate", *where, "--plan-set", "network.agg_addr=127.0.0.1"])
        for where in (["--workspace", "ws1"], ["--workspace", "ws1"], ["--template", "no-op"])
    ]

    # Assert
    for result in runs:
        assert result.exit_code == 3 and "FX-SIM-004" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_relative_data_folder_is_handed_to_the_nodes_as_absolute(tmp_path: Path, monkeypatch):
    # the nodes run inside the workspace, where "../shared/data/mnist" would name another folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDRUN_MNIST_DIR", "../shared/data/mnist")
    monkeypatch.setenv("FEDRUN_HISTOLOGY_DIR", "/already/absolute")

    env = LocalFederation(tmp_path / "ws", template="no-op")._env(threads=1)

    assert env["FEDRUN_MNIST_DIR"] == str(tmp_path.parent / "shared" / "data" / "mnist")
    assert env["FEDRUN_HISTOLOGY_DIR"] == "/already/absolute"
