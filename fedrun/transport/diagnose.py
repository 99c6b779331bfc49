"""Say exactly why a collaborator cannot talk to its aggregator.

gRPC reports a refused TLS handshake to the client only as "Socket closed". This module finds
the real reason, in the order a person would check: is anything listening; is this node's own
certificate valid (present, signed by the federation CA in cert/cert_chain.crt, not expired, issued
to this name); does the aggregator's certificate check out; and what the aggregator answered to
our certificate (unknown CA, expired, none) or whether it speaks TLS at all.
"""

from __future__ import annotations

import datetime
import socket
import ssl

from fedrun.errors import CertificateError, ConnectionFailure, FedrunError
from fedrun.transport.network import Network

PROBE_TIMEOUT_SECONDS = 5.0

#: what the aggregator's TLS alert means for this collaborator
_ALERTS = {
    "unknown_ca": "the aggregator does not trust the CA that signed this node's certificate "
    "(it was signed by another federation's CA)",
    "unknown ca": "the aggregator does not trust the CA that signed this node's certificate "
    "(it was signed by another federation's CA)",
    "certificate_expired": "the aggregator refused this node's certificate as expired",
    "certificate expired": "the aggregator refused this node's certificate as expired",
    "certificate_required": "the aggregator requires a client certificate and got none",
    "certificate required": "the aggregator requires a client certificate and got none",
    "bad_certificate": "the aggregator refused this node's certificate",
    "bad certificate": "the aggregator refused this node's certificate",
    "decrypt_error": "the aggregator could not verify this node's certificate signature",
}


def _host(network: Network) -> str:
    return network.agg_addr.strip("[]")


def check_reachable(network: Network) -> None:
    """Raise ConnectionFailure when nothing accepts TCP connections at the aggregator address."""
    try:
        with socket.create_connection(
            (_host(network), network.agg_port), timeout=PROBE_TIMEOUT_SECONDS
        ):
            return
    except OSError as exc:
        raise ConnectionFailure(
            "FX-NET-013",
            f"nothing answers at {network.target} ({exc.strerror or exc})",
            "start the aggregator, or fix network.settings.agg_addr/agg_port in plan/plan.yaml "
            f"(and any firewall between the nodes){network.port_hint}",
        ) from exc


def check_own_certificate(network: Network, name: str) -> None:
    """This node's certificate exists, chains to the local CA chain, is current and is ``name``'s."""
    from fedrun.pki import collaborator_paths
    from fedrun.pki.layout import chain_path
    from fedrun.transport.tls import check_collaborator_certificate

    chain_file = chain_path(network.cert_folder)
    paths = collaborator_paths(network.cert_folder, name)
    for path, what in (
        (chain_file, "certificate chain"),
        (paths.crt, "certificate"),
        (paths.key, "key"),
    ):
        if not path.is_file():
            raise CertificateError(
                "FX-TLS-001",
                f"this node's {what} {path} does not exist",
                f"import your signed package with `fx collaborator certify --import "
                f"agg_to_col_{name}_signed_cert.zip`",
            )
    check_collaborator_certificate(
        paths.crt, paths.crt.read_bytes(), paths.key, chain_file.read_bytes(), name
    )


