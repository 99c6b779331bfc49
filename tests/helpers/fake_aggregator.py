"""Some methods of the federation service, as a test writes them, served over gRPC on
127.0.0.1, and an AggregatorClient of them: for the client's unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from concurrent import futures
from typing import Any

import grpc

from fedrun.transport.client import AggregatorClient
from fedrun.transport.network import Network
from fedrun.transport.server import SERVICE


@contextlib.contextmanager
def serving(
    methods: Mapping[str, grpc.RpcMethodHandler], **network: Any
) -> Iterator[AggregatorClient]:
    """Serve ``methods`` (name -> handler) and yield a client of them that retries at once;
    ``network`` overrides :class:`Network` settings (``chunk_bytes``...). Both are stopped
    after."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, dict(methods))])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    settings = Network("127.0.0.1", port, "127.0.0.1", use_tls=False, **network)
    client = AggregatorClient(settings, "one", "h" * 64, "fed", None, sleep=lambda s: None)
    try:
        yield client
    finally:
        client.close()
        server.stop(None)
