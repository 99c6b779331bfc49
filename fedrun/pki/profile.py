"""What fedrun puts into certificates: extensions, hash, validity windows.

Both the CA (:mod:`fedrun.pki.authority`) and the signer (:mod:`fedrun.pki.signing`) build
certificates from these pieces, so CA and participant certificates follow one profile.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedrun.errors import CertificateError

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_DAYS",
    "ca_key_usage",
    "extended_key_usage",
    "participant_key_usage",
    "signature_hash",
    "validity_window",
]

DEFAULT_DAYS = 365
# Certificates start this long before "now", so a peer whose clock runs a few minutes behind
# the CA host does not see a brand-new certificate as "not valid yet".
CLOCK_SKEW = timedelta(minutes=10)


def signature_hash() -> hashes.SHA384:
    """Return the hash used for every fedrun signature (SHA-384, as OpenFL).

    Returns
    -------
    hashes.SHA384
        A new :class:`~cryptography.hazmat.primitives.hashes.SHA384`.
    """
    return hashes.SHA384()


def validity_window(
    days: int,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """Return the (not_before, not_after) pair of a new certificate.

    Parameters
    ----------
    days:
        Lifetime in days counted from now (ignored when ``not_after`` is given).
    not_before, not_after:
        Explicit bounds (tests use them for expired certificates); naive values are UTC.
    now:
        The current time; defaults to the system clock.

    Returns
    -------
    tuple[datetime, datetime]
        Timezone-aware UTC bounds.

    Raises
    ------
    CertificateError
        ``FX-PKI-019`` when ``days`` is not positive or the window is empty.
    """
    if not isinstance(days, int) or days < 1:
        raise CertificateError(
            "FX-PKI-019",
            f"invalid certificate lifetime {days!r} days",
            "give a whole number of days of at least 1",
        )
    moment = now or datetime.now(timezone.utc)
    start = _aware(not_before) if not_before is not None else moment - CLOCK_SKEW
    end = _aware(not_after) if not_after is not None else moment + timedelta(days=days)
    if end <= start:
        raise CertificateError(
            "FX-PKI-019",
            f"invalid certificate validity window: not_after {end} is not after not_before {start}",
            "give a not_after later than not_before",
        )
    return start, end


def ca_key_usage() -> x509.KeyUsage:
    """Return the KeyUsage of a CA certificate: keyCertSign and cRLSign only."""
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def participant_key_usage(public_key: object) -> x509.KeyUsage:
    """Return the KeyUsage of an aggregator or collaborator certificate.

    Parameters
    ----------
    public_key:
        The participant's public key.

    Returns
    -------
    x509.KeyUsage
        digitalSignature, plus keyEncipherment for RSA keys (RSA key exchange in TLS 1.2).
    """
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def extended_key_usage(server: bool) -> x509.ExtendedKeyUsage:
    """Return serverAuth for the aggregator, clientAuth for a collaborator.

    Parameters
    ----------
    server:
        Whether the certificate is the aggregator's.

    Returns
    -------
    x509.ExtendedKeyUsage
        The single purpose the certificate may be used for.
    """
    oid = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    return x509.ExtendedKeyUsage([oid])


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
