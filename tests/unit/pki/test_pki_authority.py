"""The federation CA: layout, modes, extensions, overwrite protection, loading."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from fedrun.errors import CertificateError
from fedrun.pki import (
    CertificateAuthority,
    create_certificate_authority,
    load_certificate_authority,
    parse_chain,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_modes(ca: CertificateAuthority, cert_dir: Path) -> None:
    assert ca.root_cert == cert_dir / "ca" / "root-ca.crt"
    assert ca.root_key == cert_dir / "ca" / "root-ca" / "private" / "root-ca.key"
    assert ca.signing_csr == cert_dir / "ca" / "signing-ca.csr"
    assert ca.signing_cert == cert_dir / "ca" / "signing-ca.crt"
    assert ca.signing_key == cert_dir / "ca" / "signing-ca" / "private" / "signing-ca.key"
    assert ca.chain == cert_dir / "cert_chain.crt"
    for path in ca.files():
        assert path.is_file(), path
    for key in (ca.root_key, ca.signing_key):
        assert _mode(key) == 0o600
        assert _mode(key.parent) == 0o700
        assert b"BEGIN PRIVATE KEY" in key.read_bytes()  # unencrypted PEM
    assert not list(cert_dir.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_chain_is_root_then_signing(ca: CertificateAuthority) -> None:
    chain_pem = ca.chain.read_bytes()
    assert chain_pem == ca.root_cert.read_bytes() + ca.signing_cert.read_bytes()
    chain = parse_chain(chain_pem)
    assert chain.root.subject == chain.root.issuer
    assert chain.signing.issuer == chain.root.subject


def test_ca_extensions(ca: CertificateAuthority) -> None:
    root = x509.load_pem_x509_certificate(ca.root_cert.read_bytes())
    signing = x509.load_pem_x509_certificate(ca.signing_cert.read_bytes())
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca and root_bc.value.path_length == 1
    signing_bc = signing.extensions.get_extension_for_class(x509.BasicConstraints)
    assert signing_bc.critical and signing_bc.value.ca and signing_bc.value.path_length == 0
    for cert in (root, signing):
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign and usage.value.crl_sign
        assert not usage.value.digital_signature
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha384"
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = signing.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    signing.verify_directly_issued_by(root)
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days in (365, 366)
    csr = x509.load_pem_x509_csr(ca.signing_csr.read_bytes())
    assert csr.subject == signing.subject and csr.is_signature_valid


def test_refuses_to_overwrite(ca: CertificateAuthority, cert_dir: Path) -> None:
    before = ca.root_cert.read_bytes()
    with pytest.raises(CertificateError) as info:
        create_certificate_authority(cert_dir)
    assert info.value.code == "FX-PKI-002"
    assert str(ca.root_cert) in info.value.message
    assert ca.root_cert.read_bytes() == before
    replaced = create_certificate_authority(cert_dir, overwrite=True)
    assert replaced.root_cert.read_bytes() != before


def test_refuses_when_only_part_of_a_ca_exists(tmp_path: Path) -> None:
    cert_dir = tmp_path / "cert"
    (cert_dir).mkdir()
    (cert_dir / "cert_chain.crt").write_text("left over")
    with pytest.raises(CertificateError) as info:
        create_certificate_authority(cert_dir)
    assert info.value.code == "FX-PKI-002"


def test_load_round_trip(ca: CertificateAuthority, cert_dir: Path) -> None:
    assert load_certificate_authority(cert_dir) == ca


def test_load_missing_says_run_certify(tmp_path: Path) -> None:
    with pytest.raises(CertificateError) as info:
        load_certificate_authority(tmp_path / "cert")
    assert info.value.code == "FX-PKI-001"
    assert "signing-ca.crt" in info.value.message
    assert "fx workspace certify" in info.value.fix


def test_load_detects_key_from_another_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    ca.signing_key.write_bytes(other_ca.signing_key.read_bytes())
    with pytest.raises(CertificateError) as info:
        load_certificate_authority(ca.cert_dir)
    assert info.value.code == "FX-PKI-001"
    assert "does not match" in info.value.message


def test_load_detects_corrupt_chain(ca: CertificateAuthority) -> None:
    ca.chain.write_bytes(ca.root_cert.read_bytes())
    with pytest.raises(CertificateError) as info:
        load_certificate_authority(ca.cert_dir)
    assert info.value.code == "FX-PKI-005"
    assert str(ca.chain) in info.value.message


def test_unknown_key_type_and_bad_days(tmp_path: Path) -> None:
    with pytest.raises(CertificateError) as info:
        create_certificate_authority(tmp_path / "a", key_type="dsa")
    assert info.value.code == "FX-PKI-017"
    with pytest.raises(CertificateError) as info:
        create_certificate_authority(tmp_path / "b", days=0)
    assert info.value.code == "FX-PKI-019"
    assert not (tmp_path / "b").exists()
