"""A tensor stream that stops moving is given up and tried again, not waited on forever."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import fake_aggregator
import grpc
import numpy as np

from fedrun.protocol import federation_pb2 as pb
from fedrun.transport.client import AggregatorClient


@contextlib.contextmanager
def serving(method: str, handler) -> Iterator[AggregatorClient]:
    """One method of the federation service on 127.0.0.1, and a client of it whose streams
    stall after 0.5 s."""
    with fake_aggregator.serving({method: handler}) as client:
        client.stall_seconds = 0.5
        yield client


class SilentOnce:
    """SubmitResults that reads the whole upload, then, the first time, never answers."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def submit(self, requests, context) -> pb.SubmitResultsResponse:
        self.calls += 1
        received = sum(len(r) for r in requests)
        assert received > 0
        if self.calls == 1:
            self.release.wait(20)
        return pb.SubmitResultsResponse(accepted=True, message="ok")


def test_an_upload_whose_answer_never_comes_is_sent_again(caplog):
    # Prepare: a server on 127.0.0.1 that swallows the first upload and says nothing
    handler = SilentOnce()
    method = grpc.stream_unary_rpc_method_handler(
        handler.submit, response_serializer=pb.SubmitResultsResponse.SerializeToString
    )

    # Execute
    with serving("SubmitResults", method) as client:
        try:
            with caplog.at_level(logging.WARNING, logger="fedrun"):
                sent = client.submit(
                    0, "train", 10, {"loss": 1.0}, {"w": np.ones(64, np.float32)}, ()
                )
        finally:
            handler.release.set()
    port = client.network.agg_port

    # Assert: sent twice, said once, the second answer counts
    assert sent >= 256
    assert handler.calls == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"the result of train (round 0) to 127.0.0.1:{port} stalled (nothing sent or answered for"
    )


class NeverFedOnce:
    """GetTensors that keeps the first download open and sends nothing; the second is an empty
    model."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def get_tensors(self, request, context):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(20)
        return iter(())


def test_a_download_never_fed_is_asked_again_with_one_line_said(caplog):
    # Prepare
    handler = NeverFedOnce()
    method = grpc.unary_stream_rpc_method_handler(handler.get_tensors)

    # Execute
    with serving("GetTensors", method) as client:
        client._retry("get tasks", lambda: 1)  # it has answered before
        try:
            with caplog.at_level(logging.WARNING, logger="fedrun"):
                model = client.get_global_model(3)
        finally:
            handler.release.set()
    port = client.network.agg_port

    # Assert: the stall is said once (not again as "unreachable"), and the download retried
    assert model == {}
    assert handler.calls == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"the model download of round 3 from 127.0.0.1:{port} stalled")


def test_an_upload_the_aggregator_ended_is_not_called_an_outage(caplog):
    # the aggregator drops an upload that brought nothing for too long by cancelling its call;
    # the collaborator said "aggregator unreachable (CANCELLED)"
    calls = []

    def submit(requests, context) -> pb.SubmitResultsResponse:
        calls.append(1)
        next(iter(requests))
        if len(calls) == 1:
            context.cancel()
        for _ in requests:
            pass
        return pb.SubmitResultsResponse(accepted=True, message="ok")

    def ping(request, context) -> pb.PingResponse:
        return pb.PingResponse(authorized=True)

    handlers = {
        "SubmitResults": grpc.stream_unary_rpc_method_handler(
            submit, response_serializer=pb.SubmitResultsResponse.SerializeToString
        ),
        "Ping": grpc.unary_unary_rpc_method_handler(
            ping,
            request_deserializer=pb.PingRequest.FromString,
            response_serializer=pb.PingResponse.SerializeToString,
        ),
    }
    with fake_aggregator.serving(handlers) as client:
        client.wait_for_aggregator()
        with caplog.at_level(logging.WARNING, logger="fedrun"):
            client.submit(0, "train", 10, {"loss": 1.0}, {"w": np.ones(64, np.float32)}, ())

    lines = [r.getMessage() for r in caplog.records]
    assert len(calls) == 2
    assert any("ended our send result" in line for line in lines), lines
    assert not any("unreachable" in line for line in lines), lines
