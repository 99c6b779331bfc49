"""Reading and writing PKI files: atomic writes, private modes, clear errors when missing.

Private keys are written mode 0600 into directories made mode 0700, and the file is created
with that mode from the start (never briefly world-readable). Every write goes to a temporary
file in the same directory first and is then renamed, so a crash never leaves half a key or
half a certificate behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from fedrun.errors import CertificateError

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "PUBLIC_FILE_MODE",
    "ensure_private_dir",
    "read_file",
    "write_private_file",
    "write_public_file",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def ensure_private_dir(directory: Path) -> Path:
    """Create ``directory`` (and parents) and make it mode 0700.

    Parameters
    ----------
    directory:
        A directory that holds private keys.

    Returns
    -------
    Path
        ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(directory, PRIVATE_DIR_MODE)
    return directory


def write_private_file(path: Path, data: bytes) -> Path:
    """Write a private key atomically with mode 0600, its directory mode 0700.

    Parameters
    ----------
    path:
        Destination file.
    data:
        File contents.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    _atomic_write(path, data, PRIVATE_FILE_MODE)
    return path


def write_public_file(path: Path, data: bytes) -> Path:
    """Write a certificate, request or package atomically with mode 0644.

    Parameters
    ----------
    path:
        Destination file; missing parent directories are created.
    data:
        File contents.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data, PUBLIC_FILE_MODE)
    return path


def read_file(path: Path, what: str, fix: str) -> bytes:
    """Read a PKI file, turning "missing" and "unreadable" into user-facing errors.

    Parameters
    ----------
    path:
        File to read.
    what:
        What the file is, for the message (e.g. ``"signing CA certificate"``).
    fix:
        What the user should do when it is missing (usually which ``fx`` command makes it).

    Returns
    -------
    bytes
        The file's contents.

    Raises
    ------
    CertificateError
        ``FX-PKI-004`` when the file does not exist, ``FX-PKI-005`` when it cannot be read.
    """
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError("FX-PKI-004", f"{what} not found: {path}", fix) from None
    except OSError as exc:
        raise CertificateError(
            "FX-PKI-005",
            f"cannot read {what} {path}: {exc.strerror or exc}",
            f"check that {path} is a readable file",
        ) from None


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file 0600; set the wanted mode before any data is written.
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
