"""Signing participant requests with the signing CA."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrun.errors import CertificateError
from fedrun.pki import (
    CertificateAuthority,
    ParticipantPaths,
    certificate_common_name,
    collaborator_paths,
    create_certificate_authority,
    generate_csr,
    load_private_key,
    public_keys_match,
    sign_csr,
    signed_certificate_paths,
    verify_certificate,
)

Issue = Callable[..., ParticipantPaths]


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_collaborator_certificate_profile(ca: CertificateAuthority, issue: Issue) -> None:
    paths = issue("site1")
    cert = _load(paths.crt)
    signing = _load(ca.signing_cert)
    assert certificate_common_name(cert) == "site1"
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site1")])
    assert cert.issuer == signing.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("site1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    signing_ski = signing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == signing_ski.digest
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    cert.verify_directly_issued_by(signing)
    assert public_keys_match(load_private_key(paths.key), cert)
    assert cert.not_valid_after_utc <= signing.not_valid_after_utc


def test_server_certificate_copies_localhost_sans(ca: CertificateAuthority, issue: Issue) -> None:
    paths = issue("localhost", server=True)
    cert = _load(paths.crt)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes(), server=True)


def test_lifetime_is_capped_at_the_ca_expiry(cert_dir: Path) -> None:
    ca = create_certificate_authority(cert_dir, days=30)
    paths = collaborator_paths(cert_dir, "site1")
    generate_csr("site1", server=False, key_path=paths.key, csr_path=paths.csr)
    cert = sign_csr(ca, paths.csr, paths.crt, server=False, days=3650)
    assert cert.not_valid_after_utc <= _load(ca.signing_cert).not_valid_after_utc


def test_role_mismatch_is_refused(ca: CertificateAuthority) -> None:
    paths = collaborator_paths(ca.cert_dir, "site1")
    generate_csr("site1", server=False, key_path=paths.key, csr_path=paths.csr)
    with pytest.raises(CertificateError) as info:
        sign_csr(ca, paths.csr, ca.cert_dir / "out.crt", server=True)
    assert info.value.code == "FX-PKI-007"
    assert "serverAuth" in info.value.message
    agg = signed_certificate_paths(ca.cert_dir, "agg.example.org", server=True)
    generate_csr("agg.example.org", server=True, key_path=agg.key, csr_path=agg.csr)
    with pytest.raises(CertificateError) as info:
        sign_csr(ca, agg.csr, ca.cert_dir / "out.crt", server=False)
    assert info.value.code == "FX-PKI-007"
    assert "clientAuth" in info.value.message and str(agg.csr) in info.value.message
    assert not (ca.cert_dir / "out.crt").exists()


def test_altered_request_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    # A CSR whose content no longer matches its signature: re-sign the TBS of one key's
    # request with another key by swapping in a different subject.
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=True)
        .sign(key, hashes.SHA384())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    index = der.find(b"alice")
    der[index : index + 5] = b"malic"
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    csr_path = tmp_path / "col_malic.csr"
    csr_path.write_bytes(tampered)
    with pytest.raises(CertificateError) as info:
        sign_csr(ca, csr_path, tmp_path / "out.crt", server=False)
    assert info.value.code == "FX-PKI-006"
    assert not (tmp_path / "out.crt").exists()


def test_request_for_a_ca_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sneaky")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=True)
        .sign(key, hashes.SHA384())
    )
    csr_path = tmp_path / "col_sneaky.csr"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateError) as info:
        sign_csr(ca, csr_path, tmp_path / "out.crt", server=False)
    assert info.value.code == "FX-PKI-007"


def test_missing_request_names_the_command(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(CertificateError) as info:
        sign_csr(ca, tmp_path / "col_x.csr", tmp_path / "col_x.crt", server=False)
    assert info.value.code == "FX-PKI-004"
    assert "col_x.csr" in info.value.message
    assert "fx collaborator generate-cert-request" in info.value.fix


def test_expired_override(ca: CertificateAuthority, issue: Issue) -> None:
    paths = issue("old", not_before=_ago(10), not_after=_ago(1))
    cert = _load(paths.crt)
    assert cert.not_valid_after_utc < _ago(0)


def test_rsa_option_end_to_end(tmp_path: Path) -> None:
    ca = create_certificate_authority(tmp_path / "cert", key_type="rsa")
    paths = collaborator_paths(ca.cert_dir, "site1")
    generate_csr("site1", server=False, key_path=paths.key, csr_path=paths.csr, key_type="rsa")
    cert = sign_csr(ca, paths.csr, paths.crt, server=False)
    assert cert.public_key().key_size == 3072  # type: ignore[union-attr]
    assert _load(ca.signing_cert).public_key().key_size == 3072  # type: ignore[union-attr]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    verify_certificate(paths.crt.read_bytes(), ca.chain.read_bytes(), server=False)


def _ago(days: int) -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=days)
