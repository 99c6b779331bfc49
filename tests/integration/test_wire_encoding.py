"""Over a real gRPC socket: with a lossy pipeline in the plan, the global model a collaborator
loads still travels lossless, and only its update is compressed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fxnodes import fx, set_plan
from ports import free_port

from fedrun.plan.components import build_aggregator, compression_pipeline
from fedrun.plan.loader import Plan
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol import federation_pb2_grpc as pb_grpc
from fedrun.protocol.codec import expand_frames, parse_frame
from fedrun.transport.client import AggregatorClient
from fedrun.transport.network import Network
from fedrun.transport.server import AggregatorServer


def test_global_model_is_lossless_and_updates_are_compressed(tmp_path: Path) -> None:
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    set_plan(ws, agg_addr="127.0.0.1", agg_port=free_port(), use_tls=False)
    (ws / "plan" / "cols.yaml").write_text("collaborators: [one]\n")
    (ws / "plan" / "data.yaml").write_text("one,1\n")
    text = (ws / "plan" / "plan.yaml").read_text()
    (ws / "plan" / "plan.yaml").write_text(
        text.replace("template: fedrun.compression.NoCompressionPipeline", "template: STCPipeline")
    )
    fx(ws, "plan", "initialize")
    plan = Plan.load(ws / "plan" / "plan.yaml")
    pipeline = compression_pipeline(plan)
    assert pipeline.lossy
    aggregator = build_aggregator(plan)
    network = Network.from_plan(plan)
    server = AggregatorServer(aggregator, network, None, pipelines={pipeline.name: pipeline})
    server.start()
    client = AggregatorClient(
        network,
        "one",
        plan.hash,
        plan.federation_id,
        None,
        pipeline=pipeline,
        pipelines={pipeline.name: pipeline},
    )
    try:
        header = pb.Header(
            collaborator="one", plan_hash=plan.hash, federation_id=plan.federation_id
        )
        frames = list(
            pb_grpc.FederationStub(client.channel).GetTensors(
                pb.GetTensorsRequest(header=header, round=0)
            )
        )
        # small frames come packed in batch frames: open them as any receiver does
        frames = [
            f
            for f in expand_frames(parse_frame(m.SerializeToString()) for m in frames)
            if isinstance(f, pb.TensorFrame)
        ]
        encodings = {f.header.encoding for f in frames if f.WhichOneof("body") == "header"}
        assert encodings == {"none"}
        received = client.get_global_model(0)
        for name, value in aggregator.global_model.items():
            assert np.array_equal(received[name], value), name

        assignment = client.get_tasks()
        assert assignment.tasks[0] == "aggregated_model_validation"
        client.submit(0, "aggregated_model_validation", 1, {"accuracy": 1.0}, {}, ())
        rng = np.random.default_rng(0)
        deltas = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in received.items()}
        trained = {k: received[k] + deltas[k] for k in received}
        sent = client.submit(0, "train", 1, {"loss": 0.0}, deltas, set(deltas))
        raw = sum(v.nbytes for v in trained.values())
        assert sent < 0.1 * raw, "the update went through the lossy pipeline"
    finally:
        client.close()
        server.stop(grace=None)
        aggregator.state_store.close()
