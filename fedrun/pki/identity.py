"""Reading certificates and deciding whether to trust them.

:func:`verify_certificate` is the one trust decision used everywhere (import of a signed
package, the transport's checks, ``fx collaborator ping``): a participant certificate is trusted
when it is signed by the federation's signing CA, that CA by the root, and all three are
inside their validity windows. Each failure has its own code and message.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrun.errors import CertificateError
from fedrun.pki.files import read_file

__all__ = [
    "CertificateChain",
    "certificate_common_name",
    "certificate_fingerprint",
    "check_validity",
    "load_certificate",
    "parse_certificate",
    "parse_chain",
    "verify_certificate",
]

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
_RECERTIFY_FIX = (
    "make a new request and have it signed by the federation's CA "
    "(collaborator: fx collaborator generate-cert-request, then fx collaborator certify "
    "--request-pkg on the CA host and --import here; aggregator: fx aggregator "
    "generate-cert-request then fx aggregator certify)"
)
_NEW_CA_FIX = (
    "the federation's CA must be re-created on the CA host with fx workspace certify, and "
    "every participant certified again"
)


def certificate_common_name(cert: Union[x509.Certificate, x509.CertificateSigningRequest]) -> str:
    """Return the subject common name of a certificate (or certificate request).

    Parameters
    ----------
    cert:
        The certificate or CSR.

    Returns
    -------
    str
        The first ``CN`` attribute of the subject.

    Raises
    ------
    CertificateError
        ``FX-PKI-005`` when the subject has no common name.
    """
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        raise CertificateError(
            "FX-PKI-005",
            f"certificate subject {cert.subject.rfc4514_string()!r} has no common name (CN)",
            "use a certificate or request made by fx, whose CN is the participant's name",
        )
    value = attributes[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of a certificate as lower-case hex (for logs).

    Parameters
    ----------
    cert:
        The certificate.

    Returns
    -------
    str
        64 hex characters.
    """
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def parse_certificate(pem: bytes, source: str = "certificate") -> x509.Certificate:
    """Parse one PEM certificate.

    Parameters
    ----------
    pem:
        PEM bytes.
    source:
        Where the bytes came from (a path or a description), for error messages.

    Returns
    -------
    x509.Certificate
        The first certificate in ``pem``.

    Raises
    ------
    CertificateError
        ``FX-PKI-005`` when ``pem`` holds no valid certificate.
    """
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(
            "FX-PKI-005",
            f"{source} is not a valid PEM certificate ({exc})",
            f"replace {source} with the certificate the federation's CA issued",
        ) from None


def load_certificate(path: Path, what: str, fix: str) -> x509.Certificate:
    """Read and parse a PEM certificate file.

    Parameters
    ----------
    path:
        Certificate file.
    what:
        What it is, for messages (e.g. ``"signing CA certificate"``).
    fix:
        What to do when it is missing.

    Returns
    -------
    x509.Certificate
        The certificate.

    Raises
    ------
    CertificateError
        ``FX-PKI-004`` when missing, ``FX-PKI-005`` when not a certificate.
    """
    return parse_certificate(read_file(path, what, fix), f"{what} {path}")


class CertificateChain:
    """The federation's trust anchor: a root CA and the signing CA it certified.

    Parameters
    ----------
    root:
        The self-signed root CA certificate.
    signing:
        The signing CA certificate, issued by ``root``; it signs every participant.
    """

    def __init__(self, root: x509.Certificate, signing: x509.Certificate) -> None:
        self.root = root
        self.signing = signing

    def pem(self) -> bytes:
        """Return root PEM followed by signing PEM (the ``cert_chain.crt`` format)."""
        return self.root.public_bytes(serialization.Encoding.PEM) + self.signing.public_bytes(
            serialization.Encoding.PEM
        )

    def der_list(self) -> list[bytes]:
        """Return the DER encodings (root, signing), for exact comparisons."""
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.root, self.signing)]


def parse_chain(pem: bytes, source: str = "certificate chain") -> CertificateChain:
    """Parse a ``cert_chain.crt``: a self-signed root CA and a signing CA it issued.

    Parameters
    ----------
    pem:
        PEM bytes holding exactly two CA certificates, in any order.
    source:
        Where the bytes came from, for messages.

    Returns
    -------
    CertificateChain
        The root and signing CA certificates (the root's self-signature and its signature on
        the signing CA are checked).

    Raises
    ------
    CertificateError
        ``FX-PKI-005`` when the chain is malformed or its signatures do not hold.
    """
    fix = f"replace {source} with the cert_chain.crt written by fx workspace certify on the CA host"
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateError(
            "FX-PKI-005", f"{source} is not a valid PEM certificate chain ({exc})", fix
        ) from None
    roots = [c for c in certs if c.subject == c.issuer]
    others = [c for c in certs if c.subject != c.issuer]
    if len(certs) != 2 or len(roots) != 1 or len(others) != 1:
        raise CertificateError(
            "FX-PKI-005",
            f"{source} must hold exactly a root CA and a signing CA; it holds {len(certs)} "
            f"certificate(s), {len(roots)} of them self-signed",
            fix,
        )
    root, signing = roots[0], others[0]
    for cert, label in ((root, "root CA"), (signing, "signing CA")):
        if not _is_ca(cert):
            raise CertificateError(
                "FX-PKI-005", f"the {label} in {source} is not marked as a CA certificate", fix
            )
    problem = _signature_problem(root, root, "itself")
    if problem is not None:
        raise CertificateError("FX-PKI-005", f"the root CA in {source} {problem}", fix)
    problem = _signature_problem(signing, root, "the root CA")
    if problem is not None:
        raise CertificateError("FX-PKI-005", f"the signing CA in {source} {problem}", fix)
    return CertificateChain(root, signing)


