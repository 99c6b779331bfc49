"""Median and GeometricMedian."""

from __future__ import annotations

import numpy as np
import pytest

from fedrun.aggregation import GeometricMedian, LocalTensor, Median
from fedrun.aggregation.geometric_median import geometric_median


@pytest.mark.parametrize("n", [1, 4, 7])
def test_median_matches_np_median(aggregate, rng, n):
    updates = [
        (f"c{i}", float(rng.integers(1, 100)), {"w": rng.standard_normal((3, 4))}) for i in range(n)
    ]

    result = aggregate(Median(), updates)

    expected = np.median(np.stack([t["w"] for _, _, t in updates]), axis=0)
    np.testing.assert_array_equal(result["w"], expected)


def test_median_ignores_weights(aggregate):
    updates = [
        ("a", 1000.0, {"w": np.array([0.0])}),
        ("b", 1.0, {"w": np.array([1.0])}),
        ("c", 1.0, {"w": np.array([2.0])}),
    ]

    assert aggregate(Median(), updates)["w"][0] == 1.0


def test_median_of_integers_rounds(aggregate):
    updates = [(f"c{i}", 1.0, {"n": np.array([v], dtype=np.int16)}) for i, v in enumerate([1, 4])]

    result = aggregate(Median(), updates)

    assert result["n"].dtype == np.int16
    assert result["n"][0] == 2  # median 2.5 rounds half to even


def test_median_keeps_float32(aggregate, rng):
    updates = [(f"c{i}", 1.0, {"w": rng.standard_normal(5).astype(np.float32)}) for i in range(3)]

    assert aggregate(Median(), updates)["w"].dtype == np.float32


def reference_weiszfeld(points, weights, maxiter, eps, ftol):
    """Straightforward weighted Weiszfeld on stacked, flattened points."""
    x = np.stack([np.ravel(p) for p in points]).astype(np.float64)
    a = np.asarray(weights, dtype=np.float64)
    a = a / a.sum()
    z = a @ x
    objective = np.sum(a * np.linalg.norm(x - z, axis=1))
    for _ in range(maxiter):
        previous = objective
        b = a / np.maximum(eps, np.linalg.norm(x - z, axis=1))
        z = (b / b.sum()) @ x
        objective = np.sum(a * np.linalg.norm(x - z, axis=1))
        if abs(previous - objective) < ftol * objective:
            break
    return z.reshape(np.shape(points[0]))


@pytest.mark.parametrize("maxiter", [0, 1, 4, 50])
def test_geometric_median_matches_reference_weiszfeld(aggregate, rng, maxiter):
    updates = [
        (f"c{i}", float(rng.integers(1, 50)), {"w": rng.standard_normal((6, 2)) * (i + 1)})
        for i in range(5)
    ]
    rule = GeometricMedian(maxiter=maxiter)

    result = aggregate(rule, updates)

    expected = reference_weiszfeld(
        [t["w"] for _, _, t in updates], [w for _, w, _ in updates], maxiter, 1e-5, 1e-6
    )
    np.testing.assert_allclose(result["w"], expected, rtol=1e-10, atol=1e-12)


def test_geometric_median_of_identical_points_is_that_point(aggregate, rng):
    point = rng.standard_normal(10)
    updates = [(f"c{i}", float(i + 1), {"w": point.copy()}) for i in range(4)]

    result = aggregate(GeometricMedian(), updates)

    np.testing.assert_allclose(result["w"], point, rtol=1e-12)


def test_geometric_median_resists_one_outlier(aggregate, rng):
    honest = [rng.normal(1.0, 0.01, size=20) for _ in range(6)]
    outlier = np.full(20, 1e6)
    updates = [(f"c{i}", 100.0, {"w": t}) for i, t in enumerate(honest)]
    updates.append(("attacker", 100.0, {"w": outlier}))

    median = aggregate(GeometricMedian(maxiter=100, ftol=0.0), updates)["w"]
    mean = np.mean([*honest, outlier], axis=0)

    assert np.all(mean > 1e5)
    np.testing.assert_allclose(median, 1.0, atol=0.05)


def test_geometric_median_minimizes_the_weighted_distance_sum(rng):
    points = [rng.standard_normal(8) for _ in range(7)]
    weights = rng.uniform(1, 10, size=7)

    z = geometric_median(points, weights, maxiter=500, eps=1e-12, ftol=0.0)

    def cost(c):
        return sum(w * np.linalg.norm(c - p) for w, p in zip(weights, points, strict=True))

    for _ in range(20):
        assert cost(z) <= cost(z + 1e-3 * rng.standard_normal(8)) + 1e-12


def test_geometric_median_call_signature(rng):
    tensors = [rng.standard_normal(3) for _ in range(3)]
    local = [LocalTensor(f"c{i}", t, 1 / 3) for i, t in enumerate(tensors)]

    value = GeometricMedian()(local, None, "w", 0, ())

    np.testing.assert_allclose(value, reference_weiszfeld(tensors, [1, 1, 1], 4, 1e-5, 1e-6))


@pytest.mark.parametrize("settings", [{"maxiter": -1}, {"eps": 0.0}, {"ftol": -1.0}])
def test_geometric_median_refuses_bad_settings(settings):
    with pytest.raises(ValueError):
        GeometricMedian(**settings)
