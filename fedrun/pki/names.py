"""Participant names: the default aggregator FQDN and the rules names must follow.

A name ends up in three places: a certificate's common name, a subject alternative name and a
file name (``col_<name>.crt``, ``agg_<fqdn>.crt``). The rules here keep all three safe, so a
name can never climb out of ``cert/`` or smuggle odd characters into a certificate.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket

from fedrun.constants import ENV_FQDN
from fedrun.errors import CertificateError

__all__ = [
    "COLLABORATOR_NAME_PATTERN",
    "default_fqdn",
    "is_ip_address",
    "validate_collaborator_name",
    "validate_fqdn",
]

COLLABORATOR_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# One DNS label: letters, digits, hyphens and (leniently) underscores, not starting or ending
# with a hyphen. Underscores are not RFC 1123 but do show up in container host names.
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_MAX_FQDN_CHARS = 253


def default_fqdn() -> str:
    """Return the aggregator's default fully qualified domain name.

    Returns
    -------
    str
        ``$FQDN`` when it is set and not blank, otherwise :func:`socket.getfqdn`, lower-cased.
    """
    from_env = os.environ.get(ENV_FQDN, "").strip()
    return (from_env or socket.getfqdn()).lower()


def is_ip_address(name: str) -> bool:
    """Return whether ``name`` is a literal IPv4 or IPv6 address.

    Parameters
    ----------
    name:
        A host name or address.

    Returns
    -------
    bool
        ``True`` for addresses such as ``10.0.0.5`` or ``::1``.
    """
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def validate_collaborator_name(name: str) -> str:
    """Check a collaborator name and return it unchanged.

    Parameters
    ----------
    name:
        The name given with ``-n``; it becomes the certificate's common name.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    CertificateError
        ``FX-PKI-003`` when the name does not match ``COLLABORATOR_NAME_PATTERN``.
    """
    if not isinstance(name, str) or not COLLABORATOR_NAME_PATTERN.match(name):
        raise CertificateError(
            "FX-PKI-003",
            f"invalid collaborator name {name!r}: it must start with a letter or digit and hold "
            "only letters, digits, '_', '.' or '-' (at most 64 characters)",
            "choose a name such as 'site1' or 'hospital-a' and pass it with -n",
        )
    return name


def validate_fqdn(name: str) -> str:
    """Check an aggregator host name (FQDN or IP address) and return it unchanged.

    Parameters
    ----------
    name:
        A host name such as ``agg.example.org``, ``localhost`` or an IP address.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    CertificateError
        ``FX-PKI-003`` when ``name`` is neither a valid host name nor an IP address.
    """
    if isinstance(name, str) and name and (is_ip_address(name) or _is_hostname(name)):
        return name
    raise CertificateError(
        "FX-PKI-003",
        f"invalid aggregator host name {name!r}: expected a host name such as "
        "'agg.example.org' or an IP address",
        "pass a valid name with --fqdn (or set $FQDN); it must equal network.settings.agg_addr "
        "in plan/plan.yaml",
    )


def _is_hostname(name: str) -> bool:
    if len(name) > _MAX_FQDN_CHARS:
        return False
    labels = name.split(".")
    # An all-numeric dotted name that is not an IP address (e.g. 1.2.3) is refused.
    if labels[-1].isdigit():
        return False
    return all(_LABEL.match(label) for label in labels)
