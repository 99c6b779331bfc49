"""openfl.utilities.validate_file_hash as fedrun serves it to OpenFL workspace code."""

from __future__ import annotations

import hashlib

import pytest

from fedrun.errors import DataError
from fedrun.plan.openfl_names import serve_openfl_names


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_a_file_with_the_expected_hash_passes_and_another_is_refused(tmp_path, algorithm):
    serve_openfl_names()
    from openfl.utilities import validate_file_hash  # as OpenFL's histology loader imports it

    archive = tmp_path / "data.zip"
    archive.write_bytes(b"kather 2016" * 1000)
    good = hashlib.new(algorithm, archive.read_bytes()).hexdigest()

    validate_file_hash(archive, good, chunk_size=100)
    archive.write_bytes(b"truncated")
    with pytest.raises(DataError) as caught:
        validate_file_hash(archive, good.upper())

    assert caught.value.code == "FX-DATA-037"
    assert f"does not have the {algorithm.upper()} its workspace code expects" in str(caught.value)
    assert "download it again" in caught.value.fix


def test_a_hash_of_no_known_length_is_said(tmp_path):
    from fedrun.data.file_hash import validate_file_hash

    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(DataError, match="not a SHA-256, SHA-384 or SHA-512 digest"):
        validate_file_hash(tmp_path / "f", "abc")