def probe_tls(network: Network, name: str | None) -> None:
    """One real TLS handshake (with our client certificate) and a read; raise on refusal."""
    from fedrun.pki import collaborator_paths
    from fedrun.pki.layout import chain_path

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    chain_file = chain_path(network.cert_folder)
    if chain_file.is_file():
        context.load_verify_locations(cafile=str(chain_file))
    if name is not None and network.require_client_auth:
        paths = collaborator_paths(network.cert_folder, name)
        if paths.crt.is_file() and paths.key.is_file():
            try:
                context.load_cert_chain(str(paths.crt), str(paths.key))
            except ssl.SSLError as exc:  # e.g. KEY_VALUES_MISMATCH: a key made after signing
                raise CertificateError(
                    "FX-PKI-016",
                    f"{paths.crt} does not belong to the key {paths.key} ({exc.reason or exc}): "
                    "the key was replaced after the certificate was signed",
                    "have the CA sign this node's current request (fx collaborator "
                    "generate-cert-request --force, then certify and import), or restore the key",
                ) from exc
    host = _host(network)
    try:
        with (
            socket.create_connection(
                (host, network.agg_port), timeout=PROBE_TIMEOUT_SECONDS
            ) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.settimeout(1.0)
            try:
                tls.recv(1)  # TLS 1.3 delivers the verdict on our certificate here
            except TimeoutError:
                return
            except ssl.SSLEOFError:
                return  # closed without a verdict (an alert): the network's doing, not ours
            except ssl.SSLError as exc:
                raise _refused(exc, network) from exc
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            raise CertificateError(
                "FX-TLS-003",
                f"the aggregator's certificate is not issued for {host!r}: {reason}",
                "set network.settings.agg_addr to the name the aggregator's certificate was issued "
                "for (the --fqdn of `fx aggregator certify`)",
            ) from exc
        if "expired" in reason.lower() or "not yet valid" in reason.lower():
            problem = f"is out of its validity period: {reason}"
            fix = (
                "on the aggregator: renew its certificate (fx aggregator generate-cert-request "
                "--force, fx aggregator certify) and restart it; check both machines' clocks"
            )
        else:
            problem = f"does not check out against {chain_file}: {reason}"
            fix = "use the cert_chain.crt of this federation (from the signed package of the CA)"
        raise CertificateError(
            "FX-TLS-004", f"the aggregator's certificate {problem}", fix
        ) from exc
    except ssl.SSLEOFError:
        return  # the connection broke off mid-handshake without an alert: connectivity
    except ssl.SSLError as exc:
        raise _refused(exc, network) from exc
    except OSError:
        return  # not a TLS problem; the caller reports connectivity


def _refused(exc: ssl.SSLError, network: Network) -> FedrunError:
    text = f"{exc.reason or ''} {exc}".lower()
    for key, meaning in _ALERTS.items():
        if key in text:
            return CertificateError(
                "FX-TLS-005",
                f"{meaning} ({network.target} sent TLS alert {exc.reason})",
                "get this node's certificate signed by the federation's CA: "
                "`fx collaborator generate-cert-request`, send the zip to the aggregator, then "
                "`fx collaborator certify --import` the package it returns",
            )
    return CertificateError(
        "FX-TLS-006",
        f"the TLS handshake with {network.target} failed: {exc.reason or exc}",
        "check that both nodes use this federation's certificates and cert_chain.crt",
    )


def probe_speaks_tls(network: Network) -> bool:
    """True when the aggregator completes a TLS handshake (for a plaintext client's diagnosis)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(
                (_host(network), network.agg_port), timeout=PROBE_TIMEOUT_SECONDS
            ) as raw,
            context.wrap_socket(raw, server_hostname=_host(network)),
        ):
            return True
    except ssl.SSLError as exc:
        # a server that demands our certificate still spoke TLS to us
        return "alert" in str(exc).lower() or "certificate" in str(exc).lower()
    except OSError:
        return False


def diagnose(network: Network, name: str) -> None:
    """Raise the most precise error that explains a failed connection; return if none found."""
    check_reachable(network)
    if not network.use_tls:
        if probe_speaks_tls(network):
            raise CertificateError(
                "FX-TLS-007",
                f"the aggregator at {network.target} requires TLS, but this node's plan says "
                "network.settings.use_tls: false",
                "use the aggregator's plan.yaml unchanged on every node",
            )
        return
    if network.require_client_auth:
        check_own_certificate(network, name)
    probe_tls(network, name)


def expiry_warning(network: Network, name: str, days: int = 14) -> str | None:
    """A warning text when this node's certificate expires within ``days``."""
    from fedrun.pki import collaborator_paths, load_certificate

    path = collaborator_paths(network.cert_folder, name).crt
    if not path.is_file():
        return None
    cert = load_certificate(path, "certificate", "")
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    if left < datetime.timedelta(days=days):
        return f"this node's certificate {path} expires in {left.days} days ({cert.not_valid_after_utc:%Y-%m-%d})"
    return None


__all__ = ["check_own_certificate", "check_reachable", "diagnose", "expiry_warning", "probe_tls"]
