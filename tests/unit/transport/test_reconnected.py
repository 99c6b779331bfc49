"""After an outage the collaborator says the aggregator is back when it connects again, not when
the retried call completes (a transfer that may take minutes)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from ports import free_port

from fedrun.protocol import federation_pb2 as pb
from fedrun.transport.client import AggregatorClient
from fedrun.transport.network import Network
from fedrun.transport.server import SERVICE


def _server(port: int, answer_after: float) -> grpc.Server:
    """A server on 127.0.0.1:port whose GetTasks answers after ``answer_after`` seconds."""

    def get_tasks(request, context) -> pb.GetTasksResponse:
        time.sleep(answer_after)
        return pb.GetTasksResponse(round=0, tasks=["train"])

    method = grpc.unary_unary_rpc_method_handler(
        get_tasks,
        request_deserializer=pb.GetTasksRequest.FromString,
        response_serializer=pb.GetTasksResponse.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"GetTasks": method})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def _reconnected(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "reconnected to the aggregator" in r.getMessage()]


def test_reconnected_is_said_when_the_aggregator_is_back_not_when_the_call_ends(caplog):
    # Prepare: a client that got an answer once, then its aggregator goes away
    caplog.set_level(logging.INFO, logger="fedrun")
    port = free_port()
    network = Network(
        "127.0.0.1",
        port,
        "127.0.0.1",
        use_tls=False,
        client_reconnect_interval=0.2,
        client_reconnect_timeout=30,
    )
    client = AggregatorClient(network, "one", "h" * 64, "fed", None)
    first = _server(port, answer_after=0)
    second: grpc.Server | None = None
    try:
        client.get_tasks()
        first.stop(None)
        done: list[float] = []
        retried = threading.Thread(target=lambda: done.append(client.get_tasks() and time.time()))
        retried.start()
        time.sleep(1.0)  # the retried call fails against nothing, and waits

        # Execute: the aggregator is back, and answers the retried call 3 s later
        second = _server(port, answer_after=3.0)
        retried.join(30)

        # Assert: said once, while the call was still waiting for its answer
        [said] = _reconnected(caplog)
        assert done, "the retried call did not complete"
        assert done[0] - said.created > 2.0
        assert any("unreachable" in r.getMessage() for r in caplog.records)
    finally:
        client.close()
        first.stop(None)
        if second is not None:
            second.stop(None)


def test_no_reconnected_line_without_an_outage(caplog):
    caplog.set_level(logging.INFO, logger="fedrun")
    port = free_port()
    network = Network("127.0.0.1", port, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "h" * 64, "fed", None)
    server = _server(port, answer_after=0)
    try:
        client.get_tasks()
        client.get_tasks()
    finally:
        client.close()
        server.stop(None)

    assert _reconnected(caplog) == []
