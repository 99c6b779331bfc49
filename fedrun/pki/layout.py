"""Where each certificate, request and key lives inside a workspace's ``cert/`` directory.

The CLI, the transport and the package functions all ask this module, so the naming rule
(``server/agg_<fqdn>.*``, ``client/col_<name>.*``, ``ca/...``) is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedrun.pki.names import validate_collaborator_name, validate_fqdn

__all__ = [
    "CHAIN_FILE",
    "CLIENT_DIR",
    "SERVER_DIR",
    "ParticipantPaths",
    "aggregator_paths",
    "chain_path",
    "collaborator_file_stem",
    "collaborator_paths",
    "request_package_name",
    "signed_certificate_paths",
    "signed_package_name",
]

CHAIN_FILE = "cert_chain.crt"
CLIENT_DIR = "client"
SERVER_DIR = "server"


@dataclass(frozen=True)
class ParticipantPaths:
    """The key, certificate request and certificate of one participant.

    Attributes
    ----------
    name:
        The common name (collaborator name or aggregator FQDN).
    server:
        ``True`` for the aggregator, ``False`` for a collaborator.
    key, csr, crt:
        Paths of the private key, the certificate signing request and the signed certificate.
    """

    name: str
    server: bool
    key: Path
    csr: Path
    crt: Path


def collaborator_file_stem(name: str) -> str:
    """Return ``col_<name>`` after checking ``name``.

    Parameters
    ----------
    name:
        Collaborator name.

    Returns
    -------
    str
        The stem shared by the collaborator's ``.key``, ``.csr`` and ``.crt`` files.
    """
    return f"col_{validate_collaborator_name(name)}"


def signed_certificate_paths(cert_dir: Path, name: str, server: bool) -> ParticipantPaths:
    """Return the key/CSR/certificate paths of a participant.

    Parameters
    ----------
    cert_dir:
        The workspace's ``cert/`` directory.
    name:
        Aggregator FQDN when ``server`` is true, else the collaborator name.
    server:
        Whether the participant is the aggregator.

    Returns
    -------
    ParticipantPaths
        ``server/agg_<fqdn>.{key,csr,crt}`` or ``client/col_<name>.{key,csr,crt}``.

    Raises
    ------
    CertificateError
        ``FX-PKI-003`` when the name is not valid, so it can never escape ``cert_dir``.
    """
    cert_dir = Path(cert_dir)
    if server:
        stem = f"agg_{validate_fqdn(name)}"
        folder = cert_dir / SERVER_DIR
    else:
        stem = collaborator_file_stem(name)
        folder = cert_dir / CLIENT_DIR
    return ParticipantPaths(
        name=name,
        server=server,
        key=folder / f"{stem}.key",
        csr=folder / f"{stem}.csr",
        crt=folder / f"{stem}.crt",
    )


def aggregator_paths(cert_dir: Path, fqdn: str) -> ParticipantPaths:
    """Return the aggregator's paths; see :func:`signed_certificate_paths`.

    Parameters
    ----------
    cert_dir:
        The workspace's ``cert/`` directory.
    fqdn:
        Aggregator host name or IP address.

    Returns
    -------
    ParticipantPaths
        ``server/agg_<fqdn>.{key,csr,crt}``.
    """
    return signed_certificate_paths(cert_dir, fqdn, server=True)


def collaborator_paths(cert_dir: Path, name: str) -> ParticipantPaths:
    """Return a collaborator's paths; see :func:`signed_certificate_paths`.

    Parameters
    ----------
    cert_dir:
        The workspace's ``cert/`` directory.
    name:
        Collaborator name.

    Returns
    -------
    ParticipantPaths
        ``client/col_<name>.{key,csr,crt}``.
    """
    return signed_certificate_paths(cert_dir, name, server=False)


def chain_path(cert_dir: Path) -> Path:
    """Return ``cert_dir/cert_chain.crt`` (root CA then signing CA, the trust anchor).

    Parameters
    ----------
    cert_dir:
        The workspace's ``cert/`` directory.

    Returns
    -------
    Path
        Path of the certificate chain.
    """
    return Path(cert_dir) / CHAIN_FILE


def request_package_name(name: str) -> str:
    """Return the file name of a collaborator's certificate request package.

    Parameters
    ----------
    name:
        Collaborator name.

    Returns
    -------
    str
        ``col_<name>_to_agg_cert_request.zip``.
    """
    return f"{collaborator_file_stem(name)}_to_agg_cert_request.zip"


def signed_package_name(name: str) -> str:
    """Return the file name of the package that carries a signed collaborator certificate.

    Parameters
    ----------
    name:
        Collaborator name.

    Returns
    -------
    str
        ``agg_to_col_<name>_signed_cert.zip``.
    """
    return f"agg_to_{collaborator_file_stem(name)}_signed_cert.zip"
