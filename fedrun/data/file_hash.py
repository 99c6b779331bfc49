"""Checking a downloaded file against the hash its workspace code expects.

OpenFL's workspaces (its histology data loaders) call ``openfl.utilities.validate_file_hash``
on the archive they download; fedrun serves that name with :func:`validate_file_hash`.
"""

from __future__ import annotations

import hashlib
import os

from fedrun.errors import DataError

#: hex digest length -> algorithm: the expected hash names its own algorithm
_ALGORITHMS = {64: "sha256", 96: "sha384", 128: "sha512"}


def validate_file_hash(
    file_path: str | os.PathLike[str], expected_hash: str, chunk_size: int = 1 << 20
) -> None:
    """Raise ``DataError`` (FX-DATA-037) unless the file's digest equals ``expected_hash``
    (hex; SHA-256, SHA-384 or SHA-512, told apart by its length). Read in chunks: an archive
    of gigabytes is never held in memory."""
    expected = expected_hash.strip().lower()
    algorithm = _ALGORITHMS.get(len(expected))
    if algorithm is None:
        raise DataError(
            "FX-DATA-037",
            f"the expected hash of {file_path} has {len(expected)} hex digits: not a SHA-256, "
            "SHA-384 or SHA-512 digest",
            "check the hash in the workspace code",
        )
    digest = hashlib.new(algorithm)
    with open(file_path, "rb") as handle:
        while chunk := handle.read(max(1, int(chunk_size))):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise DataError(
            "FX-DATA-037",
            f"{file_path} does not have the {algorithm.upper()} its workspace code expects "
            f"({expected[:16]}..., found {digest.hexdigest()[:16]}...): it is corrupt, "
            "truncated or another file",
            f"delete {file_path} and let the data loader download it again, or put the right "
            "file there",
        )
