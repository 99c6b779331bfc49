"""Over real sockets: an upload that a broken connection cuts off resumes with the tensors the
aggregator did not get whole, and the round's model is the one an unbroken upload gives."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import fake_aggregator
import grpc
import numpy as np
import pytest
from cutting_proxy import CuttingProxy

from fedrun.aggregation import WeightedAverage
from fedrun.federation.aggregator import Aggregator
from fedrun.federation.assigner import RandomGroupedAssigner
from fedrun.federation.tasks import TaskSpec
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import expand_frames, parse_frame
from fedrun.transport import transfer_progress
from fedrun.transport.client import AggregatorClient
from fedrun.transport.network import Network
from fedrun.transport.server import AggregatorServer

TASKS = {"train": TaskSpec("train", "train_task", {"epochs": 1})}
MODEL = {f"layer{i}": np.full(64 * 1024, float(i), dtype=np.float32) for i in range(6)}
TENSOR_BYTES = 64 * 1024 * 4


def aggregator(tmp_path: Path) -> Aggregator:
    groups = [{"name": "train", "percentage": 1.0, "tasks": ["train"]}]
    return Aggregator(
        plan_hash="ab" * 32,
        federation_id="fed",
        collaborators=["one"],
        tasks=TASKS,
        assigner=RandomGroupedAssigner(groups, ["one"], rounds_to_train=2),
        rounds_to_train=2,
        initial_model=MODEL,
        aggregation_functions={"train": WeightedAverage()},
        spool_dir=tmp_path / "spool",
        final_validation=False,
    )


def test_an_upload_cut_by_the_network_resumes_where_it_stopped(tmp_path, caplog):
    # Prepare: the aggregator behind a proxy that cuts the first connection after 2.5 tensors
    caplog.set_level(logging.INFO, logger="fedrun")
    agg = aggregator(tmp_path)
    server = AggregatorServer(agg, Network("127.0.0.1", 0, "127.0.0.1", use_tls=False), None)
    server.start()
    proxy = CuttingProxy(server.port, cut_after=int(2.5 * TENSOR_BYTES))
    # 64 KiB chunks: each tensor's payload goes in frames of its own (4 MiB ones would carry
    # the whole result in one message, and a message cut short leaves nothing whole)
    network = Network("127.0.0.1", proxy.port, "127.0.0.1", use_tls=False, chunk_bytes=1 << 16)
    client = AggregatorClient(network, "one", "ab" * 32, "fed", None, sleep=lambda s: None)
    trained = {name: array + 1.0 for name, array in MODEL.items()}
    agg.get_tasks("one")

    # Execute
    try:
        sent = client.submit(0, "train", 10, {"loss": 0.5}, trained, ())
    finally:
        client.close()
        proxy.close()
        server.stop(None)

    # Assert: cut once, the rest sent on a new connection, the round closed on the full result
    assert proxy.cut.is_set() and proxy.connections >= 2
    kept = [r.getMessage() for r in caplog.records if "resumes its upload" in r.getMessage()]
    assert len(kept) == 1, [r.getMessage() for r in caplog.records]
    # two tensors went through the proxy whole; the aggregator may have read one or both
    # before the connection's end cancelled the call
    found = re.match(r"round 0: one resumes its upload of train: ([12]) of 6 tensors", kept[0])
    assert found, kept[0]
    rest = (6 - int(found.group(1))) * TENSOR_BYTES
    assert rest <= client.bytes_sent < rest + (1 << 16)  # the resumed attempt sent the rest
    assert 6 * TENSOR_BYTES <= sent < 6 * TENSOR_BYTES + (1 << 16)  # the result's size
    assert agg.round_num == 1
    for name, array in trained.items():
        np.testing.assert_array_equal(agg.global_model[name], array, err_msg=name)
    assert not [p for p in (tmp_path / "spool").iterdir() if p.name.startswith(".")]


class Refuses:
    """SubmitResults whose first call breaks off; GetResultProgress (unless ``old``: an
    aggregator without it) says layer0 was kept, and a resume is then refused as one the
    aggregator no longer holds the start of (it was started again meanwhile)."""

    def __init__(self) -> None:
        self.uploads: list[tuple[list[str], int]] = []  # (held, frames) per call

    def submit(self, requests, context) -> pb.SubmitResultsResponse:
        frames = list(expand_frames(parse_frame(m) for m in requests))
        held = list(frames[0].result.held)
        self.uploads.append((held, len(frames)))
        if len(self.uploads) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        if held:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "FX-ROUND-021: the aggregator no longer holds what arrived of it",
            )
        return pb.SubmitResultsResponse(accepted=True, message="ok")

    def progress(self, request, context) -> pb.ResultProgress:
        return pb.ResultProgress(held=["layer0"], held_bytes=TENSOR_BYTES)


def methods_of(handler: Refuses, old: bool) -> dict[str, grpc.RpcMethodHandler]:
    methods = {
        "SubmitResults": grpc.stream_unary_rpc_method_handler(
            handler.submit, response_serializer=pb.SubmitResultsResponse.SerializeToString
        )
    }
    if not old:
        methods["GetResultProgress"] = grpc.unary_unary_rpc_method_handler(
            handler.progress,
            request_deserializer=pb.ResultProgressRequest.FromString,
            response_serializer=pb.ResultProgress.SerializeToString,
        )
    return methods


@pytest.mark.parametrize("old", [False, True])
def test_an_upload_that_cannot_resume_is_sent_whole(old):
    # a resume refused with FX-ROUND-021 is sent again whole at once; an aggregator without
    # GetResultProgress (older fedrun) gets the whole result again, as it always did
    handler = Refuses()

    with fake_aggregator.serving(methods_of(handler, old), chunk_bytes=1 << 16) as client:
        sent = client.submit(0, "train", 10, {"loss": 0.5}, MODEL, ())

    helds = [held for held, _ in handler.uploads]
    assert helds == ([[], []] if old else [[], ["layer0"], []])
    assert sent >= 6 * TENSOR_BYTES


def test_a_restarted_collaborator_resumes_the_upload_its_earlier_process_began(tmp_path, caplog):
    # Prepare: an upload of result "kept1" broke off after two tensors and its process died;
    # the collaborator, started again, sends that result kept on its disk (same id)
    caplog.set_level(logging.INFO, logger="fedrun")
    agg = aggregator(tmp_path)
    trained = {name: array + 1.0 for name, array in MODEL.items()}
    agg.get_tasks("one")
    upload = agg.open_result("one", 0, "train", 10, {"loss": 0.5}, 6, result_id="kept1")
    for name in list(trained)[:2]:
        upload.add(name, trained[name])
    assert upload.suspend()
    server = AggregatorServer(agg, Network("127.0.0.1", 0, "127.0.0.1", use_tls=False), None)
    server.start()
    network = Network("127.0.0.1", server.port, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "ab" * 32, "fed", None, sleep=lambda s: None)

    # Execute
    try:
        sent = client.submit(0, "train", 10, {"loss": 0.5}, trained, (), result_id="kept1")
    finally:
        client.close()
        server.stop(None)

    # Assert: only the four tensors the aggregator lacked were sent
    assert "one resumes its upload of train: 2 of 6 tensors" in caplog.text
    assert 4 * TENSOR_BYTES <= client.bytes_sent < 5 * TENSOR_BYTES
    assert sent >= 6 * TENSOR_BYTES
    assert agg.round_num == 1
    for name, array in trained.items():
        np.testing.assert_array_equal(agg.global_model[name], array, err_msg=name)


def test_an_upload_says_how_far_it_got(tmp_path, monkeypatch, caplog):
    # a line every PROGRESS_LINE_SECONDS (here: every data frame), with the result's size
    monkeypatch.setattr(transfer_progress, "PROGRESS_LINE_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="fedrun")
    agg = aggregator(tmp_path)
    agg.get_tasks("one")
    server = AggregatorServer(agg, Network("127.0.0.1", 0, "127.0.0.1", use_tls=False), None)
    server.start()
    network = Network("127.0.0.1", server.port, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "ab" * 32, "fed", None, sleep=lambda s: None)

    try:
        client.submit(0, "train", 10, {"loss": 0.5}, MODEL, ())
    finally:
        client.close()
        server.stop(None)

    lines = [
        r.getMessage() for r in caplog.records if "upload of the train result:" in r.getMessage()
    ]
    assert len(lines) >= 6, lines
    assert lines[-1].startswith("round 0: upload of the train result: 1.5 MiB of 1.5 MiB ("), lines
