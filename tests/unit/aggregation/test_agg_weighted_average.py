"""WeightedAverage and FedCurvWeightedAverage against direct numpy formulas."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from fedrun.aggregation import (
    AggregationFunction,
    FedCurvWeightedAverage,
    LocalTensor,
    WeightedAverage,
    available_rules,
)


def make_updates(rng: np.random.Generator, n: int, dtype: str = "float64") -> list[Any]:
    return [
        (
            f"col{i}",
            float(rng.integers(1, 1000)),
            {
                "conv.weight": rng.standard_normal((4, 3, 3)).astype(dtype),
                "fc.bias": rng.standard_normal(7).astype(dtype),
            },
        )
        for i in range(n)
    ]


def numpy_average(updates: Sequence[Any], name: str) -> np.ndarray:
    tensors = np.stack([np.asarray(t[name], dtype=np.float64) for _, _, t in updates])
    return np.average(tensors, axis=0, weights=[w for _, w, _ in updates])


def test_weighted_average_matches_np_average(aggregate, rng):
    updates = make_updates(rng, 6)

    result = aggregate(WeightedAverage(), updates)

    assert set(result) == {"conv.weight", "fc.bias"}
    for name in result:
        assert result[name].dtype == np.float64
        np.testing.assert_allclose(result[name], numpy_average(updates, name), rtol=1e-12)


def test_float32_inputs_come_back_float32(aggregate, rng):
    updates = make_updates(rng, 4, "float32")

    result = aggregate(WeightedAverage(), updates)

    for name in result:
        assert result[name].dtype == np.float32
        np.testing.assert_allclose(result[name], numpy_average(updates, name), rtol=1e-6)


def test_arrival_order_does_not_matter(aggregate, rng):
    updates = make_updates(rng, 8)
    reference = aggregate(WeightedAverage(), updates)

    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(updates))
        result = aggregate(WeightedAverage(), [updates[i] for i in order])
        for name in reference:
            np.testing.assert_allclose(result[name], reference[name], rtol=1e-12, atol=0)


def test_interleaved_names_and_origins_are_fine(rng):
    updates = make_updates(rng, 3)
    accumulator = WeightedAverage().begin_round(0, {})
    for name in ("fc.bias", "conv.weight"):  # by name first, then by collaborator
        for origin, weight, tensors in reversed(updates):
            accumulator.add(name, tensors[name], weight, origin)

    result = accumulator.result()

    np.testing.assert_allclose(result["fc.bias"], numpy_average(updates, "fc.bias"), rtol=1e-12)


def test_single_collaborator_gets_its_own_tensor(aggregate, rng):
    tensor = rng.standard_normal((5, 5)).astype(np.float32)

    result = aggregate(WeightedAverage(), [("only", 37.0, {"w": tensor})])

    np.testing.assert_array_equal(result["w"], tensor)


def test_integer_tensors_are_rounded_not_truncated(aggregate):
    updates = [
        ("a", 1.0, {"steps": np.array([0, 0, 10], dtype=np.int32)}),
        ("b", 3.0, {"steps": np.array([1, 3, 11], dtype=np.int32)}),
    ]

    result = aggregate(WeightedAverage(), updates)

    # exact averages: 0.75, 2.25, 10.75
    assert result["steps"].dtype == np.int32
    np.testing.assert_array_equal(result["steps"], [1, 2, 11])


def test_bool_tensors_are_rounded(aggregate):
    updates = [
        ("a", 1.0, {"mask": np.array([True, False, True])}),
        ("b", 3.0, {"mask": np.array([False, False, True])}),
    ]

    result = aggregate(WeightedAverage(), updates)

    assert result["mask"].dtype == np.bool_
    np.testing.assert_array_equal(result["mask"], [False, False, True])


def test_all_zero_weights_mean_equal_weights(aggregate, rng):
    updates = [(origin, 0.0, tensors) for origin, _, tensors in make_updates(rng, 3)]

    result = aggregate(WeightedAverage(), updates)

    expected = np.mean([t["fc.bias"] for _, _, t in updates], axis=0)
    np.testing.assert_allclose(result["fc.bias"], expected, rtol=1e-12)


@pytest.mark.parametrize("zero_first", [True, False])
def test_zero_weight_updates_count_for_nothing_when_others_have_weight(aggregate, zero_first):
    zero = ("idle", 0.0, {"w": np.array([100.0, -100.0])})
    real = [("a", 1.0, {"w": np.array([1.0, 2.0])}), ("b", 3.0, {"w": np.array([5.0, 6.0])})]
    updates = [zero, *real] if zero_first else [*real, zero]

    result = aggregate(WeightedAverage(), updates)

    np.testing.assert_allclose(result["w"], [4.0, 5.0], rtol=1e-15)


def test_zero_dimensional_tensors(aggregate):
    updates = [("a", 1.0, {"s": np.array(2.0)}), ("b", 1.0, {"s": np.array(4.0)})]

    result = aggregate(WeightedAverage(), updates)

    assert result["s"].shape == ()
    assert float(result["s"]) == 3.0


def test_result_does_not_alias_inputs(rng):
    tensor = rng.standard_normal(4)
    accumulator = WeightedAverage().begin_round(0, {})
    accumulator.add("w", tensor, 2.0, "a")
    expected = tensor.copy()

    tensor[:] = 99.0  # the caller reuses its buffer

    np.testing.assert_allclose(accumulator.result()["w"], expected, rtol=1e-15)


def test_streaming_memory_does_not_grow_with_collaborators():
    size = 100_000
    tensor = np.ones(size, dtype=np.float32)
    accumulator = WeightedAverage().begin_round(0, {})
    accumulator.add("w", tensor, 1.0, "warmup")

    tracemalloc.start()
    try:
        for i in range(40):
            accumulator.add("w", tensor, float(i + 1), f"col{i}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Collecting 40 float32 copies would take 16 MB; streaming needs one float64 temporary.
    assert peak < 3 * size * 8
    assert WeightedAverage.needs_all_updates is False


def test_call_matches_np_average(rng):
    tensors = [rng.standard_normal(6) for _ in range(3)]
    weights = [0.2, 0.5, 0.3]
    local = [
        LocalTensor(f"c{i}", t, w) for i, (t, w) in enumerate(zip(tensors, weights, strict=True))
    ]

    value = WeightedAverage()(local, None, "w", 0, ("trained",))

    np.testing.assert_allclose(value, np.average(tensors, axis=0, weights=weights), rtol=1e-12)


def test_fedcurv_sums_fisher_terms_and_averages_the_rest(aggregate, rng):
    names = ["layer.weight", "layer.weight_u", "layer.weight_v", "layer.weight_w", "bias_x"]
    updates = [
        (f"c{i}", float(w), {name: rng.standard_normal(3) for name in names})
        for i, w in enumerate([10, 30, 60])
    ]

    result = aggregate(FedCurvWeightedAverage(), updates)

    for name in names:
        stack = np.stack([t[name] for _, _, t in updates])
        if name.endswith(("_u", "_v", "_w")):
            expected = stack.sum(axis=0)
        else:
            expected = np.average(stack, axis=0, weights=[10, 30, 60])
        np.testing.assert_allclose(result[name], expected, rtol=1e-12)
    assert FedCurvWeightedAverage.needs_all_updates is False


def test_fedcurv_call_matches_streaming(aggregate, rng):
    tensors = [rng.standard_normal(4) for _ in range(3)]
    local = [LocalTensor(f"c{i}", t, 1.0 / 3) for i, t in enumerate(tensors)]

    summed = FedCurvWeightedAverage()(local, None, "x_u", 0, ())
    averaged = FedCurvWeightedAverage()(local, None, "x", 0, ())

    np.testing.assert_allclose(summed, np.sum(tensors, axis=0), rtol=1e-12)
    np.testing.assert_allclose(averaged, np.mean(tensors, axis=0), rtol=1e-12)


class ClippedMean(AggregationFunction):
    """An OpenFL-style user rule: only ``call`` is written."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, tuple[str, ...], list[float]]] = []

    def call(self, local_tensors, db_iterator, tensor_name, fl_round, tags):
        self.calls.append((tensor_name, fl_round, tags, [t.weight for t in local_tensors]))
        stack = np.stack([np.clip(t.tensor, -1.0, 1.0) for t in local_tensors])
        return np.average(stack, axis=0, weights=[t.weight for t in local_tensors])


