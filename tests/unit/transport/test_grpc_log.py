"""Standard error routed through the handshake-failure reader: refusals become log lines and
nothing written before the process ends is lost (each case runs in its own interpreter, since
the capture rewires file descriptor 2)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: big enough that the echo cannot keep up before the process ends unless exit waits for it
BIG = 2_000_000

HANDSHAKE_LINE = (
    "E1129 12:00:00.000000 1 ssl_transport_security.cc:1652] Handshake failed with error "
    "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
    "certificate has expired"
)


def run(body: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        """
        import logging, os, sys
        from fedrun.transport.grpc_log import capture_handshake_failures, release_stderr
        from fedrun.cli.common import exit_now
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="LOG %(message)s")
        capture_handshake_failures(min_interval=60)
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "ending",
    [
        "exit_now(3)",  # os._exit: the interpreter's exit handlers do not run
        "sys.exit(3)",
        "raise SystemExit(3)",
    ],
)
def test_everything_written_to_stderr_before_exit_arrives(ending):
    proc = run(
        f"""
        sys.stderr.write("x" * {BIG} + "\\nLAST MESSAGE\\n")
        {ending}
        """
    )
    assert proc.returncode == 3
    assert proc.stderr.endswith("LAST MESSAGE\n")
    assert proc.stderr.count("x") == BIG


def test_a_traceback_at_exit_is_not_lost():
    proc = run(
        """
        os.write(2, b"y" * 500000 + b"\\n")
        raise RuntimeError("the aggregator crashed")
        """
    )
    assert proc.returncode == 1
    assert "RuntimeError: the aggregator crashed" in proc.stderr


def test_handshake_refusal_is_logged_once_per_reason_instead_of_gRPC_s_own_line():
    proc = run(
        f"""
        for _ in range(3):
            os.write(2, {HANDSHAKE_LINE!r}.encode() + b"\\n")
        release_stderr()
        """
    )
    assert proc.returncode == 0
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("LOG refused a TLS")]
    assert warnings == ["LOG refused a TLS connection: client certificate has expired"]
    assert "Handshake failed" not in proc.stderr  # gRPC's C-core line, said better by the log


def test_release_gives_fd_2_back_and_capture_can_start_again():
    proc = run(
        """
        import os
        release_stderr()
        after = os.fstat(2)
        capture_handshake_failures()
        again = os.fstat(2)
        release_stderr()
        print("same" if os.fstat(2).st_ino == after.st_ino != again.st_ino else "different")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("same")


def test_a_collaborator_drops_gRPC_s_handshake_lines_and_keeps_every_other_line():
    # the collaborator's own check explains a failed handshake (FX-TLS-0xx); gRPC's raw line
    # before it only confused ("SSL_ERROR_SSL: error:1000007d:SSL routines...")
    proc = run(
        f"""
        release_stderr()
        capture_handshake_failures(log_refusals=False)
        os.write(2, b"before\\n" + {HANDSHAKE_LINE!r}.encode() + b"\\nafter\\npartial")
        release_stderr()
        """
    )
    assert proc.returncode == 0
    assert proc.stderr == "before\nafter\npartial"
    assert "LOG" not in proc.stdout
