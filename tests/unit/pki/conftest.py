"""Shared fixtures for the PKI tests: real CAs and certificates in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from fedrun.pki import (
    CertificateAuthority,
    ParticipantPaths,
    create_certificate_authority,
    generate_csr,
    sign_csr,
    signed_certificate_paths,
)

Issue = Callable[..., ParticipantPaths]


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    """The ``cert/`` directory of a CA-host workspace."""
    return tmp_path / "ca-host" / "cert"


@pytest.fixture
def ca(cert_dir: Path) -> CertificateAuthority:
    """A fresh federation CA (EC P-384)."""
    return create_certificate_authority(cert_dir)


@pytest.fixture
def other_ca(tmp_path: Path) -> CertificateAuthority:
    """A second, unrelated federation CA."""
    return create_certificate_authority(tmp_path / "other-federation" / "cert")


def _issue(
    authority: CertificateAuthority,
    name: str,
    *,
    server: bool = False,
    key_type: str = "ec",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> ParticipantPaths:
    paths = signed_certificate_paths(authority.cert_dir, name, server)
    generate_csr(name, server=server, key_path=paths.key, csr_path=paths.csr, key_type=key_type)
    sign_csr(
        authority,
        paths.csr,
        paths.crt,
        server=server,
        not_before=not_before,
        not_after=not_after,
    )
    return paths


@pytest.fixture
def issue(ca: CertificateAuthority) -> Issue:
    """Make a key and CSR for a participant and sign it with ``ca``."""

    def make(name: str, **kwargs: object) -> ParticipantPaths:
        return _issue(ca, name, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def issue_other(other_ca: CertificateAuthority) -> Issue:
    """Like ``issue`` but signed by ``other_ca``."""

    def make(name: str, **kwargs: object) -> ParticipantPaths:
        return _issue(other_ca, name, **kwargs)  # type: ignore[arg-type]

    return make