def test_openfl_style_user_rule_runs_through_begin_round(aggregate):
    rule = ClippedMean()
    updates = [
        ("a", 1.0, {"w": np.array([5.0, 0.5], dtype=np.float32)}),
        ("b", 3.0, {"w": np.array([-5.0, 0.1], dtype=np.float32)}),
    ]

    result = aggregate(rule, updates, round_num=7)

    assert rule.needs_all_updates is True
    assert result["w"].dtype == np.float32
    np.testing.assert_allclose(result["w"], [0.25 * 1 + 0.75 * -1, 0.25 * 0.5 + 0.75 * 0.1])
    # OpenFL hands call() weights that sum to 1
    assert rule.calls == [("w", 7, ("trained",), [0.25, 0.75])]


def test_subclass_of_weighted_average_overriding_call_is_honoured(aggregate):
    class Doubled(WeightedAverage):
        def call(self, local_tensors, db_iterator, tensor_name, fl_round, tags):
            return 2 * super().call(local_tensors, db_iterator, tensor_name, fl_round, tags)

    updates = [("a", 1.0, {"w": np.array([1.0])}), ("b", 1.0, {"w": np.array([3.0])})]

    result = aggregate(Doubled(), updates)

    assert Doubled.needs_all_updates is True
    np.testing.assert_allclose(result["w"], [4.0])


STREAMING = [
    "WeightedAverage",
    "FedCurvWeightedAverage",
    "AdagradAdaptiveAggregation",
    "AdamAdaptiveAggregation",
    "YogiAdaptiveAggregation",
]


