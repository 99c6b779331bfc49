"""TLS credentials for the aggregator and collaborators, and the peer identity check.

Mutual TLS is the default: the aggregator presents ``cert/server/agg_<fqdn>.crt``, every
collaborator presents ``cert/client/col_<name>.crt``, and both trust only
``cert/cert_chain.crt`` (the federation's CA). A missing file is reported with the command that
creates it.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509

from fedrun.errors import CertificateError
from fedrun.pki.identity import certificate_common_name
from fedrun.pki.layout import aggregator_paths, chain_path, collaborator_paths


def _read(path: Path, what: str, fix: str) -> bytes:
    if not path.is_file():
        raise CertificateError("FX-TLS-001", f"{what} {path} does not exist", fix)
    return path.read_bytes()


def server_credentials(
    cert_dir: Path, fqdn: str, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """Credentials of the aggregator for ``fqdn``."""
    paths = aggregator_paths(cert_dir, fqdn)
    chain = _read(
        chain_path(cert_dir),
        "certificate chain",
        "run `fx workspace certify` on the aggregator node (it creates the federation's CA)",
    )
    key = _read(
        paths.key,
        "aggregator key",
        f"run `fx aggregator generate-cert-request --fqdn {fqdn}` then `fx aggregator certify --fqdn {fqdn}`",
    )
    cert = _read(
        paths.crt,
        "aggregator certificate",
        f"run `fx aggregator certify --fqdn {fqdn}` (after `fx aggregator generate-cert-request`)",
    )
    check_own_certificate(paths.crt, cert, paths.key, chain, fqdn)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=chain, require_client_auth=require_client_auth
    )


def check_own_certificate(
    crt: Path, cert_pem: bytes, key: Path, chain_pem: bytes, fqdn: str
) -> None:
    """Refuse to serve with a certificate collaborators would refuse: not this federation's,
    expired or not valid yet, not for ``fqdn`` (the plan's agg_addr), or not for this key.
    Without it the aggregator served and every collaborator failed its handshake instead."""
    from fedrun.pki.identity import verify_certificate
    from fedrun.pki.keys import load_private_key, public_keys_match

    renew = f"fx aggregator generate-cert-request --fqdn {fqdn} --force, then fx aggregator certify --fqdn {fqdn}"
    try:
        issued = verify_certificate(cert_pem, chain_pem, server=True, source=str(crt))
    except CertificateError as error:
        raise CertificateError(error.code, error.message, f"renew it: {renew}") from error
    if not public_keys_match(issued, load_private_key(key, "aggregator key")):
        raise CertificateError(
            "FX-PKI-016",
            f"{crt} does not belong to the key {key} (the key was replaced after signing)",
            f"renew it: {renew}",
        )
    names = {certificate_common_name(issued).lower()}
    try:
        san = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names |= {str(n).lower() for n in san.get_values_for_type(x509.DNSName)}
        names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        pass
    if fqdn.lower() not in names:
        raise CertificateError(
            "FX-TLS-003",
            f"{crt} is issued for {', '.join(sorted(names))}, not for {fqdn!r} (the plan's "
            "network.settings.agg_addr): collaborators would refuse it",
            f"set agg_addr to the name the certificate is for, or renew it: {renew}",
        )


def client_credentials(
    cert_dir: Path, name: str, require_client_auth: bool = True
) -> grpc.ChannelCredentials:
    """Credentials of collaborator ``name``."""
    chain = _read(
        chain_path(cert_dir),
        "certificate chain",
        "import your signed certificate package with `fx collaborator certify --import ZIP`",
    )
    if not require_client_auth:
        return grpc.ssl_channel_credentials(root_certificates=chain)
    paths = collaborator_paths(cert_dir, name)
    key = _read(
        paths.key,
        f"key of collaborator {name!r}",
        f"run `fx collaborator generate-cert-request -n {name}` on this node",
    )
    cert = _read(
        paths.crt,
        f"certificate of collaborator {name!r}",
        f"send col_{name}_to_agg_cert_request.zip to the aggregator, have it run "
        f"`fx collaborator certify --request-pkg ...`, then run `fx collaborator certify --import` "
        "with the zip it returns",
    )
    check_collaborator_certificate(paths.crt, cert, paths.key, chain, name)
    return grpc.ssl_channel_credentials(
        root_certificates=chain, private_key=key, certificate_chain=cert
    )


def check_collaborator_certificate(
    crt: Path, cert_pem: bytes, key: Path, chain_pem: bytes, name: str
) -> None:
    """Refuse to connect with files the aggregator would refuse, or that gRPC cannot even load
    (an empty or damaged key or certificate aborts gRPC's C core): the key must be a PEM key,
    the certificate ``name``'s, issued by this federation's CA, current, and for this key."""
    from fedrun.pki.identity import verify_certificate
    from fedrun.pki.keys import load_private_key, public_keys_match

    redo = (
        f"fx collaborator generate-cert-request -n {name} --force, have the aggregator sign it "
        f"(fx collaborator certify --request-pkg ...), then fx collaborator certify --import"
    )
    private_key = load_private_key(key, f"key of collaborator {name!r}")
    issued = verify_certificate(cert_pem, chain_pem, source=str(crt))
    common_name = certificate_common_name(issued)
    if common_name != name:
        raise CertificateError(
            "FX-TLS-002",
            f"{crt} was issued to {common_name!r}, not to {name!r}",
            f"start the collaborator as -n {common_name}, or get a certificate for {name!r}",
        )
    if not public_keys_match(issued, private_key):
        raise CertificateError(
            "FX-PKI-016",
            f"{crt} does not belong to the key {key}: the key was replaced after the "
            "certificate was signed",
            f"restore the key, or get a new certificate: {redo}",
        )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The verified client certificate's common name, or None without client TLS."""
    values = context.auth_context().get("x509_common_name")
    if not values:
        return None
    return values[0].decode("utf-8", "replace")
