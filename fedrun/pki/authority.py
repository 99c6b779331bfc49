"""The federation's two-level certificate authority (``fx workspace certify``).

A self-signed root CA certifies a signing CA; the signing CA signs every aggregator and
collaborator certificate. ``cert_chain.crt`` (root then signing CA) is the trust anchor both
sides load. Layout under a workspace's ``cert/`` directory::

    ca/root-ca.crt                       ca/root-ca/private/root-ca.key        (0700 dir, 0600 key)
    ca/signing-ca.csr  ca/signing-ca.crt ca/signing-ca/private/signing-ca.key  (0700 dir, 0600 key)
    cert_chain.crt
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedrun.errors import CertificateError
from fedrun.pki.files import read_file, write_public_file
from fedrun.pki.identity import CertificateChain, load_certificate, parse_chain
from fedrun.pki.keys import (
    DEFAULT_KEY_TYPE,
    PrivateKey,
    generate_private_key,
    load_private_key,
    public_keys_match,
    write_private_key,
)
from fedrun.pki.layout import CHAIN_FILE
from fedrun.pki.profile import DEFAULT_DAYS, ca_key_usage, signature_hash, validity_window

__all__ = [
    "CertificateAuthority",
    "create_certificate_authority",
    "load_certificate_authority",
]

_CERTIFY_FIX = "run `fx workspace certify` on the CA host (usually the aggregator's machine)"
ROOT_CA_NAME = "fedrun Root CA"
SIGNING_CA_NAME = "fedrun Signing CA"
ORGANIZATION = "fedrun"


@dataclass(frozen=True)
class CertificateAuthority:
    """Paths of the federation's CA files under a ``cert/`` directory.

    Attributes
    ----------
    cert_dir:
        The workspace's ``cert/`` directory.
    root_cert, root_key:
        Root CA certificate and private key.
    signing_csr, signing_cert, signing_key:
        Signing CA request, certificate and private key.
    chain:
        ``cert_chain.crt``: root PEM followed by signing PEM.
    """

    cert_dir: Path
    root_cert: Path
    root_key: Path
    signing_csr: Path
    signing_cert: Path
    signing_key: Path
    chain: Path

    @classmethod
    def at(cls, cert_dir: Path) -> CertificateAuthority:
        """Return the CA paths under ``cert_dir`` (nothing is read or checked).

        Parameters
        ----------
        cert_dir:
            The workspace's ``cert/`` directory.

        Returns
        -------
        CertificateAuthority
            The paths.
        """
        cert_dir = Path(cert_dir)
        ca = cert_dir / "ca"
        return cls(
            cert_dir=cert_dir,
            root_cert=ca / "root-ca.crt",
            root_key=ca / "root-ca" / "private" / "root-ca.key",
            signing_csr=ca / "signing-ca.csr",
            signing_cert=ca / "signing-ca.crt",
            signing_key=ca / "signing-ca" / "private" / "signing-ca.key",
            chain=cert_dir / CHAIN_FILE,
        )

    def files(self) -> tuple[Path, ...]:
        """Return every CA file path."""
        return (
            self.root_cert,
            self.root_key,
            self.signing_csr,
            self.signing_cert,
            self.signing_key,
            self.chain,
        )

    def existing_files(self) -> list[Path]:
        """Return the CA files that already exist."""
        return [path for path in self.files() if path.exists()]

    def load_signing_certificate(self) -> x509.Certificate:
        """Read the signing CA certificate (``FX-PKI-004``/``005`` when missing or invalid)."""
        return load_certificate(self.signing_cert, "signing CA certificate", _CERTIFY_FIX)

    def load_signing_key(self) -> PrivateKey:
        """Read the signing CA private key (``FX-PKI-004``/``005`` when missing or invalid)."""
        return load_private_key(self.signing_key, "signing CA private key", _CERTIFY_FIX)

    def load_chain(self) -> CertificateChain:
        """Read and check ``cert_chain.crt`` (``FX-PKI-004``/``005`` when missing or invalid)."""
        pem = load_chain_bytes(self.chain)
        return parse_chain(pem, str(self.chain))


def load_chain_bytes(path: Path) -> bytes:
    """Read a ``cert_chain.crt`` file.

    Parameters
    ----------
    path:
        The chain file.

    Returns
    -------
    bytes
        Its PEM bytes.

    Raises
    ------
    CertificateError
        ``FX-PKI-004`` when missing (the fix names the commands that bring it).
    """
    return read_file(
        path,
        "certificate chain",
        "on the CA host run `fx workspace certify`; on a collaborator import the signed "
        "package with `fx collaborator certify --import <zip>`",
    )


def create_certificate_authority(
    cert_dir: Path,
    *,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
    key_type: str = DEFAULT_KEY_TYPE,
) -> CertificateAuthority:
    """Create the root CA, the signing CA and ``cert_chain.crt`` under ``cert_dir``.

    Parameters
    ----------
    cert_dir:
        The workspace's ``cert/`` directory (created if missing).
    days:
        Lifetime of both CA certificates.
    overwrite:
        Replace an existing CA. Every certificate it issued stops being trusted.
    key_type:
        ``"ec"`` (P-384, default) or ``"rsa"`` (RSA-3072).

    Returns
    -------
    CertificateAuthority
        The paths of the new files.

    Raises
    ------
    CertificateError
        ``FX-PKI-002`` when a CA already exists and ``overwrite`` is false; ``FX-PKI-017`` for
        an unknown ``key_type``; ``FX-PKI-019`` for a bad ``days``.
    """
    ca = CertificateAuthority.at(cert_dir)
    existing = ca.existing_files()
    if existing and not overwrite:
        raise CertificateError(
            "FX-PKI-002",
            f"a certificate authority already exists in {ca.cert_dir} "
            f"({', '.join(str(p) for p in existing)}); it was not replaced",
            "keep using it; to start a new federation anyway, delete "
            f"{ca.cert_dir / 'ca'} and {ca.chain} (every certificate it issued stops being "
            "trusted) and run `fx workspace certify` again",
        )
    not_before, not_after = validity_window(days)
    federation = uuid.uuid4().hex[:12]

    root_key = generate_private_key(key_type)
    root_name = _ca_name(ROOT_CA_NAME, federation)
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root_cert = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(root_ski, critical=False)
        .sign(root_key, signature_hash())
    )

    signing_key = generate_private_key(key_type)
    signing_name = _ca_name(SIGNING_CA_NAME, federation)
    signing_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(signing_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(signing_key, signature_hash())
    )
    signing_cert = (
        x509.CertificateBuilder()
        .subject_name(signing_csr.subject)
        .issuer_name(root_cert.subject)
        .public_key(signing_csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(signing_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        .sign(root_key, signature_hash())
    )

    pem = serialization.Encoding.PEM
    write_private_key(ca.root_key, root_key)
    write_public_file(ca.root_cert, root_cert.public_bytes(pem))
    write_private_key(ca.signing_key, signing_key)
    write_public_file(ca.signing_csr, signing_csr.public_bytes(pem))
    write_public_file(ca.signing_cert, signing_cert.public_bytes(pem))
    write_public_file(ca.chain, CertificateChain(root_cert, signing_cert).pem())
    return ca


def load_certificate_authority(cert_dir: Path) -> CertificateAuthority:
    """Find and check the CA under ``cert_dir`` so it can sign certificates.

    Parameters
    ----------
    cert_dir:
        The workspace's ``cert/`` directory.

    Returns
    -------
    CertificateAuthority
        The CA paths, after checking that the signing CA certificate, its key and
        ``cert_chain.crt`` exist and belong together. (The root key is not needed to sign and
        may be kept offline.)

    Raises
    ------
    CertificateError
        ``FX-PKI-001`` when files are missing or do not belong together; ``FX-PKI-005`` when a
        file is unreadable.
    """
    ca = CertificateAuthority.at(cert_dir)
    required = (ca.root_cert, ca.signing_cert, ca.signing_key, ca.chain)
    missing = [path for path in required if not path.exists()]
    if missing:
        raise CertificateError(
            "FX-PKI-001",
            f"no certificate authority in {ca.cert_dir}: missing "
            f"{', '.join(str(p) for p in missing)}",
            _CERTIFY_FIX,
        )
    chain = ca.load_chain()
    signing_cert = ca.load_signing_certificate()
    root_cert = load_certificate(ca.root_cert, "root CA certificate", _CERTIFY_FIX)
    signing_key = ca.load_signing_key()
    repair = (
        f"restore the CA files from a backup; otherwise delete {ca.cert_dir / 'ca'} and "
        f"{ca.chain} and {_CERTIFY_FIX} (every certificate issued so far must be redone)"
    )
    if chain.der_list() != [
        root_cert.public_bytes(serialization.Encoding.DER),
        signing_cert.public_bytes(serialization.Encoding.DER),
    ]:
        raise CertificateError(
            "FX-PKI-001",
            f"{ca.chain} does not hold {ca.root_cert} followed by {ca.signing_cert}",
            repair,
        )
    if not public_keys_match(signing_key, signing_cert):
        raise CertificateError(
            "FX-PKI-001",
            f"signing CA key {ca.signing_key} does not match certificate {ca.signing_cert}",
            repair,
        )
    return ca


def _ca_name(common_name: str, federation: str) -> x509.Name:
    # The federation id makes two federations' CAs tell apart in messages and logs.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"federation {federation}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
