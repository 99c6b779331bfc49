"""The transport's own cost of a collaborator-round: a bare gRPC server doing the calls and moving
the bytes a fedrun collaborator-round needs, and nothing else. Measured in the same run as
``many_collaborators``, it is the floor that fedrun's aggregator CPU per collaborator-round is
compared with ("a few milliseconds beyond the bytes it must move").

One collaborator-round of the no-op plan is five calls: ask for tasks (unary), fetch the model
(server stream, one message per tensor), and send three results (client streams): the global
model's validation (a few bytes), the trained model (one message per tensor) and the local model's
validation. Asks for tasks are held until all ``n`` collaborators asked, as an aggregator holds
its long polls until the next round opens. The server runs in this process with Python gRPC's
thread-pool server and mutual TLS (certificates from :func:`benchmarks.common.make_tls_files`);
``n`` clients, each with its own connection, run in ``min(n, 16)`` client processes. Handlers
only touch the bytes (a length sum), so the server's CPU is gRPC, TLS, the kernel and the Python
call dispatch.

The start-up (connections, TLS handshakes) is taken out by running once with one round and once
with ``1 + rounds`` rounds: the difference divided by ``n * rounds`` is the steady cost.

Usage: ``python -m benchmarks.grpc_floor --collaborators 8,64 --model-bytes 1MB``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

from benchmarks import common

SERVICE = "bench.Floor"
SMALL = b"m" * 100
OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


def _identity(data: bytes) -> bytes:
    return data


def _handlers(model: list[bytes], n: int) -> Any:
    import grpc

    arrived = threading.Condition()
    state = {"asked": 0, "round": 0}

    def tasks(request: bytes, context: Any) -> bytes:
        # a synchronous round: every ask is held until all n collaborators asked (as an
        # aggregator holds a long poll until the round opens), then all are answered
        with arrived:
            mine = state["round"]
            state["asked"] += 1
            if state["asked"] == n:
                state["asked"] = 0
                state["round"] += 1
                arrived.notify_all()
            while state["round"] == mine:
                arrived.wait()
        return b"round 1: aggregated_model_validation, train, locally_tuned_model_validation"

    def tensors(request: bytes, context: Any) -> Any:
        yield from model

    def submit(request_iterator: Any, context: Any) -> bytes:
        received = 0
        for message in request_iterator:
            received += len(message)
        return str(received).encode()

    kinds = {
        "Tasks": grpc.unary_unary_rpc_method_handler(tasks, _identity, _identity),
        "Tensors": grpc.unary_stream_rpc_method_handler(tensors, _identity, _identity),
        "Submit": grpc.stream_unary_rpc_method_handler(submit, _identity, _identity),
    }
    return grpc.method_handlers_generic_handler(SERVICE, kinds)


def _client(
    port: int, connections: int, rounds: int, tensor_bytes: int, tensor_count: int, tls: Path
) -> None:
    import grpc

    credentials = grpc.ssl_channel_credentials(
        (tls / "ca.crt").read_bytes(),
        (tls / "server.key").read_bytes(),
        (tls / "server.crt").read_bytes(),
    )
    trained = [b"t" * tensor_bytes for _ in range(tensor_count)]
    failures: list[BaseException] = []

    def collaborator() -> None:
        # a local subchannel pool: every collaborator has its own connection, as separate
        # processes would
        options = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        try:
            with grpc.secure_channel(f"localhost:{port}", credentials, options) as channel:
                ask = channel.unary_unary(f"/{SERVICE}/Tasks")
                fetch = channel.unary_stream(f"/{SERVICE}/Tensors")
                send = channel.stream_unary(f"/{SERVICE}/Submit")
                for _ in range(rounds):
                    ask(b"tasks?", timeout=120)
                    received = sum(len(m) for m in fetch(b"model", timeout=120))
                    assert received == tensor_bytes * tensor_count
                    send(iter([SMALL]), timeout=120)
                    send(iter(trained), timeout=120)
                    send(iter([SMALL]), timeout=120)
        except BaseException as exc:  # reported by the exit code
            failures.append(exc)

    threads = [threading.Thread(target=collaborator) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"grpc_floor client failed: {failures[0]!r}")


def _serve_once(
    n: int, rounds: int, model_bytes: int, tensor_count: int, tls: Path
) -> dict[str, float]:
    import grpc

    tensor_bytes = max(1, model_bytes // tensor_count)
    model = [b"g" * tensor_bytes for _ in range(tensor_count)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * n + 8), options=OPTIONS)
    server.add_generic_rpc_handlers((_handlers(model, n),))
    credentials = grpc.ssl_server_credentials(
        [((tls / "server.key").read_bytes(), (tls / "server.crt").read_bytes())],
        root_certificates=(tls / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    procs = min(n, 16)
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.grpc_floor",
                "client",
                str(port),
                str(share),
                str(rounds),
                str(tensor_bytes),
                str(tensor_count),
                str(tls),
            ],
            cwd=Path(__file__).resolve().parent.parent,
        )
        for share in shares
    ]
    codes = [c.wait() for c in clients]
    cpu1, t1 = time.process_time(), time.perf_counter()
    server.stop(None)
    if any(codes):
        raise RuntimeError(f"grpc_floor clients exited with {codes}")
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0}


def collaborator_round_cpu(
    n: int, model_bytes: int, tensor_count: int = 4, rounds: int = 4
) -> dict[str, Any]:
    """Server CPU per collaborator-round in steady state (ms), with the runs it came from."""
    with tempfile.TemporaryDirectory(prefix="grpc-floor-") as tmp:
        tls = Path(tmp)
        common.make_tls_files(tls, hosts=("localhost", "127.0.0.1"))
        one = _serve_once(n, 1, model_bytes, tensor_count, tls)
        more = _serve_once(n, 1 + rounds, model_bytes, tensor_count, tls)
    steady_ms = 1000 * (more["cpu_s"] - one["cpu_s"]) / (n * rounds)
    return {
        "collaborators": n,
        "model_bytes": model_bytes,
        "tensor_count": tensor_count,
        "rounds_compared": [1, 1 + rounds],
        "runs": [one, more],
        "cpu_ms_per_collaborator_round": steady_ms,
        "first_round_cpu_ms_per_collaborator": 1000 * one["cpu_s"] / n,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "client":
        port, share, rounds, tensor_bytes, tensor_count = (int(a) for a in argv[1:6])
        _client(port, share, rounds, tensor_bytes, tensor_count, Path(argv[6]))
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--collaborators", default="8,64")
    ap.add_argument("--model-bytes", default="1MB")
    ap.add_argument("--tensor-count", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    from benchmarks import limits

    size = limits.parse_size(args.model_bytes)
    out = [
        collaborator_round_cpu(int(n), size, args.tensor_count, args.rounds)
        for n in args.collaborators.split(",")
    ]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
