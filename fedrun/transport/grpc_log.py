"""Turn gRPC core's TLS handshake failures into fedrun log lines.

gRPC's C core refuses a bad certificate before any Python code runs and reports it only on the
process's standard error, in its own format ("I1207 20:13:49.368196 19827
ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: ... certificate has
expired"). This module routes file descriptor 2 through a pipe and echoes everything except
those lines: on the aggregator each refusal becomes one warning (at most one line per reason
every few seconds, so a flood of bad connections cannot flood the log); a collaborator's own
check names the problem and its fix (FX-TLS-0xx), so there they are only dropped.

Whatever is still in the pipe when the process ends would be lost with the reader thread, so
:func:`release_stderr` gives fd 2 back and waits for the echo; it runs at interpreter exit and
from ``exit_now`` (which skips the interpreter's exit handlers).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import time

log = logging.getLogger("fedrun.server")

_HANDSHAKE = re.compile(
    r"Handshake failed with error (\S+): (?:error:\S+:)?(?:SSL routines:)?(?:OPENSSL_internal:)?(.*)"
)
#: how a gRPC core log line starts (severity letter and date): a partial one is held until whole
_HANDSHAKE_START = re.compile(rb"^[IWEF]\d{0,4}( |$)")
_EXPLAIN = {
    "unable to get local issuer certificate": "client certificate not signed by this federation's CA",
    "certificate has expired": "client certificate has expired",
    "WRONG_VERSION_NUMBER": "client does not speak TLS (plaintext connection)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "client presented no certificate",
    # what the aggregator sees when the client gives up the handshake itself
    "Invalid certificate verification context": "the client broke off the handshake (does it "
    "trust this aggregator's certificate? its cert/cert_chain.crt may be another federation's)",
}
_pump: threading.Thread | None = None
_original_fd: int | None = None


def _explain(reason: str) -> str:
    for key, meaning in _EXPLAIN.items():
        if key in reason:
            return meaning
    return reason.strip()


def capture_handshake_failures(min_interval: float = 5.0, *, log_refusals: bool = True) -> None:
    """Start echoing fd 2 through a reader thread that turns gRPC's handshake failure lines
    into warnings (``log_refusals``) or drops them (idempotent)."""
    global _pump, _original_fd
    if _pump is not None:
        return
    try:
        read_fd, write_fd = os.pipe()
        original = os.dup(2)
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except OSError:
        return
    last: dict[str, float] = {}

    def pump() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            pending = b""
            while True:
                chunk = source.read(65536)
                if not chunk:
                    with contextlib.suppress(OSError):
                        os.write(original, pending)
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                shown = []
                for raw in lines:
                    match = _HANDSHAKE.search(raw.decode("utf-8", "replace"))
                    if not match:
                        shown.append(raw + b"\n")
                        continue
                    reason = _explain(match.group(2))
                    now = time.monotonic()
                    if log_refusals and now - last.get(reason, -1e9) >= min_interval:
                        last[reason] = now
                        log.warning("refused a TLS connection: %s", reason)
                if pending and not _HANDSHAKE_START.match(pending):
                    # a line still being written (a prompt, a progress bar): echo it now
                    shown.append(pending)
                    pending = b""
                with contextlib.suppress(OSError):
                    os.write(original, b"".join(shown))

    _original_fd = original
    _pump = threading.Thread(target=pump, name="fedrun-grpc-stderr", daemon=True)
    _pump.start()
    atexit.register(release_stderr)


def release_stderr(timeout: float = 2.0) -> None:
    """Point fd 2 at the real standard error again and wait (at most ``timeout`` seconds) until
    everything written before is echoed, so no last message or traceback is lost at exit."""
    global _pump, _original_fd
    pump, original = _pump, _original_fd
    if pump is None or original is None:
        return
    _pump = _original_fd = None
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()  # type: ignore[union-attr]
    with contextlib.suppress(OSError):
        # the pipe's last writer closes here; the reader drains it and sees end-of-file
        os.dup2(original, 2)
    pump.join(timeout)
    if not pump.is_alive():  # else a child still holds the pipe: leave the reader its target
        with contextlib.suppress(OSError):
            os.close(original)
