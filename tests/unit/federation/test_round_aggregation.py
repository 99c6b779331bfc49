"""TaskUpdates: a closing round's spooled results handed to an accumulator name by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrun.aggregation import Median, WeightedAverage
from fedrun.errors import StateError
from fedrun.federation import round_aggregation
from fedrun.federation.round_aggregation import TaskUpdates
from fedrun.storage.model_file import TensorFileWriter, TensorPieces
from fedrun.storage.state_store import AcceptedResult

RNG = np.random.default_rng(11)
GLOBAL = {
    "w": RNG.standard_normal((40, 30)).astype(np.float32),
    "b": RNG.standard_normal(7).astype(np.float32),
    "n": np.array([4], dtype=np.int64),
}


def spool(tmp_path: Path, who: str, tensors: dict, delta: bool, size: int) -> AcceptedResult:
    path = tmp_path / f"{who}.result"
    writer = TensorFileWriter(path, round_num=0, tensor_count=len(tensors))
    for name, array in tensors.items():
        writer.write(name, array, delta=delta and array.dtype.kind == "f")
    writer.commit()
    return AcceptedResult(0, who, "train", size, {}, spool_path=str(path))


def trained(offset: float) -> dict:
    return {
        k: v + np.asarray(offset, dtype=v.dtype) if v.dtype.kind == "f" else v + 2
        for k, v in GLOBAL.items()
    }


def aggregate(updates: TaskUpdates) -> dict:
    try:
        for name in updates.names():
            updates.fold(name)
        return updates.accumulator.result()
    finally:
        updates.close()


@pytest.mark.parametrize("slice_bytes", [1 << 20, 100])  # 100: many slices per tensor
def test_delta_results_streamed_from_the_spool_equal_full_ones(tmp_path, monkeypatch, slice_bytes):
    monkeypatch.setattr(round_aggregation, "SLICE_BYTES", slice_bytes)
    full, deltas = [], []
    for who, offset, size in [("a", 0.5, 10), ("b", -1.25, 30)]:
        model = trained(offset)
        full.append(spool(tmp_path / "full", who, model, False, size))
        diff = {k: v - GLOBAL[k] if v.dtype.kind == "f" else v for k, v in model.items()}
        deltas.append(spool(tmp_path / "delta", who, diff, True, size))
    expected = aggregate(TaskUpdates(WeightedAverage().begin_round(0, GLOBAL), full, GLOBAL, False))
    got = aggregate(TaskUpdates(WeightedAverage().begin_round(0, GLOBAL), deltas, GLOBAL, False))
    assert list(got) == ["w", "b", "n"]  # the global model's order
    for name in GLOBAL:
        assert got[name].dtype == GLOBAL[name].dtype
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        expected["w"], GLOBAL["w"] + (0.5 * 10 - 1.25 * 30) / 40, rtol=1e-5, atol=1e-6
    )


def test_a_rule_that_keeps_every_update_gets_its_own_arrays(tmp_path):
    results = [
        spool(tmp_path, w, trained(o), False, 1) for w, o in [("c", 3.0), ("a", 1.0), ("b", 2.0)]
    ]
    acc = Median().begin_round(0, GLOBAL)
    updates = TaskUpdates(acc, results, GLOBAL, retains=True)
    assert [r.collaborator for r in updates.results] == ["a", "b", "c"]  # name order
    got = aggregate(updates)
    np.testing.assert_allclose(got["w"], GLOBAL["w"] + 2.0, rtol=1e-6)
    kept = [item.tensor for item in acc.tensors["w"]]
    assert len({id(t) for t in kept}) == 3 and all(t.base is None for t in kept)


def test_a_truncated_spool_file_is_reported_with_its_path(tmp_path):
    result = spool(tmp_path, "a", trained(1.0), False, 1)
    with open(result.spool_path, "r+b") as f:
        f.truncate(Path(result.spool_path).stat().st_size - 8)
    with pytest.raises(StateError) as info:
        TaskUpdates(WeightedAverage().begin_round(0, GLOBAL), [result], GLOBAL, False)
    assert info.value.code == "FX-STATE-002" and "a.result" in info.value.message


@pytest.mark.parametrize("delta,workers", [(False, 1), (True, 1), (False, 3), (True, 2)])
def test_big_tensors_aggregated_slice_by_slice_equal_whole_ones(
    tmp_path, monkeypatch, delta, workers
):
    results = []
    for who, offset, size in [("b", -1.25, 30), ("a", 0.5, 10), ("c", 2.0, 0)]:
        model = trained(offset)
        if delta:
            model = {k: v - GLOBAL[k] if v.dtype.kind == "f" else v for k, v in model.items()}
        results.append(spool(tmp_path, who, model, delta, size))
    whole = aggregate(TaskUpdates(WeightedAverage().begin_round(0, GLOBAL), results, GLOBAL, False))
    # slices of 7 elements: "w" (1200) ends in a partial slice, "b" (7) is one slice, "n" whole
    monkeypatch.setattr(round_aggregation, "SUM_SLICE_ELEMENTS", 7)
    monkeypatch.setattr(round_aggregation, "slice_workers", lambda: workers)
    rule = WeightedAverage()
    made = []

    def fresh():
        made.append(rule.begin_round(0, GLOBAL))
        return made[-1]

    updates = TaskUpdates(rule.begin_round(0, GLOBAL), results, GLOBAL, False, fresh=fresh)
    try:
        for name in updates.names():
            value = updates.finished(name)
            if isinstance(value, TensorPieces):
                assert name == "w" and value.shape == (40, 30) and value.dtype == np.float32
                got = np.concatenate([np.array(piece) for piece in value.pieces])
            else:
                got = np.array(value)
            assert got.dtype == whole[name].dtype
            assert got.tobytes() == whole[name].tobytes()
    finally:
        updates.close()
    assert len(made) == workers - 1  # the first lane uses the round's own accumulator


def test_a_failing_slice_stops_the_others_and_reports_the_error(tmp_path, monkeypatch):
    results = [spool(tmp_path, w, trained(o), False, 1) for w, o in [("a", 1.0), ("b", 2.0)]]
    monkeypatch.setattr(round_aggregation, "SUM_SLICE_ELEMENTS", 50)
    monkeypatch.setattr(round_aggregation, "slice_workers", lambda: 2)
    rule = WeightedAverage()
    updates = TaskUpdates(
        rule.begin_round(0, GLOBAL),
        results,
        GLOBAL,
        False,
        fresh=lambda: rule.begin_round(0, GLOBAL),
    )
    original = updates._fold_one  # noqa: SLF001

    def fold_one(lane, result, reader, name, span):
        if span is not None and span[0] == 500:
            raise ValueError("slice 10 refused")
        return original(lane, result, reader, name, span)

    monkeypatch.setattr(updates, "_fold_one", fold_one)
    value = updates.finished("w")
    assert isinstance(value, TensorPieces)
    pieces = iter(value.pieces)
    try:
        with pytest.raises(ValueError, match="slice 10 refused"):
            for _ in range(30):
                next(pieces)
    finally:
        updates.close()
