"""fx workspace export: what goes into the archive, and what stays untouched in the workspace."""

from __future__ import annotations

import zipfile
from pathlib import Path

from fedrun.plan.initialize import initialize_plan
from fedrun.workspace.archive import export_workspace
from fedrun.workspace.create import create_workspace

USER_REQUIREMENTS = "# what our site needs\nsetuptools\ntorch==2.7.0\ntorchvision==0.22.0\n"


def test_export_pins_the_environment_in_the_archive_and_keeps_the_users_file(tmp_path: Path):
    # Prepare: a workspace whose requirements.txt the user wrote by hand (an OpenFL one, say)
    ws = create_workspace(tmp_path / "ws", "no-op")
    initialize_plan(ws / "plan" / "plan.yaml")
    (ws / "requirements.txt").write_text(USER_REQUIREMENTS)

    # Execute
    archive = export_workspace(ws)

    # Assert: the user's file is byte for byte what it was; the archive pins this environment
    assert (ws / "requirements.txt").read_text() == USER_REQUIREMENTS
    with zipfile.ZipFile(archive) as zf:
        pinned = zf.read("requirements.txt").decode()
        names = set(zf.namelist())
    assert "numpy==" in pinned and "grpcio==" in pinned
    assert {"plan/plan.yaml", "save/init.pbuf", ".workspace"} <= names
