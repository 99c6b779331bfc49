"""fx workspace export: what goes into the archive, and what stays untouched in the workspace."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from fedrun.errors import WorkspaceError
from fedrun.plan.initialize import initialize_plan
from fedrun.workspace import archive as archive_module
from fedrun.workspace.archive import export_workspace, import_workspace
from fedrun.workspace.create import create_workspace

USER_REQUIREMENTS = "# what our site needs\nsetuptools\ntorch==2.7.0\ntorchvision==0.22.0\n"


def initialized_workspace(tmp_path: Path) -> Path:
    """A no-op workspace with its initial model, as `fx workspace export` needs it."""
    ws = create_workspace(tmp_path / "ws", "no-op")
    initialize_plan(ws / "plan" / "plan.yaml")
    return ws


def empty_folder(path: Path) -> Path:
    """The node's folder an archive is imported into."""
    path.mkdir()
    return path


def test_export_ships_the_workspace_s_own_requirements_as_they_are(tmp_path: Path):
    # Prepare: a workspace whose requirements.txt the user wrote by hand (an OpenFL one, say)
    ws = initialized_workspace(tmp_path)
    (ws / "requirements.txt").write_text(USER_REQUIREMENTS)

    # Execute
    archive = export_workspace(ws)

    # Assert: the archive holds the user's file byte for byte (as OpenFL 1.9 ships it)
    with zipfile.ZipFile(archive) as zf:
        shipped = zf.read("requirements.txt").decode()
        names = set(zf.namelist())
    assert shipped == USER_REQUIREMENTS
    assert (ws / "requirements.txt").read_text() == USER_REQUIREMENTS
    assert {"plan/plan.yaml", "save/init.pbuf", ".workspace"} <= names


def test_a_workspace_without_requirements_gets_this_environment_pinned(tmp_path: Path):
    ws = initialized_workspace(tmp_path)
    (ws / "requirements.txt").unlink(missing_ok=True)

    with zipfile.ZipFile(export_workspace(ws)) as zf:
        pinned = zf.read("requirements.txt").decode()

    assert "numpy==" in pinned and "grpcio==" in pinned


def test_import_only_unpacks_unless_asked_and_never_moves_fedrun_s_packages(tmp_path: Path):
    # Prepare: an archive whose requirements pin another numpy than the one fedrun runs on
    from importlib import metadata

    ws = initialized_workspace(tmp_path)
    (ws / "requirements.txt").write_text("numpy==1.26.0\n")
    archive = export_workspace(ws)
    before = metadata.version("numpy")

    # Execute / Assert: unpacked, nothing installed
    plain = import_workspace(archive, tmp_path / "a")
    assert (plain / "requirements.txt").read_text() == "numpy==1.26.0\n"
    # with --install, pip is held to fedrun's numpy: refused, nothing changed
    with pytest.raises(WorkspaceError) as caught:
        import_workspace(archive, tmp_path / "b", install=True)
    assert caught.value.code == "FX-WS-024"
    assert "nothing was installed" in caught.value.fix
    assert metadata.version("numpy") == before


def test_a_damaged_archive_leaves_nothing_and_a_good_copy_then_imports(tmp_path: Path):
    # Prepare: an exported workspace, and a copy with one byte flipped inside a member
    ws = initialized_workspace(tmp_path)
    archive = export_workspace(ws)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("save/init.pbuf")
        data[info.header_offset + 30 + len(info.filename) + 10] ^= 0xFF
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    node = empty_folder(tmp_path / "node")

    # Execute / Assert: refused, nothing left in the node's folder; the good archive imports
    with pytest.raises(WorkspaceError) as caught:
        import_workspace(damaged, node / "ws", install=False)
    assert caught.value.code == "FX-WS-023"
    assert list(node.iterdir()) == []
    imported = import_workspace(archive, node / "ws", install=False)
    assert (imported / "save" / "init.pbuf").read_bytes() == (
        ws / "save" / "init.pbuf"
    ).read_bytes()


def test_an_archive_carrying_a_key_is_refused_and_leaves_nothing(tmp_path: Path):
    ws = initialized_workspace(tmp_path)
    archive = export_workspace(ws)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("cert/client/col_x.key", "-----BEGIN PRIVATE KEY-----\n")
    node = empty_folder(tmp_path / "node")

    with pytest.raises(WorkspaceError) as caught:
        import_workspace(archive, node / "ws", install=False)

    assert caught.value.code == "FX-WS-021" and "col_x.key" in caught.value.message
    assert list(node.iterdir()) == []


def test_an_archive_that_unpacks_to_more_than_the_disk_holds_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Prepare: a workspace archive, and a disk with 10 MB free (an import keeps 64 MiB free)
    ws = initialized_workspace(tmp_path)
    archive = export_workspace(ws)
    real_usage = archive_module.shutil.disk_usage

    def usage(path):
        total, used, _ = real_usage(path)
        return type(real_usage(path))(total, used, 10_000_000)

    monkeypatch.setattr(archive_module.shutil, "disk_usage", usage)
    node = empty_folder(tmp_path / "node")

    # Execute
    with pytest.raises(WorkspaceError) as caught:
        import_workspace(archive, node / "ws", install=False)

    # Assert: named with the sizes, nothing written
    assert caught.value.code == "FX-WS-025"
    assert re.search(r"unpacks to \d+\.\d MB and .*node has 10\.0 MB free", caught.value.message)
    assert list(node.iterdir()) == []


def test_a_zip_bomb_is_refused_before_writing_whatever_the_free_space(tmp_path: Path):
    # a 1.2 MB archive declaring 200 MB of zeros unpacked in full on a disk with room for it
    ws = initialized_workspace(tmp_path)
    archive = export_workspace(ws)
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/zeros.bin", bytes(200_000_000))
    node = empty_folder(tmp_path / "node")

    with pytest.raises(WorkspaceError) as caught:
        import_workspace(archive, node / "ws", install=False)

    assert caught.value.code == "FX-WS-025" and "zip bomb" in caught.value.message
    assert list(node.iterdir()) == []


def test_a_local_build_is_pinned_by_its_public_version(monkeypatch: pytest.MonkeyPatch):
    # Prepare: an environment holding a local torch build (not on any public index)
    class Dist:
        def __init__(self, name: str, version: str) -> None:
            self.name, self.version = name, version

    dists = [Dist("torch", "2.13.0+cpu"), Dist("numpy", "2.3.1"), Dist("pip", "25.0")]
    monkeypatch.setattr(archive_module.metadata, "distributions", lambda: dists)

    # Execute
    lines = archive_module.environment_requirements().splitlines()

    # Assert: any 2.13.0 build satisfies the pin; the comment keeps which build was exported
    assert lines == ["numpy==2.3.1", "torch==2.13.0  # exported from the local build 2.13.0+cpu"]


def test_an_export_the_disk_cannot_hold_leaves_no_partial_archive_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import errno
    import os

    from fedrun.errors import file_access_error

    ws = initialized_workspace(tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    with pytest.raises(OSError) as caught:
        export_workspace(ws)

    assert [p.name for p in ws.iterdir() if p.name.startswith("ws.zip")] == []
    error = file_access_error(caught.value)  # what fx prints
    assert error.message == f"cannot use {ws / 'ws.zip'}: No space left on device"
    assert "free space" in error.fix
