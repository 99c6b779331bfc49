"""A collaborator's key and certificate are checked before gRPC gets them: an empty or damaged
file aborted gRPC's C core (exit 134), a garbage key read as "unreachable aggregator"."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrun import pki
from fedrun.errors import CertificateError
from fedrun.transport.tls import client_credentials


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cert"
    ca = pki.create_certificate_authority(folder)
    paths = pki.collaborator_paths(folder, "one")
    pki.generate_csr("one", server=False, key_path=paths.key, csr_path=paths.csr)
    pki.sign_csr(ca, paths.csr, paths.crt, server=False)
    return folder


def test_good_files_give_credentials(cert_dir):
    assert client_credentials(cert_dir, "one") is not None


@pytest.mark.parametrize(
    ("which", "content", "code"),
    [
        ("key", b"", "FX-PKI-005"),
        ("key", b"-----BEGIN PRIVATE KEY-----\ngarbage\n", "FX-PKI-005"),
        ("crt", b"", "FX-PKI"),
        ("crt", b"not a certificate", "FX-PKI"),
    ],
)
def test_an_empty_or_damaged_key_or_certificate_is_named(cert_dir, which, content, code):
    paths = pki.collaborator_paths(cert_dir, "one")
    (paths.key if which == "key" else paths.crt).write_bytes(content)

    with pytest.raises(CertificateError) as caught:
        client_credentials(cert_dir, "one")

    assert caught.value.code.startswith(code)
    assert str(paths.key if which == "key" else paths.crt) in caught.value.message


def test_a_key_made_after_signing_is_named(cert_dir, tmp_path):
    paths = pki.collaborator_paths(cert_dir, "one")
    pki.generate_csr(
        "one", server=False, key_path=tmp_path / "new.key", csr_path=tmp_path / "x.csr"
    )
    paths.key.write_bytes((tmp_path / "new.key").read_bytes())

    with pytest.raises(CertificateError) as caught:
        client_credentials(cert_dir, "one")

    assert caught.value.code == "FX-PKI-016"
