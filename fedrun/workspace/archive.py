"""Export a workspace as a zip for the collaborator nodes, and import it there.

The archive carries what every participant must agree on (plan, code, requirements, initial
model) and never keys, certificates, data, logs or saved results.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

from fedrun.errors import FedrunError, WorkspaceError
from fedrun.plan.loader import Plan
from fedrun.storage.model_file import open_model_view

#: never leave the node, whatever folder they are in
SECRET_SUFFIXES = (".key", ".crt", ".csr", ".pem", ".srl", ".p12", ".pfx")
SKIP_DIRS = ("__pycache__", ".git", ".ipynb_checkpoints")
EMPTY_DIRS = ("cert", "data", "logs", "save", "local_state")
#: packaging tools that every environment has in some version; pinning them only hurts
UNPINNED = {"pip", "setuptools", "wheel"}


def environment_requirements() -> str:
    """``name==version`` lines for the packages installed in this environment.

    A local build (``torch 2.13.0+cpu``) is pinned by its public version (``torch==2.13.0``):
    an exact local pin is on no public index and is satisfied only by that very build, so
    installing the archive on a node with another build of the same release would fail,
    while the public pin matches every build of it (PEP 440). A comment keeps the build.
    """
    pins: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.name
        if not name or name.lower() in UNPINNED:
            continue
        public, _, local = dist.version.partition("+")
        line = f"{name}=={public}"
        if local:
            line += f"  # exported from the local build {dist.version}"
        pins[f"{name}=={public}"] = line
    return "\n".join(sorted(pins.values(), key=str.lower)) + "\n"


def _include(path: Path) -> bool:
    if any(part in SKIP_DIRS for part in path.parts):
        return False
    return not path.name.endswith(SECRET_SUFFIXES)


def is_workspace_archive(path: Path) -> bool:
    """True for a zip holding a workspace's ``plan/plan.yaml`` (one made by export)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "plan/plan.yaml" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def export_target(ws: Path, output: str | Path | None, force: bool = False) -> Path:
    """Where the archive goes: ``output`` (a folder: ``<folder>/<workspace>.zip``) or
    ``<workspace>.zip`` in the workspace folder (where OpenFL writes it). Never among the files it packs (plan/, src/) or the
    models (save/); an existing file is replaced only when it is a workspace archive already, or
    with ``force``."""
    if output is not None and not str(output).strip():
        raise WorkspaceError("FX-WS-014", "the output path is empty", "pass -o ARCHIVE.zip")
    target = Path(output) if output is not None else ws / f"{ws.name}.zip"
    if target.is_dir() or str(output).endswith(("/", os.sep)):  # "out/" names a folder
        target = target / f"{ws.name}.zip"
    target = target.resolve()
    if any(target.is_relative_to(ws / folder) for folder in ("plan", "src", "save")):
        raise WorkspaceError(
            "FX-WS-014",
            f"{target} is inside the workspace's plan/, src/ or save/ folder",
            "write the archive elsewhere (the default is the workspace folder itself: "
            f"{ws / (ws.name + '.zip')})",
        )
    if not target.parent.is_dir():
        raise WorkspaceError(
            "FX-WS-014",
            f"the folder {target.parent} does not exist",
            "create it, or pass another -o path",
        )
    if target.exists() and not force and not is_workspace_archive(target):
        raise WorkspaceError(
            "FX-WS-014",
            f"{target} exists and is not a workspace archive",
            "pass another -o path, or --force to replace it",
        )
    return target


def export_workspace(
    workspace: str | Path = ".", output: str | Path | None = None, *, force: bool = False
) -> Path:
    """Write ``<workspace name>.zip`` in the workspace (or to ``output``); returns its path."""
    ws = Path(workspace).resolve()
    plan = Plan.load(ws / "plan" / "plan.yaml", workspace=ws)
    init = plan.resolve_path(plan.settings("aggregator")["init_state_path"])
    if not init.is_file():
        raise WorkspaceError(
            "FX-WS-010",
            f"the initial model {init} does not exist",
            "run `fx plan initialize` before exporting, so every node starts from the same model",
        )
    try:
        open_model_view(init)
    except FedrunError as exc:
        raise WorkspaceError(
            "FX-WS-010",
            f"the initial model {init} cannot be read ({exc.message}); every node would start "
            "from it",
            "run `fx plan initialize` again to write it anew, then export",
        ) from exc
    target = export_target(ws, output, force)
    tmp = target.with_suffix(".zip.part")
    try:
        _write_archive(tmp, ws, init)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # a half-written archive is of no use to anyone
        if exc.filename is None:  # a failed write names no file: it is the archive's
            exc.filename = str(target)
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


