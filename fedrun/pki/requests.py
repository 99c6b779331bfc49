"""Participant keys and certificate signing requests (``fx ... generate-cert-request``).

A participant makes its own key pair; the private key never leaves its machine. Only the CSR
travels to the CA host, and its SHA-384 hash is compared out of band on both sides.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedrun.errors import CertificateError
from fedrun.pki.files import read_file, write_public_file
from fedrun.pki.keys import (
    DEFAULT_KEY_TYPE,
    generate_private_key,
    public_keys_match,
    write_private_key,
)
from fedrun.pki.names import is_ip_address, validate_collaborator_name, validate_fqdn
from fedrun.pki.profile import (
    extended_key_usage,
    participant_key_usage,
    signature_hash,
)

__all__ = [
    "csr_hash",
    "generate_csr",
    "load_csr",
    "parse_csr",
    "subject_alternative_names",
    "validate_participant_name",
]

_LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


def validate_participant_name(common_name: str, *, server: bool) -> str:
    """Check an aggregator FQDN (``server``) or collaborator name and return it.

    Parameters
    ----------
    common_name:
        The name.
    server:
        Whether it names the aggregator.

    Returns
    -------
    str
        ``common_name``.

    Raises
    ------
    CertificateError
        ``FX-PKI-003`` when the name is not valid.
    """
    if server:
        return validate_fqdn(common_name)
    return validate_collaborator_name(common_name)


def subject_alternative_names(common_name: str, *, server: bool) -> list[x509.GeneralName]:
    """Return the SAN entries a participant's certificate carries.

    Parameters
    ----------
    common_name:
        Aggregator FQDN or collaborator name (already validated).
    server:
        Whether it is the aggregator.

    Returns
    -------
    list[x509.GeneralName]
        ``DNS:<name>``; for an aggregator named by an IP address an IP entry instead; for an
        aggregator named ``localhost`` also the IPv4 and IPv6 loopback addresses, so clients
        can connect to ``localhost``, ``127.0.0.1`` or ``::1``.
    """
    if server and is_ip_address(common_name):
        return [x509.IPAddress(ipaddress.ip_address(common_name))]
    names: list[x509.GeneralName] = [x509.DNSName(common_name)]
    if server and common_name.lower() == "localhost":
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in _LOOPBACK_ADDRESSES]
    return names


def generate_csr(
    common_name: str,
    *,
    server: bool,
    key_path: Path,
    csr_path: Path,
    key_type: str = DEFAULT_KEY_TYPE,
) -> str:
    """Make a participant key pair and certificate signing request.

    Parameters
    ----------
    common_name:
        Aggregator FQDN (``server=True``) or collaborator name.
    server:
        ``True`` for the aggregator (serverAuth), ``False`` for a collaborator (clientAuth).
    key_path:
        Where to write the private key (mode 0600, its directory 0700). An existing key there
        is replaced.
    csr_path:
        Where to write the PEM CSR.
    key_type:
        ``"ec"`` (P-384, default) or ``"rsa"`` (RSA-3072).

    Returns
    -------
    str
        The CSR hash (:func:`csr_hash`) to compare out of band with the CA host.

    Raises
    ------
    CertificateError
        ``FX-PKI-003`` for an invalid name, ``FX-PKI-017`` for an unknown ``key_type``.
    """
    validate_participant_name(common_name, server=server)
    key = generate_private_key(key_type)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(extended_key_usage(server), critical=True)
        .add_extension(participant_key_usage(key.public_key()), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(subject_alternative_names(common_name, server=server)),
            critical=False,
        )
        .sign(key, signature_hash())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    write_private_key(key_path, key)
    write_public_file(csr_path, pem)
    return csr_hash(pem)


def csr_hash(csr_pem: bytes) -> str:
    """Return the SHA-384 hex digest of a CSR's PEM bytes (the value OpenFL prints).

    Parameters
    ----------
    csr_pem:
        The CSR file's bytes, exactly as written.

    Returns
    -------
    str
        96 lower-case hex characters.
    """
    return hashlib.sha384(csr_pem).hexdigest()


def parse_csr(
    csr_pem: bytes, source: str = "certificate request"
) -> x509.CertificateSigningRequest:
    """Parse a PEM certificate signing request.

    Parameters
    ----------
    csr_pem:
        PEM bytes.
    source:
        Where they came from, for messages.

    Returns
    -------
    x509.CertificateSigningRequest
        The request (its signature is not checked here).

    Raises
    ------
    CertificateError
        ``FX-PKI-005`` when the bytes are not a PEM CSR.
    """
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CertificateError(
            "FX-PKI-005",
            f"{source} is not a valid PEM certificate signing request ({exc})",
            "make the request again with `fx collaborator generate-cert-request` "
            "(or `fx aggregator generate-cert-request`)",
        ) from None


def load_csr(csr_path: Path, *, server: bool) -> tuple[x509.CertificateSigningRequest, bytes]:
    """Read and parse a CSR file.

    Parameters
    ----------
    csr_path:
        The CSR file.
    server:
        Whether it is the aggregator's (selects which command the fix names).

    Returns
    -------
    tuple[x509.CertificateSigningRequest, bytes]
        The request and the file's bytes (for :func:`csr_hash`).

    Raises
    ------
    CertificateError
        ``FX-PKI-004`` when missing, ``FX-PKI-005`` when not a CSR.
    """
    command = (
        "fx aggregator generate-cert-request"
        if server
        else "fx collaborator generate-cert-request -n <name> (on the collaborator)"
    )
    pem = read_file(csr_path, "certificate signing request", f"create it with `{command}`")
    return parse_csr(pem, str(csr_path)), pem


def refuse_to_replace_certified_key(name: str, key_path: Path, crt_path: Path) -> None:
    """Raise ``FX-PKI-020`` when this node already holds a signed certificate for ``name``: a new
    request would replace the key that certificate belongs to, and the node would stop working."""
    if crt_path.is_file():
        raise CertificateError(
            "FX-PKI-020",
            f"{name!r} already has a signed certificate on this node ({crt_path}); a new request "
            f"replaces its key ({key_path}) and that certificate stops working",
            "nothing to do if the node works; to start over on purpose (a lost or leaked key) "
            "pass --force, then have the CA sign the new request and import the signed package",
        )


def same_public_key(crt_path: Path, csr_pem: bytes) -> bool | None:
    """Whether the certificate at ``crt_path`` certifies the key of the request ``csr_pem``;
    None when there is no certificate there."""
    if not crt_path.is_file():
        return None
    issued = x509.load_pem_x509_certificate(crt_path.read_bytes())
    return public_keys_match(issued, x509.load_pem_x509_csr(csr_pem))
