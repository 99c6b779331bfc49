"""What this machine allows, measured in the same run as the federations it bounds.

* :func:`tls_copy`: ``streams`` sender processes each push ``nbytes`` over a mutual-TLS socket on
  127.0.0.1 (Python's ``ssl`` module, certificates made with ``cryptography``) to one receiver
  process that serves every stream in its own thread, as an aggregator serves its collaborators.
  Chunks of ``chunk`` bytes are sent from one preallocated buffer and received into another, so the
  figure is the cost of TLS and the kernel's loopback, nothing else.
* :func:`weighted_sum`: the weighted average of ``n`` float32 arrays of ``nbytes`` each, single
  thread, cache-blocked and in place (``np.multiply(..., out=)``, ``np.add(..., out=)``): the
  aggregation work a round needs, at this machine's memory bandwidth. When ``n`` arrays do not fit
  ``memory_budget`` the same arrays are reused (the traffic is the same: none of them fits a cache).

Usage: ``python -m benchmarks.limits --bytes 100MB --streams 2``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

ACK = b"k"


def parse_size(text: str) -> int:
    """'10MB' -> 10_000_000, '1GiB' -> 2**30, '4GB' -> 4_000_000_000, '123' -> 123."""
    t = text.strip().upper().replace(" ", "")
    units = {
        "KIB": 1 << 10,
        "MIB": 1 << 20,
        "GIB": 1 << 30,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "B": 1,
    }
    for suffix, mult in units.items():
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def human(nbytes: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= div:
            return f"{nbytes / div:g} {unit}"
    return f"{nbytes:g} B"


def _server_ctx(files: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files["cert"], files["key"])
    ctx.load_verify_locations(files["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    return ctx


def _client_ctx(files: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(files["ca"])
    ctx.load_cert_chain(files["cert"], files["key"])  # the same identity is fine for a copy test
    return ctx


def _receiver(
    files: dict[str, Path], streams: int, nbytes: int, chunk: int, port_q: Any, out_q: Any
) -> None:
    ctx = _server_ctx(files)
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        lsock.settimeout(120)
        port_q.put(lsock.getsockname()[1])
        conns = []
        for _ in range(streams):
            raw, _ = lsock.accept()
            conns.append(ctx.wrap_socket(raw, server_side=True))
        times: list[float] = [0.0] * streams

        def serve(i: int, conn: ssl.SSLSocket) -> None:
            buf = bytearray(chunk)
            view = memoryview(buf)
            got = 0
            t0 = time.perf_counter()
            while got < nbytes:
                n = conn.recv_into(view, min(chunk, nbytes - got))
                if n == 0:
                    break
                got += n
            times[i] = time.perf_counter() - t0
            conn.sendall(ACK)
            conn.close()

        threads = [threading.Thread(target=serve, args=(i, c)) for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out_q.put(times)


def _sender(
    files: dict[str, Path], port: int, nbytes: int, chunk: int, start: Any, out_q: Any
) -> None:
    ctx = _client_ctx(files)
    raw = socket.create_connection(("127.0.0.1", port), timeout=120)
    conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    conn.do_handshake()
    payload = memoryview(
        bytearray(os.urandom(min(chunk, 1 << 16)) * (chunk // min(chunk, 1 << 16) + 1))[:chunk]
    )
    start.wait(120)
    t0 = time.perf_counter()
    sent = 0
    while sent < nbytes:
        n = min(chunk, nbytes - sent)
        conn.sendall(payload[:n])
        sent += n
    conn.recv(1)
    out_q.put(time.perf_counter() - t0)
    conn.close()


def tls_copy(
    nbytes: int, streams: int = 1, chunk: int = 4 << 20, timeout: float = 600, repeats: int = 1
) -> dict[str, Any]:
    """Per-stream and total throughput of ``streams`` concurrent mutual-TLS copies of ``nbytes``,
    the fastest of ``repeats`` runs (a copy of a few MB lasts a few ms, so one late scheduling of
    one sender can halve its figure; the limit is what the machine allows, so the best run counts).
    """
    runs = [_tls_copy_once(nbytes, streams, chunk, timeout) for _ in range(max(1, repeats))]
    best = min(runs, key=lambda run: max(run["seconds_per_stream"]))
    return {
        **best,
        "repeats": len(runs),
        "per_stream_gbps_all_runs": [run["per_stream_gbps"] for run in runs],
    }


def _tls_copy_once(nbytes: int, streams: int, chunk: int, timeout: float) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        files = common.make_tls_files(Path(tmp))
        port_q, out_q, times_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
        recv = ctx.Process(
            target=_receiver, args=(files, streams, nbytes, chunk, port_q, out_q), daemon=True
        )
        recv.start()
        port = port_q.get(timeout=60)
        start = ctx.Event()
        senders = [
            ctx.Process(
                target=_sender, args=(files, port, nbytes, chunk, start, times_q), daemon=True
            )
            for _ in range(streams)
        ]
        for s in senders:
            s.start()
        time.sleep(0.2)  # let every handshake finish before the clock starts
        t0 = time.perf_counter()
        start.set()
        try:
            sender_times = [times_q.get(timeout=timeout) for _ in senders]
            total = time.perf_counter() - t0
            out_q.get(timeout=60)  # the receiver got every byte
        finally:
            for p in [*senders, recv]:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
    per_stream = [nbytes / t / 1e9 for t in sender_times]
    return {
        "bytes": nbytes,
        "streams": streams,
        "chunk": chunk,
        "seconds_per_stream": sender_times,
        "total_s": total,
        "per_stream_gbps": min(per_stream),
        "total_gbps": streams * nbytes / total / 1e9,
        "tls": ssl.OPENSSL_VERSION,
    }


def weighted_sum(
    n: int, nbytes: int, memory_budget: int = 6 << 30, block: int = 1 << 18
) -> dict[str, Any]:
    """Seconds for ``out = sum(w_i * x_i)`` over ``n`` float32 arrays of ``nbytes``, one thread."""
    elements = max(1, nbytes // 4)
    k = max(1, min(n, memory_budget // max(1, nbytes) - 1))
    arrays = [np.full(elements, float(i + 1), np.float32) for i in range(k)]
    out = np.zeros(elements, np.float32)
    out.fill(
        1.0
    )  # touch every page before the clock starts (first-touch faults are not aggregation)
    tmp = np.ones(min(block, elements), np.float32)
    weights = np.full(n, 1.0 / n, np.float32)
    t0 = time.perf_counter()
    for a in range(0, elements, block):
        b = min(elements, a + block)
        o = out[a:b]
        t = tmp[: b - a]
        np.multiply(arrays[0][a:b], weights[0], out=o)
        for i in range(1, n):
            np.multiply(arrays[i % k][a:b], weights[i], out=t)
            np.add(o, t, out=o)
    seconds = time.perf_counter() - t0
    expected = sum((i % k + 1) * float(weights[i]) for i in range(n))
    ok = bool(abs(float(out[0]) - expected) < 1e-3 * max(1.0, expected))
    del arrays
    return {
        "n": n,
        "bytes": nbytes,
        "distinct_arrays": k,
        "seconds": seconds,
        "effective_gbps": (n + 1) * nbytes / seconds / 1e9,
        "correct": ok,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bytes", default="100MB")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--arrays", type=int, default=2)
    args = ap.parse_args(argv)
    size = parse_size(args.bytes)
    res = {
        "tls_copy": tls_copy(size, args.streams),
        "weighted_sum": weighted_sum(args.arrays, size),
    }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
