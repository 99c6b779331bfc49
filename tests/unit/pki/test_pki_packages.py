"""Request and signed-certificate packages exchanged between collaborator and CA host."""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedrun.errors import CertificateError
from fedrun.pki import (
    CertificateAuthority,
    ParticipantPaths,
    collaborator_paths,
    create_certificate_authority,
    csr_hash,
    generate_csr,
    import_signed_package,
    read_request_package,
    sign_csr,
    verify_certificate,
    write_request_package,
    write_signed_package,
)

Issue = Callable[..., ParticipantPaths]


def _zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture
def col_dir(tmp_path: Path) -> Path:
    """The ``cert/`` directory of a collaborator workspace on another machine."""
    return tmp_path / "collaborator" / "cert"


@pytest.fixture
def request_zip(col_dir: Path, tmp_path: Path) -> tuple[Path, ParticipantPaths, str]:
    paths = collaborator_paths(col_dir, "site1")
    digest = generate_csr("site1", server=False, key_path=paths.key, csr_path=paths.csr)
    zip_path = tmp_path / "col_site1_to_agg_cert_request.zip"
    write_request_package(zip_path, paths.csr)
    return zip_path, paths, digest


@pytest.fixture
def signed_zip(
    ca: CertificateAuthority, request_zip: tuple[Path, ParticipantPaths, str], tmp_path: Path
) -> Path:
    """The CA host's answer to ``request_zip``."""
    zip_path, _, _ = request_zip
    name, pem = read_request_package(zip_path)
    target = collaborator_paths(ca.cert_dir, name)
    target.csr.parent.mkdir(parents=True, exist_ok=True)
    target.csr.write_bytes(pem)
    sign_csr(ca, target.csr, target.crt, server=False)
    out = tmp_path / "agg_to_col_site1_signed_cert.zip"
    write_signed_package(out, target.crt, ca.chain)
    return out


# --- request packages ---------------------------------------------------------------------


def test_request_package_round_trip(request_zip: tuple[Path, ParticipantPaths, str]) -> None:
    zip_path, paths, digest = request_zip
    assert _entries(zip_path) == {"col_site1.csr": paths.csr.read_bytes()}  # never the key
    name, pem = read_request_package(zip_path)
    assert name == "site1"
    assert pem == paths.csr.read_bytes()
    assert csr_hash(pem) == digest  # the hash shown on both sides matches


@pytest.mark.parametrize(
    "bad_name", ["../col_site1.csr", "/tmp/col_site1.csr", "a/../../col_site1.csr", "C:evil.csr"]
)
def test_request_package_with_unsafe_entry_is_refused(
    request_zip: tuple[Path, ParticipantPaths, str], tmp_path: Path, bad_name: str
) -> None:
    _, paths, _ = request_zip
    zip_path = _zip(tmp_path / "bad.zip", {bad_name: paths.csr.read_bytes()})
    with pytest.raises(CertificateError) as info:
        read_request_package(zip_path)
    assert info.value.code == "FX-PKI-012"
    assert str(zip_path) in info.value.message


def test_request_package_with_private_key_is_refused(
    request_zip: tuple[Path, ParticipantPaths, str], tmp_path: Path
) -> None:
    _, paths, _ = request_zip
    zip_path = _zip(
        tmp_path / "leaky.zip",
        {"col_site1.csr": paths.csr.read_bytes(), "col_site1.key": paths.key.read_bytes()},
    )
    with pytest.raises(CertificateError) as info:
        read_request_package(zip_path)
    assert info.value.code == "FX-PKI-012"
    assert "private key" in info.value.message


def test_request_package_with_two_csrs_is_refused(
    request_zip: tuple[Path, ParticipantPaths, str], col_dir: Path, tmp_path: Path
) -> None:
    _, paths, _ = request_zip
    other = collaborator_paths(col_dir, "site2")
    generate_csr("site2", server=False, key_path=other.key, csr_path=other.csr)
    zip_path = _zip(
        tmp_path / "two.zip",
        {"col_site1.csr": paths.csr.read_bytes(), "col_site2.csr": other.csr.read_bytes()},
    )
    with pytest.raises(CertificateError) as info:
        read_request_package(zip_path)
    assert info.value.code == "FX-PKI-013"
    assert "col_site1.csr" in info.value.message and "col_site2.csr" in info.value.message


def test_request_package_without_csr_is_refused(tmp_path: Path) -> None:
    zip_path = _zip(tmp_path / "empty.zip", {"readme.txt": b"hello"})
    with pytest.raises(CertificateError) as info:
        read_request_package(zip_path)
    assert info.value.code == "FX-PKI-013"


