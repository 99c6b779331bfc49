"""Private keys: which algorithm, how they are made, written, read and compared.

The default is ECDSA on curve P-384. Making a P-384 key takes well under a millisecond, where an
RSA-3072 key (OpenFL's choice) takes from a tenth of a second to several seconds, which adds up
across a CA, an aggregator and many collaborators (and across a test suite). P-384 gives about
192-bit security, above RSA-3072's 128, and gRPC (BoringSSL) accepts ECDSA certificates for
mutual TLS. ``key_type="rsa"`` still gives RSA-3072 for sites whose policy demands RSA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fedrun.errors import CertificateError
from fedrun.pki.files import read_file, write_private_file

__all__ = [
    "DEFAULT_KEY_TYPE",
    "KEY_TYPES",
    "RSA_KEY_BITS",
    "PrivateKey",
    "generate_private_key",
    "load_private_key",
    "public_key_der",
    "public_keys_match",
    "write_private_key",
]

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

# ECDSA P-384 by default: near-instant key generation, strong, and accepted by gRPC (see above).
DEFAULT_KEY_TYPE = "ec"
KEY_TYPES = ("ec", "rsa")
RSA_KEY_BITS = 3072
RSA_PUBLIC_EXPONENT = 65537


def generate_private_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Make a new private key.

    Parameters
    ----------
    key_type:
        ``"ec"`` for ECDSA P-384 (default) or ``"rsa"`` for RSA-3072.

    Returns
    -------
    PrivateKey
        The new key.

    Raises
    ------
    CertificateError
        ``FX-PKI-017`` for any other ``key_type``.
    """
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
    raise CertificateError(
        "FX-PKI-017",
        f"unsupported key type {key_type!r}",
        f"use one of {', '.join(KEY_TYPES)}",
    )


def write_private_key(path: Path, key: PrivateKey) -> Path:
    """Write ``key`` as unencrypted PKCS#8 PEM, file mode 0600, directory mode 0700.

    Parameters
    ----------
    path:
        Destination file.
    key:
        The private key.

    Returns
    -------
    Path
        ``path``.
    """
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return write_private_file(path, pem)


def load_private_key(path: Path, what: str = "private key", fix: str = "") -> PrivateKey:
    """Read an unencrypted PEM private key.

    Parameters
    ----------
    path:
        Key file.
    what:
        What the key is, for error messages.
    fix:
        What to do when the file is missing.

    Returns
    -------
    PrivateKey
        The key (EC or RSA).

    Raises
    ------
    CertificateError
        ``FX-PKI-004`` when missing, ``FX-PKI-005`` when it is not an EC or RSA PEM key.
    """
    data = read_file(path, what, fix or f"create {path} again with the fx command that made it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            "FX-PKI-005",
            f"{what} {path} is not an unencrypted PEM private key ({exc})",
            f"replace {path} with the key file fx wrote",
        ) from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError(
            "FX-PKI-005",
            f"{what} {path} holds a {type(key).__name__}; only EC and RSA keys are supported",
            f"replace {path} with a key made by fx",
        )
    return key


def public_key_der(public_key: object) -> bytes:
    """Return the DER SubjectPublicKeyInfo of a key, certificate or certificate request.

    Parameters
    ----------
    public_key:
        A public key, or anything with a ``public_key()`` method: a private key, an
        :class:`~cryptography.x509.Certificate` or a :class:`~cryptography.x509.CertificateSigningRequest`.

    Returns
    -------
    bytes
        DER bytes that identify the key pair.
    """
    if hasattr(public_key, "public_key"):
        public_key = public_key.public_key()
    return public_key.public_bytes(  # type: ignore[attr-defined]
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def public_keys_match(first: object, second: object) -> bool:
    """Return whether two keys (public or private, in any mix) belong to the same key pair.

    Parameters
    ----------
    first, second:
        Keys, certificates or certificate requests to compare.

    Returns
    -------
    bool
        ``True`` when their public halves are identical.
    """
    return public_key_der(first) == public_key_der(second)