@pytest.mark.parametrize("rule_name", STREAMING)
def test_every_streaming_rule_ignores_arrival_order(aggregate, rng, rule_name):
    names = {"w": (3, 4), "w_u": (5,), "b": (2,)}
    updates = [
        (
            f"c{i}",
            float(rng.integers(1, 100)),
            {n: rng.standard_normal(s) for n, s in names.items()},
        )
        for i in range(6)
    ]
    global_model = {n: rng.standard_normal(s) for n, s in names.items()}
    rule_cls = available_rules()[rule_name]

    reference = aggregate(rule_cls(), updates, global_model)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(updates))
        result = aggregate(rule_cls(), [updates[i] for i in order], global_model)
        for name in names:
            np.testing.assert_allclose(result[name], reference[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rule_name", sorted(set(STREAMING) | {"Median", "GeometricMedian"}))
def test_one_collaborator_alone(aggregate, rng, rule_name):
    tensor = rng.standard_normal(6)
    rule = available_rules()[rule_name]()

    result = aggregate(rule, [("only", 12.0, {"w": tensor})], {"w": tensor + 1.0})

    if rule_name.endswith("AdaptiveAggregation"):
        assert np.all(result["w"] < tensor + 1.0)  # stepped from the global model towards it
    else:
        np.testing.assert_allclose(result["w"], tensor, rtol=1e-12)


# ---------------------------------------------------------------------- streamed folding
def _stream_in(acc: Any, name: str, array: np.ndarray, weight: float, origin: str, step: int):
    stream = acc.open_stream(name, array.shape, array.dtype, weight, origin)
    assert stream is not None
    flat = array.reshape(-1)
    for start in range(0, flat.size, step):
        stream.fold(start, flat[start : start + step])
    stream.close()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_streamed_tensors_sum_exactly_like_whole_ones(dtype):
    rng = np.random.default_rng(11)
    updates = make_updates(rng, 3, dtype)
    whole = WeightedAverage().begin_round(0, {})
    streamed = WeightedAverage().begin_round(0, {})
    for origin, weight, tensors in updates:
        for name, array in tensors.items():
            whole.add(name, array, weight, origin)
            _stream_in(streamed, name, array, weight, origin, step=5)
    expected, got = whole.result(), streamed.result()
    for name in expected:
        assert got[name].dtype == np.dtype(dtype)
        assert got[name].tobytes() == expected[name].tobytes()
    streamed.release()


def test_streams_and_whole_tensors_mix_and_zero_weights_count_for_nothing():
    a = np.full((4, 2), 2.0, dtype=np.float32)
    b = np.full((4, 2), 8.0, dtype=np.float32)
    junk = np.full((4, 2), 1000.0, dtype=np.float32)
    acc = WeightedAverage().begin_round(0, {})
    acc.add("w", junk, 0.0, "zero")  # a zero-weight sum, dropped by the first weighted tensor
    assert acc.open_stream("w", junk.shape, junk.dtype, 0.0, "zero2") is None  # must come whole
    _stream_in(acc, "w", a, 1.0, "a", step=3)
    acc.add("w", b, 3.0, "b")
    acc.add("w", junk, 0.0, "zero3")
    np.testing.assert_array_equal(acc.result()["w"], np.full((4, 2), 6.5, dtype=np.float32))


def test_a_non_finite_slice_is_refused_before_it_is_added():
    acc = WeightedAverage().begin_round(0, {})
    stream = acc.open_stream("w", (6,), np.dtype(np.float32), 1.0, "a")
    stream.fold(0, np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        stream.fold(3, np.array([1.0, np.inf, 1.0], dtype=np.float32))
    with pytest.raises(ValueError, match="outside"):
        stream.fold(5, np.ones(3, dtype=np.float32))


def test_result_finishes_float32_inside_the_sums_memory_and_release_recycles_it():
    from fedrun.buffers import POOL

    shape = (1 << 19,)  # 4 MiB of float64: pooled
    acc = WeightedAverage().begin_round(0, {})
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    _stream_in(acc, "w", x, 2.0, "a", step=1 << 16)
    out = acc.result()["w"]
    np.testing.assert_array_equal(out, x)
    assert out.dtype == np.float32 and not out.flags.owndata  # a view on the pooled sum
    idle = POOL.idle_bytes
    acc.release()
    assert POOL.idle_bytes == idle + 8 * x.size


def test_a_stream_on_a_finished_round_is_refused():
    acc = WeightedAverage().begin_round(0, {})
    stream = acc.open_stream("w", (2,), np.dtype(np.float32), 1.0, "a")
    stream.fold(0, np.ones(2, dtype=np.float32))
    stream.close()
    acc.result()
    with pytest.raises(RuntimeError):
        stream.fold(0, np.ones(2, dtype=np.float32))
    assert acc.open_stream("w2", (2,), np.dtype(np.float32), 1.0, "b") is None
