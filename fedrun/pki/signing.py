"""Signing participant requests with the federation's signing CA (``fx ... certify``).

The signer does not trust the request blindly: the CSR's own signature must verify (proof the
requester holds the key), it must ask for the right purpose (serverAuth for the aggregator,
clientAuth for a collaborator) and never for a CA, and its name must follow the naming rules.
Only the common name and the DNS/IP alternative names are copied; everything else in the
certificate comes from fedrun's profile.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrun.errors import CertificateError
from fedrun.pki.authority import CertificateAuthority
from fedrun.pki.files import write_public_file
from fedrun.pki.identity import certificate_common_name, check_validity
from fedrun.pki.keys import public_keys_match
from fedrun.pki.profile import (
    DEFAULT_DAYS,
    extended_key_usage,
    participant_key_usage,
    signature_hash,
    validity_window,
)
from fedrun.pki.requests import (
    load_csr,
    parse_csr,
    subject_alternative_names,
    validate_participant_name,
)

__all__ = ["sign_csr", "sign_request"]

_MIN_RSA_BITS = 2048
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_USAGE_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
_NEW_REQUEST_FIX = (
    "make a new request with `fx collaborator generate-cert-request -n <name>` "
    "(aggregator: `fx aggregator generate-cert-request`) and sign that"
)


def sign_csr(
    ca: CertificateAuthority,
    csr_path: Path,
    cert_path: Path,
    *,
    server: bool,
    days: int = DEFAULT_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """Sign the CSR in ``csr_path`` with the signing CA and write the certificate.

    Parameters
    ----------
    ca:
        The federation's CA (from :func:`~fedrun.pki.authority.load_certificate_authority`).
    csr_path:
        The participant's PEM CSR.
    cert_path:
        Where to write the PEM certificate.
    server:
        ``True`` to issue an aggregator (serverAuth) certificate, ``False`` a collaborator
        (clientAuth) one.
    days:
        Lifetime; capped at the signing CA's own expiry.
    not_before, not_after:
        Explicit validity bounds (for tests, e.g. an already expired certificate); they
        override ``days`` and are not capped.

    Returns
    -------
    x509.Certificate
        The issued certificate.

    Raises
    ------
    CertificateError
        ``FX-PKI-004``/``005`` missing or unreadable CSR or CA files, ``FX-PKI-003`` bad name,
        ``FX-PKI-006`` CSR signature does not verify, ``FX-PKI-007`` CSR asks for the wrong
        usage, a CA, unsupported names or an unsupported key, ``FX-PKI-009``/``010`` the
        signing CA is expired or not valid yet.
    """
    _, pem = load_csr(Path(csr_path), server=server)
    return sign_request(
        ca,
        pem,
        cert_path,
        server=server,
        days=days,
        not_before=not_before,
        not_after=not_after,
        source=str(csr_path),
    )


def sign_request(
    ca: CertificateAuthority,
    csr_pem: bytes,
    cert_path: Path,
    *,
    server: bool,
    days: int = DEFAULT_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    source: str = "certificate request",
) -> x509.Certificate:
    """Sign CSR bytes (e.g. read from a request package); see :func:`sign_csr`.

    Parameters
    ----------
    ca:
        The federation's CA.
    csr_pem:
        The PEM CSR.
    cert_path:
        Where to write the PEM certificate.
    server:
        Aggregator (``True``) or collaborator (``False``) certificate.
    days, not_before, not_after:
        Validity, as in :func:`sign_csr`.
    source:
        Where the CSR came from, for messages.

    Returns
    -------
    x509.Certificate
        The issued certificate.

    Raises
    ------
    CertificateError
        As :func:`sign_csr`.
    """
    csr = parse_csr(csr_pem, source)
    if not csr.is_signature_valid:
        raise CertificateError(
            "FX-PKI-006",
            f"the signature of {source} does not verify: the request was altered or is corrupt",
            _NEW_REQUEST_FIX,
        )
    common_name = validate_participant_name(certificate_common_name(csr), server=server)
    _check_subject(csr, source)
    _check_public_key(csr, source)
    _check_requested_usage(csr, source, server=server)
    san = _requested_alternative_names(csr, common_name, source, server=server)

    signing_cert = ca.load_signing_certificate()
    signing_key = ca.load_signing_key()
    if not public_keys_match(signing_key, signing_cert):
        raise CertificateError(
            "FX-PKI-001",
            f"signing CA key {ca.signing_key} does not match certificate {ca.signing_cert}",
            "restore the CA files from a backup, or re-create the CA with `fx workspace "
            "certify` and certify every participant again",
        )
    check_validity(
        signing_cert,
        None,
        f"the signing CA certificate {ca.signing_cert}",
        "re-create the CA with `fx workspace certify` and certify every participant again",
    )
    start, end = validity_window(days, not_before=not_before, not_after=not_after)
    if not_after is None:
        end = min(end, signing_cert.not_valid_after_utc)

    public_key = csr.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(signing_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(extended_key_usage(server), critical=True)
        .add_extension(participant_key_usage(public_key), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(signing_cert), critical=False)
        .sign(signing_key, signature_hash())
    )
    write_public_file(Path(cert_path), cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _check_subject(csr: x509.CertificateSigningRequest, source: str) -> None:
    if len(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)) != 1:
        raise CertificateError(
            "FX-PKI-007",
            f"{source} names several common names; a participant has exactly one",
            _NEW_REQUEST_FIX,
        )


def _check_public_key(csr: x509.CertificateSigningRequest, source: str) -> None:
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _ALLOWED_CURVES):
        return
    bits = getattr(key, "key_size", None)
    described = type(key).__name__ + (f", {bits} bits" if bits else "")
    raise CertificateError(
        "FX-PKI-007",
        f"{source} uses an unsupported key ({described}); fedrun signs RSA keys of at least "
        f"{_MIN_RSA_BITS} bits and EC keys on P-256, P-384 or P-521",
        _NEW_REQUEST_FIX,
    )


def _check_requested_usage(
    csr: x509.CertificateSigningRequest, source: str, *, server: bool
) -> None:
    try:
        constraints = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise CertificateError(
            "FX-PKI-007",
            f"{source} asks for a CA certificate; participants never get one",
            _NEW_REQUEST_FIX,
        )
    try:
        usages = list(csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    wanted = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    if wanted not in usages:
        asked = ", ".join(_USAGE_NAMES.get(u, u.dotted_string) for u in usages) or "no usage"
        role, purpose = (
            ("an aggregator", "serverAuth") if server else ("a collaborator", "clientAuth")
        )
        raise CertificateError(
            "FX-PKI-007",
            f"{source} asks for {asked}, but {role} certificate needs {purpose}: it is not "
            f"{role}'s request",
            "sign aggregator requests with `fx aggregator certify` and collaborator requests "
            "with `fx collaborator certify`; otherwise " + _NEW_REQUEST_FIX,
        )


def _requested_alternative_names(
    csr: x509.CertificateSigningRequest, common_name: str, source: str, *, server: bool
) -> list[x509.GeneralName]:
    try:
        requested = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return subject_alternative_names(common_name, server=server)
    unsupported = [n for n in requested if not isinstance(n, (x509.DNSName, x509.IPAddress))]
    if unsupported or not requested:
        raise CertificateError(
            "FX-PKI-007",
            f"{source} asks for alternative names fedrun does not issue: {unsupported or 'none'}",
            _NEW_REQUEST_FIX,
        )
    if not server and requested != [x509.DNSName(common_name)]:
        # A collaborator is identified by its CN alone; extra host names would be unused at
        # best and confusing at worst.
        raise CertificateError(
            "FX-PKI-007",
            f"{source} asks for alternative names {[n.value for n in requested]}, but a "
            f"collaborator certificate carries only DNS:{common_name}",
            _NEW_REQUEST_FIX,
        )
    return requested


def _authority_key_identifier(signing_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = signing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