def test_request_package_cn_mismatch_is_refused(
    request_zip: tuple[Path, ParticipantPaths, str], tmp_path: Path
) -> None:
    _, paths, _ = request_zip
    zip_path = _zip(tmp_path / "renamed.zip", {"col_site9.csr": paths.csr.read_bytes()})
    with pytest.raises(CertificateError) as info:
        read_request_package(zip_path)
    assert info.value.code == "FX-PKI-014"
    assert "'site1'" in info.value.message and "'site9'" in info.value.message


def test_request_package_not_a_zip(tmp_path: Path) -> None:
    zip_path = tmp_path / "col_site1_to_agg_cert_request.zip"
    zip_path.write_bytes(b"this is not a zip file")
    with pytest.raises(CertificateError) as info:
        read_request_package(zip_path)
    assert info.value.code == "FX-PKI-011"
    assert str(zip_path) in info.value.message


def test_request_package_missing(tmp_path: Path) -> None:
    with pytest.raises(CertificateError) as info:
        read_request_package(tmp_path / "nope.zip")
    assert info.value.code == "FX-PKI-004"


def test_request_package_with_altered_csr_is_refused(
    request_zip: tuple[Path, ParticipantPaths, str], tmp_path: Path
) -> None:
    _, paths, _ = request_zip
    der = bytearray(
        x509.load_pem_x509_csr(paths.csr.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    der[der.find(b"site1") + 4] = ord("2")  # CN site1 -> site2, signature no longer matches
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    zip_path = _zip(tmp_path / "altered.zip", {"col_site2.csr": pem})
    with pytest.raises(CertificateError) as info:
        read_request_package(zip_path)
    assert info.value.code == "FX-PKI-006"


# --- signed packages ----------------------------------------------------------------------


def test_signed_package_round_trip(
    ca: CertificateAuthority,
    request_zip: tuple[Path, ParticipantPaths, str],
    signed_zip: Path,
    col_dir: Path,
) -> None:
    _, paths, _ = request_zip
    assert sorted(_entries(signed_zip)) == ["cert_chain.crt", "client/col_site1.crt"]
    installed = import_signed_package(signed_zip, col_dir, expected_name="site1")
    assert installed == paths.crt
    assert (col_dir / "cert_chain.crt").read_bytes() == ca.chain.read_bytes()
    verify_certificate(installed.read_bytes(), (col_dir / "cert_chain.crt").read_bytes())
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    # importing again (same chain now present locally) is fine
    assert import_signed_package(signed_zip, col_dir) == paths.crt


def test_a_certificate_without_its_key_here_is_refused(signed_zip: Path, tmp_path: Path) -> None:
    # Prepare: a workspace where the request was not made (no key), e.g. the wrong folder
    elsewhere = tmp_path / "elsewhere" / "cert"

    # Execute
    with pytest.raises(CertificateError) as info:
        import_signed_package(signed_zip, elsewhere)

    # Assert: nothing written; the message says where the import belongs
    assert info.value.code == "FX-PKI-004"
    assert "no private key" in info.value.message
    _assert_nothing_installed(elsewhere)


def _assert_nothing_installed(cert_dir: Path) -> None:
    assert not (cert_dir / "client" / "col_site1.crt").exists()
    assert not (cert_dir / "cert_chain.crt").exists()


def _flip_signature_byte(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the signature value
    return x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)


def _rename_subject(pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
    der = bytearray(bytes(der).replace(b"site1", b"site7"))
    return x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("tamper", [_flip_signature_byte, _rename_subject])
def test_tampered_certificate_is_refused(
    signed_zip: Path, col_dir: Path, tmp_path: Path, tamper: Callable[[bytes], bytes]
) -> None:
    entries = _entries(signed_zip)
    entries["client/col_site1.crt"] = tamper(entries["client/col_site1.crt"])
    bad = _zip(tmp_path / "tampered.zip", entries)
    with pytest.raises(CertificateError) as info:
        import_signed_package(bad, col_dir)
    assert info.value.code == "FX-PKI-008"
    assert "signature" in info.value.message
    _assert_nothing_installed(col_dir)


def test_corrupt_zip_is_refused(signed_zip: Path, col_dir: Path, tmp_path: Path) -> None:
    # Stored (uncompressed) so the certificate's text is in the file; flip one of its bytes.
    bad = _zip(tmp_path / "stored.zip", _entries(signed_zip), compression=zipfile.ZIP_STORED)
    data = bytearray(bad.read_bytes())
    index = data.find(b"-----BEGIN CERTIFICATE-----") + 40
    data[index] ^= 0x02
    bad.write_bytes(bytes(data))
    with pytest.raises(CertificateError) as info:
        import_signed_package(bad, col_dir)
    assert info.value.code == "FX-PKI-011"
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(signed_zip.read_bytes()[:100])
    with pytest.raises(CertificateError) as info:
        import_signed_package(truncated, col_dir)
    assert info.value.code == "FX-PKI-011"
    _assert_nothing_installed(col_dir)


def test_chain_mismatch_is_refused(
    signed_zip: Path, col_dir: Path, other_ca: CertificateAuthority
) -> None:
    col_dir.mkdir(parents=True, exist_ok=True)
    (col_dir / "cert_chain.crt").write_bytes(other_ca.chain.read_bytes())
    with pytest.raises(CertificateError) as info:
        import_signed_package(signed_zip, col_dir)
    assert info.value.code == "FX-PKI-015"
    assert "another federation" in info.value.message
    assert not (col_dir / "client" / "col_site1.crt").exists()
    assert (col_dir / "cert_chain.crt").read_bytes() == other_ca.chain.read_bytes()


def test_package_from_other_ca_with_its_own_chain_still_refused_by_local_chain(
    issue_other: Issue, other_ca: CertificateAuthority, ca: CertificateAuthority, tmp_path: Path
) -> None:
    paths = issue_other("site1")
    out = tmp_path / "other.zip"
    write_signed_package(out, paths.crt, other_ca.chain)
    with pytest.raises(CertificateError) as info:
        import_signed_package(out, ca.cert_dir)  # CA host already holds its own chain
    assert info.value.code == "FX-PKI-015"


def test_key_mismatch_is_refused(
    signed_zip: Path, request_zip: tuple[Path, ParticipantPaths, str], col_dir: Path
) -> None:
    _, paths, _ = request_zip
    # the collaborator made a new request (new key) after sending the first one
    generate_csr("site1", server=False, key_path=paths.key, csr_path=paths.csr)
    with pytest.raises(CertificateError) as info:
        import_signed_package(signed_zip, col_dir)
    assert info.value.code == "FX-PKI-016"
    assert str(paths.key) in info.value.message
    assert not paths.crt.exists()


def test_expected_name_mismatch_is_refused(signed_zip: Path, col_dir: Path) -> None:
    with pytest.raises(CertificateError) as info:
        import_signed_package(signed_zip, col_dir, expected_name="site2")
    assert info.value.code == "FX-PKI-014"
    assert "agg_to_col_site2_signed_cert.zip" in info.value.fix


def test_signed_package_with_traversal_is_refused(
    signed_zip: Path, col_dir: Path, tmp_path: Path
) -> None:
    entries = _entries(signed_zip)
    entries["../../evil.crt"] = b"x"
    bad = _zip(tmp_path / "evil.zip", entries)
    with pytest.raises(CertificateError) as info:
        import_signed_package(bad, col_dir)
    assert info.value.code == "FX-PKI-012"
    assert "'..'" in info.value.message
    assert not (col_dir / "client" / "col_site1.crt").exists()
    assert not (col_dir.parent.parent / "evil.crt").exists()


def test_signed_package_missing_chain_is_refused(
    signed_zip: Path, col_dir: Path, tmp_path: Path
) -> None:
    entries = _entries(signed_zip)
    del entries["cert_chain.crt"]
    bad = _zip(tmp_path / "nochain.zip", entries)
    with pytest.raises(CertificateError) as info:
        import_signed_package(bad, col_dir)
    assert info.value.code == "FX-PKI-013"


def test_write_signed_package_refuses_expired_certificate(
    issue: Issue, ca: CertificateAuthority, tmp_path: Path
) -> None:
    now = datetime.now(timezone.utc)
    paths = issue("old", not_before=now - timedelta(days=9), not_after=now - timedelta(days=1))
    with pytest.raises(CertificateError) as info:
        write_signed_package(tmp_path / "out.zip", paths.crt, ca.chain)
    assert info.value.code == "FX-PKI-009"
    assert not (tmp_path / "out.zip").exists()


def test_fresh_ca_does_not_trust_old_ca_packages(
    signed_zip: Path, tmp_path: Path, col_dir: Path
) -> None:
    # Same CA host re-created its CA: packages signed by the old one no longer import
    # into a workspace that already has the new chain.
    new_ca = create_certificate_authority(tmp_path / "new" / "cert")
    col_dir.mkdir(parents=True, exist_ok=True)
    (col_dir / "cert_chain.crt").write_bytes(new_ca.chain.read_bytes())
    with pytest.raises(CertificateError) as info:
        import_signed_package(signed_zip, col_dir)
    assert info.value.code == "FX-PKI-015"