def _write_archive(tmp: Path, ws: Path, init: Path) -> None:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder in ("plan", "src"):
            for path in sorted((ws / folder).rglob("*")):
                rel = path.relative_to(ws)
                if path.is_file() and _include(rel):
                    zf.write(path, rel.as_posix())
        if (ws / ".workspace").is_file():
            zf.write(ws / ".workspace", ".workspace")
        # the workspace's own requirements.txt goes as it is (as OpenFL 1.9 ships it); a
        # workspace without one gets this environment's packages pinned
        own = ws / "requirements.txt"
        if own.is_file():
            zf.write(own, "requirements.txt")
        else:
            zf.writestr("requirements.txt", environment_requirements())
        zf.write(init, init.relative_to(ws).as_posix())
        for folder in EMPTY_DIRS:
            zf.writestr(f"{folder}/", b"")


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in zf.infolist():
        name = info.filename
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise WorkspaceError(
                "FX-WS-021",
                f"{archive} holds an unsafe path {name!r}",
                "only import workspace archives made by `fx workspace export`",
            )
        if name.endswith(SECRET_SUFFIXES):
            raise WorkspaceError(
                "FX-WS-021",
                f"{archive} holds a key or certificate ({name!r}); a workspace archive never does",
                "ask for an archive made by `fx workspace export` (keys and certificates stay on "
                "their node; each node gets its own through the certificate flow)",
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise WorkspaceError(
                "FX-WS-021",
                f"{archive} holds a symbolic link {name!r}",
                "only import workspace archives made by `fx workspace export`",
            )
        members.append(info)
    return members


#: free space an import leaves on the disk beyond what it unpacks
IMPORT_MARGIN_BYTES = 64 << 20
#: an archive unpacking to more than this and more than BOMB_RATIO times its size is refused
#: (text and code compress 3-10 times; only a made-up archive compresses a hundred times)
BOMB_MIN_BYTES = 100_000_000
BOMB_RATIO = 100


def _check_room(archive: Path, members: list[zipfile.ZipInfo], folder: Path) -> None:
    """Refuse an archive whose members unpack to more than the disk has free (a zip bomb, or a
    workspace with its data in it on a small disk) before anything is written: zipfile writes
    no more than each member declares, so the declared sizes bound what unpacking takes."""
    unpacked = sum(m.file_size for m in members)
    packed = archive.stat().st_size
    if unpacked > BOMB_MIN_BYTES and unpacked > BOMB_RATIO * packed:
        raise WorkspaceError(
            "FX-WS-025",
            f"{archive} ({packed / 1e6:.1f} MB) unpacks to {unpacked / 1e6:.1f} MB: "
            f"{unpacked / max(packed, 1):.0f} times its size, which no workspace is (a zip bomb?)",
            "ask for an archive made by `fx workspace export`: it holds the plan and code, not data",
        )
    free = shutil.disk_usage(folder).free
    if unpacked + IMPORT_MARGIN_BYTES > free:
        raise WorkspaceError(
            "FX-WS-025",
            f"{archive} unpacks to {unpacked / 1e6:.1f} MB and {folder} has "
            f"{free / 1e6:.1f} MB free",
            "free space there, or run the import in a folder on another disk; an archive "
            "made by `fx workspace export` holds the plan and code, not data, so one this "
            "large was made some other way",
        )


def import_workspace(
    archive: str | Path, destination: str | Path | None = None, *, install: bool = False
) -> Path:
    """Unpack a workspace archive into ``./<archive name>``; with ``install``, pip-install its
    requirements without changing any package fedrun itself runs on (see
    :func:`install_requirements`)."""
    source = Path(archive)
    if not source.is_file():
        raise WorkspaceError(
            "FX-WS-020", f"archive {source} does not exist", "check the --archive path"
        )
    target = Path(destination) if destination else Path.cwd() / source.name.split(".")[0]
    if target.exists() and any(target.iterdir()):
        raise WorkspaceError(
            "FX-WS-002",
            f"{target} already exists and is not empty",
            "remove it, or import from another folder",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # unpacked beside the target and renamed into place once whole: a damaged archive leaves
    # nothing behind, so importing a good copy afterwards just works
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.importing-", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(source) as zf:
                members = _safe_members(zf, source)
                if not any(m.filename == "plan/plan.yaml" for m in members):
                    raise WorkspaceError(
                        "FX-WS-022",
                        f"{source} is not a workspace archive (no plan/plan.yaml)",
                        "make the archive with `fx workspace export` on the aggregator node",
                    )
                _check_room(source, members, target.parent)
                zf.extractall(staging, members)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise WorkspaceError(
                "FX-WS-023",
                f"{source} is not a readable zip file: {exc}",
                "copy the archive again; it may be truncated",
            ) from exc
        for folder in EMPTY_DIRS:
            (staging / folder).mkdir(exist_ok=True)
        os.replace(staging, target)  # an empty target folder is replaced too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    requirements = target / "requirements.txt"
    if install and requirements.is_file() and requirements.read_text().strip():
        install_requirements(requirements, target)
    return target


def fedrun_constraints() -> str:
    """``name==version`` for fedrun and each package it runs on (its requirements, extras
    included, development tools not) that is installed here."""
    names = {"fedrun"}
    for requirement in metadata.requires("fedrun") or []:
        spec, _, marker = requirement.partition(";")
        if 'extra == "dev"' not in marker:
            names.add(re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0])
    lines = []
    for name in sorted(names, key=str.lower):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        lines.append(f"{name}=={version.partition('+')[0]}")
    return "\n".join(lines) + "\n"


def install_requirements(requirements: Path, workspace: Path) -> None:
    """pip-install a workspace's requirements, holding fedrun's own packages at their installed
    versions: an archive made elsewhere (an OpenFL workspace pins its own torch, numpy,
    protobuf...) would otherwise replace them and leave ``fx`` unable to start."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(fedrun_constraints())
    try:
        proc = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet",
                "-r", str(requirements), "-c", constraints.name,
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
    finally:
        os.unlink(constraints.name)
    if proc.returncode != 0:
        conflict = "ResolutionImpossible" in proc.stderr or "conflict" in proc.stderr.lower()
        raise WorkspaceError(
            "FX-WS-024",
            f"installing {requirements} failed"
            + (" (it asks for other versions of packages fedrun runs on)" if conflict else "")
            + f":\n{proc.stderr.strip()[-2000:]}",
            f"the workspace is unpacked in {workspace}, nothing was installed; install only what "
            "its code needs that is missing here (`fx plan initialize` names it, with how to "
            "install it), or use a separate virtual environment for it",
        )
