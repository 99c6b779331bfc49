"""After a long outage a collaborator finds the aggregator again within
``client_reconnect_interval`` of its return: gRPC's own reconnection backoff, which grows to
120 s by default (every call failing at once meanwhile), is held to that interval."""

from __future__ import annotations

import contextlib
import time
from concurrent import futures

import grpc
from ports import free_port

from fedrun.transport.client import AggregatorClient
from fedrun.transport.network import Network

OUTAGE_SECONDS = 30.0  # long enough for gRPC's default backoff to reach 10-17 s


def _serve(port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("probe.Probe", {"Echo": echo}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def test_the_collaborator_channel_reconnects_within_the_interval_after_a_long_outage() -> None:
    port = free_port()
    network = Network(
        agg_addr="127.0.0.1",
        agg_port=port,
        listen_addr="127.0.0.1",
        use_tls=False,
        client_reconnect_interval=0.5,
    )
    client = AggregatorClient(network, "one", "h" * 64, "fed", None)
    echo = client.channel.unary_unary("/probe.Probe/Echo")
    server = _serve(port)
    try:
        assert echo(b"x", timeout=5) == b"x"
        server.stop(0).wait()

        # the collaborator keeps calling through the outage, as its retry loop does
        down = time.monotonic()
        while time.monotonic() - down < OUTAGE_SECONDS:
            with contextlib.suppress(grpc.RpcError):
                echo(b"x", timeout=1)
            time.sleep(0.25)
        server = _serve(port)
        back = time.monotonic()
        while True:
            try:
                echo(b"x", timeout=1)
                break
            except grpc.RpcError:
                assert time.monotonic() - back < 30, "never reconnected"
                time.sleep(0.1)
        latency = time.monotonic() - back
    finally:
        client.close()
        server.stop(0).wait()

    assert latency < 3.0, f"reconnected {latency:.1f} s after the aggregator came back"
