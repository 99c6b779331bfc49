"""fx simulate --workspace W runs in a copy of W: W's plan, lists, certificates, state and models
are never touched, and its data is linked, not copied."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrun.errors import WorkspaceError
from fedrun.simulate.local import copy_workspace
from fedrun.workspace.create import create_workspace


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_copy_holds_plan_and_code_links_data_and_starts_its_own_state(tmp_path: Path):
    # Prepare: a workspace with data, a CA, saved state and models of a real deployment
    ws = create_workspace(tmp_path / "ws", "no-op")
    (ws / "data" / "site1").mkdir(parents=True)
    (ws / "data" / "site1" / "big.bin").write_bytes(b"x" * 1000)
    (ws / "cert" / "cert_chain.crt").write_text("the federation's CA\n")
    (ws / "local_state" / "tensor.db").write_bytes(b"state")
    (ws / "save" / "last.pbuf").write_bytes(b"model")
    before = snapshot(ws)

    # Execute
    copy = copy_workspace(ws, tmp_path / "copy")
    (copy / "plan" / "plan.yaml").write_text("edited by the simulation\n")
    (copy / "plan" / "cols.yaml").write_text("collaborators: [collaborator1]\n")

    # Assert
    assert snapshot(ws) == before
    assert (copy / "src").is_dir() and not (copy / "src").is_symlink()
    assert (copy / "data").is_symlink() and (copy / "data" / "site1" / "big.bin").is_file()
    for fresh in ("cert", "local_state", "logs", "save"):
        assert (copy / fresh).is_dir() and not any((copy / fresh).iterdir()), fresh


def test_a_folder_that_is_no_workspace_or_a_used_target_is_refused(tmp_path: Path):
    with pytest.raises(WorkspaceError) as caught:
        copy_workspace(tmp_path, tmp_path / "copy")
    assert caught.value.code == "FX-WS-004"

    ws = create_workspace(tmp_path / "ws", "no-op")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(WorkspaceError) as caught:
        copy_workspace(ws, tmp_path / "used")
    assert caught.value.code == "FX-WS-002"
