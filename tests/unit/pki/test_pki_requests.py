"""Participant keys and certificate signing requests."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrun.errors import CertificateError
from fedrun.pki import (
    collaborator_paths,
    csr_hash,
    generate_csr,
    load_private_key,
    public_keys_match,
    signed_certificate_paths,
)


def _csr(path: Path) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(path.read_bytes())


def _san(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    return list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_collaborator_csr_contents(tmp_path: Path) -> None:
    paths = collaborator_paths(tmp_path / "cert", "site1")
    digest = generate_csr("site1", server=False, key_path=paths.key, csr_path=paths.csr)
    csr = _csr(paths.csr)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site1"
    assert len(csr.subject) == 1
    assert _san(csr) == [x509.DNSName("site1")]
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = csr.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    usage = csr.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    assert public_keys_match(load_private_key(paths.key), csr)
    # the hash is the SHA-384 of the file as written, stable across reads
    assert digest == hashlib.sha384(paths.csr.read_bytes()).hexdigest()
    assert digest == csr_hash(paths.csr.read_bytes()) and len(digest) == 96


def test_key_file_and_directory_modes(tmp_path: Path) -> None:
    paths = collaborator_paths(tmp_path / "cert", "site1")
    generate_csr("site1", server=False, key_path=paths.key, csr_path=paths.csr)
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.key.parent.stat().st_mode) == 0o700
    assert b"ENCRYPTED" not in paths.key.read_bytes()


def test_server_csr_eku_and_dns_san(tmp_path: Path) -> None:
    paths = signed_certificate_paths(tmp_path, "agg.example.org", server=True)
    generate_csr("agg.example.org", server=True, key_path=paths.key, csr_path=paths.csr)
    csr = _csr(paths.csr)
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _san(csr) == [x509.DNSName("agg.example.org")]


def test_server_localhost_gets_loopback_ips(tmp_path: Path) -> None:
    paths = signed_certificate_paths(tmp_path, "localhost", server=True)
    generate_csr("localhost", server=True, key_path=paths.key, csr_path=paths.csr)
    assert _san(_csr(paths.csr)) == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


def test_server_ip_address_gets_ip_san(tmp_path: Path) -> None:
    paths = signed_certificate_paths(tmp_path, "10.1.2.3", server=True)
    generate_csr("10.1.2.3", server=True, key_path=paths.key, csr_path=paths.csr)
    assert _san(_csr(paths.csr)) == [x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]


def test_hash_differs_between_requests(tmp_path: Path) -> None:
    first = generate_csr("a", server=False, key_path=tmp_path / "a.key", csr_path=tmp_path / "a")
    second = generate_csr("a", server=False, key_path=tmp_path / "b.key", csr_path=tmp_path / "b")
    assert first != second  # new key, new request, new hash
    assert csr_hash(b"same bytes") == csr_hash(b"same bytes")


@pytest.mark.parametrize(("name", "server"), [("../evil", False), ("bad name", True)])
def test_bad_names_are_refused_before_writing(tmp_path: Path, name: str, server: bool) -> None:
    with pytest.raises(CertificateError) as info:
        generate_csr(name, server=server, key_path=tmp_path / "k", csr_path=tmp_path / "c")
    assert info.value.code == "FX-PKI-003"
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()
