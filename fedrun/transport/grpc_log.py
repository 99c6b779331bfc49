"""Turn gRPC core's TLS handshake failures into fedrun log lines on the aggregator.

gRPC's C core refuses a bad client certificate before any Python code runs and reports it only
on the process's standard error ("Handshake failed with error ... certificate has expired"). This
module routes file descriptor 2 through a pipe, echoes everything unchanged, and logs each
handshake refusal as one warning (at most one line per reason every few seconds, so a flood of
bad connections cannot flood the log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time

log = logging.getLogger("fedrun.server")

_HANDSHAKE = re.compile(
    r"Handshake failed with error (\S+): (?:error:\S+:)?(?:SSL routines:)?(?:OPENSSL_internal:)?(.*)"
)
_EXPLAIN = {
    "unable to get local issuer certificate": "client certificate not signed by this federation's CA",
    "certificate has expired": "client certificate has expired",
    "WRONG_VERSION_NUMBER": "client does not speak TLS (plaintext connection)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "client presented no certificate",
}
_started = False


def _explain(reason: str) -> str:
    for key, meaning in _EXPLAIN.items():
        if key in reason:
            return meaning
    return reason.strip()


def capture_handshake_failures(min_interval: float = 5.0) -> None:
    """Start echoing fd 2 through a reader thread that logs TLS refusals (idempotent)."""
    global _started
    if _started:
        return
    try:
        read_fd, write_fd = os.pipe()
        original = os.dup(2)
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except OSError:
        return
    _started = True
    last: dict[str, float] = {}

    def pump() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            pending = b""
            while True:
                chunk = source.read(65536)
                if not chunk:
                    return
                with contextlib.suppress(OSError):
                    os.write(original, chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    match = _HANDSHAKE.search(raw.decode("utf-8", "replace"))
                    if not match:
                        continue
                    reason = _explain(match.group(2))
                    now = time.monotonic()
                    if now - last.get(reason, -1e9) >= min_interval:
                        last[reason] = now
                        log.warning("refused a TLS connection: %s", reason)

    threading.Thread(target=pump, name="fedrun-grpc-stderr", daemon=True).start()