def check_validity(
    cert: x509.Certificate, now: datetime | None, label: str, fix: str = _RECERTIFY_FIX
) -> None:
    """Refuse a certificate outside its validity window.

    Parameters
    ----------
    cert:
        The certificate.
    now:
        The time to check against; defaults to the current UTC time (naive values are UTC).
    label:
        How to name the certificate in the message.
    fix:
        What to do about an expired certificate.

    Raises
    ------
    CertificateError
        ``FX-PKI-009`` when expired (the message gives the expiry date), ``FX-PKI-010`` when
        not valid yet (the message gives the start date).
    """
    moment = _utc(now)
    if moment < cert.not_valid_before_utc:
        raise CertificateError(
            "FX-PKI-010",
            f"{label} is not valid yet: valid from {cert.not_valid_before_utc:{_TIME_FORMAT}} "
            f"(now {moment:{_TIME_FORMAT}})",
            "check this machine's clock (and the CA host's clock); then retry",
        )
    if moment > cert.not_valid_after_utc:
        raise CertificateError(
            "FX-PKI-009",
            f"{label} expired on {cert.not_valid_after_utc:{_TIME_FORMAT}} "
            f"(now {moment:{_TIME_FORMAT}})",
            fix,
        )


def verify_certificate(
    cert_pem: bytes,
    chain_pem: bytes,
    *,
    now: datetime | None = None,
    server: bool | None = None,
    source: str = "certificate",
) -> x509.Certificate:
    """Check that a participant certificate is trusted by the federation in ``chain_pem``.

    Parameters
    ----------
    cert_pem:
        The participant's PEM certificate.
    chain_pem:
        The federation's ``cert_chain.crt`` (root CA and signing CA).
    now:
        Time to check validity against; the current UTC time by default.
    server:
        When given, also require the aggregator (``True``, serverAuth) or collaborator
        (``False``, clientAuth) extended key usage.
    source:
        Where the certificate came from (a path or description), for messages.

    Returns
    -------
    x509.Certificate
        The verified certificate.

    Raises
    ------
    CertificateError
        ``FX-PKI-005`` unparsable certificate or chain, ``FX-PKI-008`` not signed by this
        federation's signing CA, ``FX-PKI-009`` expired, ``FX-PKI-010`` not valid yet,
        ``FX-PKI-018`` a CA certificate or the wrong usage where a participant's is expected.
    """
    cert = parse_certificate(cert_pem, source)
    chain = parse_chain(chain_pem)
    name = _describe(cert)
    problem = _signature_problem(cert, chain.signing, "this federation's signing CA")
    if problem is not None:
        raise CertificateError(
            "FX-PKI-008",
            f"{source} ({name}) is not trusted: it {problem}",
            "the certificate belongs to another federation or was altered; " + _RECERTIFY_FIX,
        )
    check_validity(chain.root, now, "the federation's root CA certificate", _NEW_CA_FIX)
    check_validity(chain.signing, now, "the federation's signing CA certificate", _NEW_CA_FIX)
    check_validity(cert, now, f"{source} ({name})")
    if _is_ca(cert):
        raise CertificateError(
            "FX-PKI-018",
            f"{source} ({name}) is a CA certificate, not a participant certificate",
            _RECERTIFY_FIX,
        )
    if server is not None:
        wanted = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        if wanted not in _extended_key_usages(cert):
            role = "an aggregator (serverAuth)" if server else "a collaborator (clientAuth)"
            raise CertificateError(
                "FX-PKI-018",
                f"{source} ({name}) is not {role} certificate",
                _RECERTIFY_FIX,
            )
    return cert


def _describe(cert: x509.Certificate) -> str:
    try:
        return f"CN={certificate_common_name(cert)}"
    except CertificateError:
        return f"subject {cert.subject.rfc4514_string()!r}"


def _signature_problem(
    cert: x509.Certificate, issuer: x509.Certificate, issuer_label: str
) -> str | None:
    """Return why ``cert`` is not directly issued by ``issuer``, or ``None`` when it is."""
    if cert.issuer != issuer.subject:
        return (
            f"was issued by {cert.issuer.rfc4514_string()!r}, not by {issuer_label} "
            f"({issuer.subject.rfc4514_string()!r})"
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return (
            f"has a signature that does not verify against {issuer_label} "
            "(the certificate was altered, or issued by another CA with the same name)"
        )
    except (ValueError, TypeError) as exc:
        return f"cannot be checked against {issuer_label} ({exc})"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _extended_key_usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(timezone.utc)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
