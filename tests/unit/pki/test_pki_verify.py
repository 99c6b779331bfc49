"""Trust decisions: verify_certificate against a federation chain."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from fedrun.errors import CertificateError
from fedrun.pki import (
    CertificateAuthority,
    ParticipantPaths,
    certificate_common_name,
    verify_certificate,
)

Issue = Callable[..., ParticipantPaths]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def test_certificate_chains(ca: CertificateAuthority, issue: Issue) -> None:
    paths = issue("site1")
    cert = verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes())
    assert certificate_common_name(cert) == "site1"
    verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes(), server=False)


def test_certificate_from_another_ca_fails(ca: CertificateAuthority, issue_other: Issue) -> None:
    paths = issue_other("site1")
    with pytest.raises(CertificateError) as info:
        verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes(), source=str(paths.crt))
    assert info.value.code == "FX-PKI-008"
    assert str(paths.crt) in info.value.message
    assert "CN=site1" in info.value.message


def test_expired_certificate_fails_with_its_expiry_date(
    ca: CertificateAuthority, issue: Issue
) -> None:
    expiry = _now() - timedelta(days=2)
    paths = issue("old", not_before=_now() - timedelta(days=30), not_after=expiry)
    with pytest.raises(CertificateError) as info:
        verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes())
    assert info.value.code == "FX-PKI-009"
    assert "expired on" in info.value.message
    assert expiry.strftime("%Y-%m-%d") in info.value.message
    assert "generate-cert-request" in info.value.fix


def test_not_yet_valid_certificate_fails(ca: CertificateAuthority, issue: Issue) -> None:
    start = _now() + timedelta(days=3)
    paths = issue("future", not_before=start, not_after=start + timedelta(days=30))
    with pytest.raises(CertificateError) as info:
        verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes())
    assert info.value.code == "FX-PKI-010"
    assert "not valid yet" in info.value.message
    assert start.strftime("%Y-%m-%d") in info.value.message
    assert "clock" in info.value.fix


def test_now_parameter_checks_ca_expiry(ca: CertificateAuthority, issue: Issue) -> None:
    paths = issue("site1")
    with pytest.raises(CertificateError) as info:
        verify_certificate(
            paths.crt.read_bytes(), ca.chain.read_bytes(), now=_now() + timedelta(days=400)
        )
    assert info.value.code == "FX-PKI-009"
    assert "root CA" in info.value.message
    assert "fx workspace certify" in info.value.fix


def test_wrong_role_fails(ca: CertificateAuthority, issue: Issue) -> None:
    paths = issue("site1")
    with pytest.raises(CertificateError) as info:
        verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes(), server=True)
    assert info.value.code == "FX-PKI-018"
    # the signing CA itself is not a participant certificate
    with pytest.raises(CertificateError) as info:
        verify_certificate(ca.signing_cert.read_bytes(), ca.chain.read_bytes())
    assert info.value.code == "FX-PKI-008"


def test_garbage_inputs_fail_cleanly(ca: CertificateAuthority, issue: Issue) -> None:
    paths = issue("site1")
    with pytest.raises(CertificateError) as info:
        verify_certificate(b"not a certificate", ca.chain.read_bytes())
    assert info.value.code == "FX-PKI-005"
    with pytest.raises(CertificateError) as info:
        verify_certificate(paths.crt.read_bytes(), ca.root_cert.read_bytes())
    assert info.value.code == "FX-PKI-005"
    assert "root CA and a signing CA" in info.value.message


def test_chain_from_mixed_federations_fails(
    ca: CertificateAuthority, other_ca: CertificateAuthority, issue: Issue
) -> None:
    paths = issue("site1")
    mixed = ca.root_cert.read_bytes() + other_ca.signing_cert.read_bytes()
    with pytest.raises(CertificateError) as info:
        verify_certificate(paths.crt.read_bytes(), mixed)
    assert info.value.code == "FX-PKI-005"
