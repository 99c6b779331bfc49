"""Network settings of a plan (``network.settings``), typed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrun import constants


@dataclass(frozen=True)
class Network:
    """How the aggregator and collaborators reach each other."""

    agg_addr: str
    agg_port: int
    listen_addr: str
    use_tls: bool = True
    require_client_auth: bool = True
    client_reconnect_interval: float = constants.RECONNECT_MAX_SECONDS
    client_reconnect_timeout: float = constants.RECONNECT_TIMEOUT_SECONDS
    cert_folder: Path = Path("cert")
    chunk_bytes: int = constants.CHUNK_BYTES
    long_poll_seconds: float = constants.LONG_POLL_SECONDS
    #: agg_port was "auto": derived from the plan hash, so it differs between different plans
    agg_port_auto: bool = False

    @classmethod
    def from_plan(cls, plan: Any) -> Network:
        s = plan.network
        return cls(
            agg_addr=plan.agg_addr,
            agg_port=plan.agg_port,
            listen_addr=plan.listen_addr,
            use_tls=bool(s.get("use_tls", True)),
            require_client_auth=bool(s.get("require_client_auth", True)),
            client_reconnect_interval=float(
                s.get("client_reconnect_interval") or constants.RECONNECT_MAX_SECONDS
            ),
            client_reconnect_timeout=float(
                s.get("client_reconnect_timeout") or constants.RECONNECT_TIMEOUT_SECONDS
            ),
            cert_folder=plan.resolve_path(s.get("cert_folder") or "cert"),
            chunk_bytes=int(s.get("chunk_bytes") or constants.CHUNK_BYTES),
            long_poll_seconds=float(s.get("long_poll_seconds") or constants.LONG_POLL_SECONDS),
            agg_port_auto=plan.agg_port_is_auto,
        )

    @property
    def unprotected(self) -> str | None:
        """What these settings leave unprotected, as the warning every node and `fx plan
        validate` print; None with mutual TLS."""
        if not self.use_tls:
            return (
                "TLS is OFF (network.settings.use_tls: false): traffic and identities are "
                "unprotected"
            )
        if not self.require_client_auth:
            return (
                "client certificates are not checked (network.settings.require_client_auth: "
                "false, or OpenFL's disable_client_auth: true): anyone who reaches the "
                "aggregator can claim to be any collaborator in cols.yaml; remove the setting "
                "for mutual TLS"
            )
        return None

    @property
    def port_hint(self) -> str:
        """What to check when nothing answers at the port (empty for a fixed port)."""
        if not self.agg_port_auto:
            return ""
        return (
            f"; agg_port is auto, so port {self.agg_port} comes from this node's plan hash: an "
            "aggregator running a different plan listens on another port (compare the hash "
            "`fx plan show` prints on both nodes, or set the same agg_port on both)"
        )

    @property
    def target(self) -> str:
        host = self.agg_addr
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.agg_port}"

    @property
    def bind_target(self) -> str:
        host = self.listen_addr
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.agg_port}"
