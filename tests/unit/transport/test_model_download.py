"""GetTensors: what a collaborator downloads, and the once-per-round framing of small models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrun.aggregation import WeightedAverage
from fedrun.errors import ProtocolError
from fedrun.federation.aggregator import Aggregator
from fedrun.federation.assigner import RandomGroupedAssigner
from fedrun.federation.tasks import TaskSpec
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import decode_frames, expand_frames, parse_frame, serialize_frame
from fedrun.transport import server as server_module
from fedrun.transport.server import FederationServicer

PLAN_HASH = "cd" * 32
TASKS = {"train": TaskSpec("train", "train_task", {"epochs": 1})}
MODEL = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b": np.array([0.5, -1.0], dtype=np.float64),
}


class Context:
    """The part of grpc.ServicerContext the servicer uses on these paths."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def abort(self, code, details):
        raise ProtocolError("FX-TEST-ABORT", f"{code}: {details}")

    def cancel(self) -> None:
        raise AssertionError("the request was there: nothing to cancel")


def make_servicer(tmp_path: Path, cols: list[str]) -> FederationServicer:
    groups = [{"name": "train", "percentage": 1.0, "tasks": ["train"]}]
    aggregator = Aggregator(
        plan_hash=PLAN_HASH,
        federation_id="plan_test",
        collaborators=cols,
        tasks=TASKS,
        assigner=RandomGroupedAssigner(groups, cols, rounds_to_train=2),
        rounds_to_train=2,
        initial_model=MODEL,
        aggregation_functions={"train": WeightedAverage()},
        spool_dir=tmp_path / "spool",
        final_validation=False,
    )
    return FederationServicer(
        aggregator, verify_peer_name=False, chunk_bytes=1 << 20, long_poll_seconds=1.0
    )


def download(
    servicer: FederationServicer, name: str, round_num: int, names=(), held=()
) -> list[bytes]:
    header = pb.Header(collaborator=name, plan_hash=PLAN_HASH, federation_id="plan_test")
    request = pb.GetTensorsRequest(
        header=header, round=round_num, names=list(names), held=list(held)
    )
    return [serialize_frame(m) for m in servicer.GetTensors(iter([request]), Context())]


def decode(messages: list[bytes]) -> dict[str, np.ndarray]:
    frames = expand_frames(parse_frame(m) for m in messages)
    return {t.name: np.array(t.array) for t in decode_frames(frames)}


def train(servicer: FederationServicer, name: str, round_num: int, offset: float) -> None:
    agg = servicer.aggregator
    agg.get_tasks(name)
    upload = agg.open_result(name, round_num, "train", 10, {"loss": 1.0}, len(MODEL))
    for key, value in MODEL.items():
        upload.add(key, value + offset, False, value.nbytes)
    upload.commit()


def assert_model(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and actual[key].shape == value.shape, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_every_collaborator_downloads_the_same_bytes_of_the_round_s_model(tmp_path):
    servicer = make_servicer(tmp_path, ["one", "two"])

    first = download(servicer, "one", 0)
    second = download(servicer, "two", 0)

    assert second == first
    assert_model(decode(first), MODEL)


def test_later_downloads_of_a_round_reuse_the_first_one_s_framing(tmp_path, monkeypatch):
    servicer = make_servicer(tmp_path, ["one", "two"])
    first = download(servicer, "one", 0)

    def no_more_framing(*args, **kwargs):
        raise AssertionError("the model was framed again")

    monkeypatch.setattr(server_module, "encode_tensor_wire", no_more_framing)

    assert download(servicer, "two", 0) == first


def test_the_next_round_serves_the_new_model_not_the_framed_old_one(tmp_path):
    servicer = make_servicer(tmp_path, ["one", "two"])
    download(servicer, "one", 0)

    train(servicer, "one", 0, 1.0)
    train(servicer, "two", 0, 3.0)  # equal weights: the new model is MODEL + 2
    after = decode(download(servicer, "two", 1))

    assert_model(after, {k: v + 2.0 for k, v in MODEL.items()})


def test_a_model_above_the_limit_is_framed_per_download(tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "FRAMED_MODEL_MAX_BYTES", 16)
    servicer = make_servicer(tmp_path, ["one", "two"])

    got = decode(download(servicer, "one", 0))

    assert servicer._framed is None
    assert_model(got, MODEL)


def test_asking_for_some_tensors_gets_only_those(tmp_path):
    servicer = make_servicer(tmp_path, ["one"])
    download(servicer, "one", 0)  # the whole model is framed first

    got = decode(download(servicer, "one", 0, names=["b"]))

    assert_model(got, {"b": MODEL["b"]})


def test_a_resumed_download_gets_the_tensors_not_yet_held(tmp_path):
    servicer = make_servicer(tmp_path, ["one"])
    download(servicer, "one", 0)  # the whole model is framed first

    got = decode(download(servicer, "one", 0, held=["w"]))

    assert_model(got, {"b": MODEL["b"]})


def test_a_resumed_download_holding_a_tensor_the_model_lacks_is_refused(tmp_path):
    servicer = make_servicer(tmp_path, ["one"])

    with pytest.raises(ProtocolError) as caught:
        download(servicer, "one", 0, held=["w", "not-in-the-model"])

    assert "FX-DATA-019" in caught.value.message and "not-in-the-model" in caught.value.message


def test_the_model_of_another_round_is_refused(tmp_path):
    servicer = make_servicer(tmp_path, ["one"])

    with pytest.raises(ProtocolError, match="FX-ROUND-001"):
        download(servicer, "one", 1)
