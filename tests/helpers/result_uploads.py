"""Task results sent to an in-process aggregator the way the gRPC server hands them over
(``open_result`` / ``open_tensor`` / ``add`` / ``commit``), for the aggregator's unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrun.aggregation import WeightedAverage
from fedrun.aggregation.base import AggregationFunction
from fedrun.federation.aggregator import Aggregator, ModelSink
from fedrun.federation.assigner import RandomGroupedAssigner
from fedrun.federation.tasks import TaskSpec
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import raw_header
from fedrun.storage.state_store import StateStore

ORDER = ["train", "validate"]
TASKS = {
    "train": TaskSpec("train", "train", {}),
    "validate": TaskSpec("validate", "validate", {"apply": "global"}),
}
RNG = np.random.default_rng(7)
INITIAL = {
    "conv": RNG.standard_normal((3, 5, 7)).astype(np.float32),
    "bias": RNG.standard_normal(11).astype(np.float32),
    "steps": np.array([3], dtype=np.int64),
}


def make(
    tmp_path: Path,
    sink: ModelSink | None = None,
    model=None,
    cols: tuple[str, ...] = ("a", "b"),
    state_store: StateStore | None = None,
    rules: dict[str, AggregationFunction] | None = None,
    **settings: Any,
) -> Aggregator:
    """An aggregator of ``cols`` running ORDER for two rounds, spooling under ``tmp_path``."""
    names = list(cols)
    groups = [{"name": "g", "percentage": 1.0, "tasks": ORDER}]
    return Aggregator(
        plan_hash="h" * 64,
        federation_id="fed",
        collaborators=names,
        tasks=TASKS,
        assigner=RandomGroupedAssigner(groups, names, rounds_to_train=2),
        rounds_to_train=2,
        initial_model=model if model is not None else INITIAL,
        aggregation_functions=rules or {"train": WeightedAverage()},
        spool_dir=tmp_path / "spool",
        model_sink=sink,
        state_store=state_store,
        **settings,
    )


def header(name: str, array: np.ndarray) -> pb.TensorHeader:
    return raw_header(name, array)


def send(agg: Aggregator, who: str, tensors: dict, data_size: int, chunk: int | None) -> int:
    """Upload ``train``; ``chunk`` bytes per data frame streams it, None sends tensors whole.
    Returns how many tensors went through the streamed path."""
    upload = agg.open_result(who, agg.round_num, "train", data_size, {"loss": 1.0}, len(tensors))
    streamed = 0
    try:
        for name, array in tensors.items():
            incoming = None
            if chunk is not None:
                incoming = upload.open_tensor(header(name, array), array.dtype)
            if incoming is None:
                upload.add(name, array)
                continue
            streamed += 1
            payload = memoryview(np.ascontiguousarray(array)).cast("B")  # no copy
            done = False
            for start in range(0, len(payload), chunk):
                done = incoming.write(payload[start : start + chunk])
            assert done
        upload.commit()
    except BaseException:
        upload.abort()
        raise
    return streamed


def trained(offset: float) -> dict[str, np.ndarray]:
    return {
        k: (v + np.asarray(offset, dtype=v.dtype)) if v.dtype.kind == "f" else v + 1
        for k, v in INITIAL.items()
    }


def validate(agg: Aggregator, who: str) -> None:
    upload = agg.open_result(who, agg.round_num, "validate", 5, {"acc": 0.5}, 0)
    upload.commit()
