"""A model download that breaks off resumes where it stopped: the tensors already received are
kept, and the aggregator is asked only for the rest."""

from __future__ import annotations

import logging
import time

import fake_aggregator
import grpc
import numpy as np
import pytest

from fedrun.errors import ProtocolError
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import ExpectedModel, batch_frames, encode_tensor_wire
from fedrun.transport import transfer_progress

MODEL = {
    "a": np.arange(1000, dtype=np.float32),
    "b": np.full((20, 30), 2.5, dtype=np.float32),
    "c": np.arange(7, dtype=np.int64),
}


class BreaksOnce:
    """GetTensors that, the first time, sends the model's first tensor and then fails as a lost
    link does; later calls send what the request does not hold (or, with ``resend``, all)."""

    def __init__(self, resend: bool = False, refusals: int = 0) -> None:
        self.requests: list[pb.GetTensorsRequest] = []
        self.resend = resend
        self.refusals = refusals  # calls after the break that fail before sending anything

    def get_tensors(self, request: pb.GetTensorsRequest, context):
        self.requests.append(request)
        if 1 < len(self.requests) <= 1 + self.refusals:
            context.abort(grpc.StatusCode.UNAVAILABLE, "still down")
        held = set() if self.resend else set(request.held)
        names = [n for n in MODEL if n not in held]
        if len(self.requests) == 1:
            names = names[:1]
        frames = (f for n in names for f in encode_tensor_wire(n, MODEL[n], chunk_bytes=1 << 20))
        yield from batch_frames(frames, 1 << 20)
        if len(self.requests) == 1:
            time.sleep(0.3)  # the first tensor reaches the client before the break
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")


def _methods(handler: BreaksOnce) -> dict[str, grpc.RpcMethodHandler]:
    return {
        "GetTensors": grpc.unary_stream_rpc_method_handler(
            handler.get_tensors,
            request_deserializer=pb.GetTensorsRequest.FromString,
            response_serializer=lambda message: message,
        )
    }


def test_a_broken_download_resumes_with_the_tensors_already_received(caplog):
    # Prepare: after the break, three tries fail before any data flows again
    caplog.set_level(logging.INFO, logger="fedrun")
    handler = BreaksOnce(refusals=3)

    # Execute
    with fake_aggregator.serving(_methods(handler)) as client:
        got = client.get_global_model(0, ExpectedModel.of(MODEL))

    # Assert: the second request held the first tensor, and the model is whole
    assert [list(r.held) for r in handler.requests] == [[], ["a"], ["a"], ["a"], ["a"]]
    assert sorted(got) == sorted(MODEL)
    for name, array in MODEL.items():
        np.testing.assert_array_equal(got[name], array)
    assert client.bytes_received == sum(a.nbytes for a in MODEL.values())
    said = [r for r in caplog.records if "resumed the model download" in r.getMessage()]
    assert len(said) == 1  # when data flowed again, not at every try
    assert "round 0: 1 tensors (3.9 KiB) were already here" in said[0].getMessage()


def test_a_resumed_download_that_sends_a_held_tensor_again_is_refused():
    handler = BreaksOnce(resend=True)

    with (
        fake_aggregator.serving(_methods(handler)) as client,
        pytest.raises(ProtocolError) as caught,
    ):
        client.get_global_model(0, ExpectedModel.of(MODEL))

    assert caught.value.code == "FX-WIRE-023"


def test_a_model_download_says_how_far_it_got(monkeypatch, caplog):
    # a line every PROGRESS_LINE_SECONDS (here: every message), with the model's size
    monkeypatch.setattr(transfer_progress, "PROGRESS_LINE_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="fedrun")
    with fake_aggregator.serving(_methods(BreaksOnce())) as client:
        client.get_global_model(0, ExpectedModel.of(MODEL))

    lines = [r.getMessage() for r in caplog.records if "model download:" in r.getMessage()]
    assert lines and all(line.startswith("round 0: model download: ") for line in lines)
    assert all(" of 6.3 KiB (" in line for line in lines), lines
    assert lines[-1].startswith("round 0: model download: 6.3 KiB of 6.3 KiB ("), lines
