"""TLS credentials for the aggregator and collaborators, and the peer identity check.

Mutual TLS is the default: the aggregator presents ``cert/server/agg_<fqdn>.crt``, every
collaborator presents ``cert/client/col_<name>.crt``, and both trust only
``cert/cert_chain.crt`` (the federation's CA). A missing file is reported with the command that
creates it.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from fedrun.errors import CertificateError
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
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=chain, require_client_auth=require_client_auth
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
    return grpc.ssl_channel_credentials(
        root_certificates=chain, private_key=key, certificate_chain=cert
    )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The verified client certificate's common name, or None without client TLS."""
    values = context.auth_context().get("x509_common_name")
    if not values:
        return None
    return values[0].decode("utf-8", "replace")
