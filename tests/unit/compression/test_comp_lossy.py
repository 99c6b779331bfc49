"""STC, SKC and KC: what each decoded value must be, and how small the payload gets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrun.compression import KCPipeline, SKCPipeline, STCPipeline
from fedrun.compression.kmeans import kmeans_1d


def round_trip(pipeline, tensor):
    payload, meta = pipeline.encode(tensor)
    return pipeline.decode(payload, meta, tensor.dtype, tensor.shape), payload, meta


def payload_size(payload) -> int:
    return memoryview(payload).nbytes


def top_positions(tensor: np.ndarray, count: int) -> set[int]:
    return set(np.argsort(-np.abs(tensor.ravel()), kind="stable")[:count].tolist())


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("p", [0.1, 0.01, 0.5, 1.0])
def test_stc_keeps_the_largest_entries_as_signed_mean_magnitude(dtype, p):
    rng = np.random.default_rng(1)
    tensor = rng.standard_normal((40, 50)).astype(dtype)  # distinct magnitudes

    decoded, _, _ = round_trip(STCPipeline(p_sparsity=p), tensor)

    flat, out = tensor.ravel().astype(np.float64), decoded.ravel()
    kept = np.flatnonzero(out)
    assert len(kept) == max(1, math.floor(p * flat.size))
    assert set(kept.tolist()) == top_positions(tensor, len(kept))
    mu = np.mean(np.abs(flat[kept]))
    np.testing.assert_array_equal(np.sign(out[kept]), np.sign(flat[kept]))
    np.testing.assert_allclose(np.abs(out[kept].astype(np.float64)), mu, rtol=1e-3)
    assert decoded.dtype == tensor.dtype


def test_stc_compresses_a_large_float32_tensor():
    tensor = np.random.default_rng(2).standard_normal(100_000).astype(np.float32)

    decoded, payload, meta = round_trip(STCPipeline(p_sparsity=0.1), tensor)

    ratio = (payload_size(payload) + len(meta)) / tensor.nbytes
    assert ratio < 0.05
    assert np.count_nonzero(decoded) == 10_000


def test_stc_keeps_at_least_one_entry():
    tensor = np.array([0.1, -3.0, 0.2], dtype=np.float32)

    decoded, _, _ = round_trip(STCPipeline(p_sparsity=0.01), tensor)

    np.testing.assert_array_equal(decoded, [0.0, -3.0, 0.0])


def test_stc_never_turns_zeros_into_values():
    tensor = np.array([0.0, 0.0, 2.0, 0.0, -4.0, 0.0], dtype=np.float32)

    decoded, _, _ = round_trip(STCPipeline(p_sparsity=1.0), tensor)

    np.testing.assert_array_equal(decoded, [0.0, 0.0, 3.0, 0.0, -3.0, 0.0])


def test_stc_of_zeros_is_zeros():
    tensor = np.zeros((10, 10), dtype=np.float32)

    decoded, _, _ = round_trip(STCPipeline(), tensor)

    np.testing.assert_array_equal(decoded, tensor)


def test_stc_zero_dimensional():
    decoded, _, _ = round_trip(STCPipeline(), np.array(-2.5))

    assert decoded.shape == () and float(decoded) == -2.5


def assert_nearest(original: np.ndarray, decoded: np.ndarray, centroids: np.ndarray) -> None:
    """Every decoded value is (to rounding) the nearest centroid to its original value."""
    distance = np.abs(original[:, None] - centroids[None, :]).min(axis=1)
    assert np.all(np.abs(original - decoded) <= distance + 1e-12 * (1 + np.abs(original)))


@pytest.mark.parametrize("p", [0.1, 0.3])
@pytest.mark.parametrize("clusters", [1, 2, 6, 16])
def test_skc_maps_kept_entries_to_their_nearest_centroid(p, clusters):
    tensor = np.random.default_rng(3).standard_normal((30, 30))  # float64: no cast rounding

    decoded, _, _ = round_trip(SKCPipeline(p_sparsity=p, n_clusters=clusters), tensor)

    flat, out = tensor.ravel(), decoded.ravel()
    kept = np.flatnonzero(out)
    assert set(kept.tolist()) == top_positions(tensor, math.floor(p * flat.size))
    centroids = np.unique(out[kept])
    assert len(centroids) <= clusters
    assert_nearest(flat[kept], out[kept], centroids)


def test_skc_compresses_float32():
    tensor = np.random.default_rng(4).standard_normal(100_000).astype(np.float32)

    decoded, payload, meta = round_trip(SKCPipeline(), tensor)

    assert (payload_size(payload) + len(meta)) / tensor.nbytes < 0.05
    assert decoded.dtype == np.float32 and np.count_nonzero(decoded) == 10_000


@pytest.mark.parametrize("clusters", [1, 3, 6, 256])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kc_maps_every_entry_to_its_nearest_centroid(clusters, dtype):
    tensor = np.random.default_rng(5).standard_normal((60, 70)).astype(dtype)

    decoded, payload, meta = round_trip(KCPipeline(n_clusters=clusters), tensor)

    original, out = tensor.ravel().astype(np.float64), decoded.ravel().astype(np.float64)
    centroids = np.unique(out)
    assert len(centroids) <= clusters
    if dtype == "float64":
        assert_nearest(original, out, centroids)
    else:  # centroids were rounded to float32 on the way back
        distance = np.abs(original[:, None] - centroids[None, :]).min(axis=1)
        assert np.all(np.abs(original - out) <= distance + 1e-6 * (1 + np.abs(original)))
    assert payload_size(payload) + len(meta) < tensor.nbytes


def test_kc_reproduces_few_distinct_values_exactly():
    rng = np.random.default_rng(6)
    tensor = rng.choice([-1.5, 0.0, 0.25, 2.0], size=(50, 20), p=[0.01, 0.9, 0.08, 0.01])

    decoded, _, _ = round_trip(KCPipeline(n_clusters=6), tensor)

    np.testing.assert_array_equal(decoded, tensor)


def test_kc_sends_tensors_smaller_than_the_cluster_count_raw():
    tensor = np.array([0.123456789, -9.87654321, 3.14159], dtype=np.float64)

    decoded, payload, meta = round_trip(KCPipeline(n_clusters=6), tensor)

    np.testing.assert_array_equal(decoded, tensor)
    assert meta[:1] == b"R"


def test_kmeans_finds_well_separated_clusters():
    rng = np.random.default_rng(7)
    means = [-10.0, 0.0, 5.0]
    values = np.concatenate([rng.normal(m, 0.1, size=1000) for m in means])
    rng.shuffle(values)

    centroids, codes = kmeans_1d(values, 3)

    np.testing.assert_allclose(centroids, means, atol=0.02)
    for j in range(3):
        np.testing.assert_allclose(centroids[j], values[codes == j].mean(), rtol=1e-12)


@pytest.mark.parametrize("pipeline_cls", [STCPipeline, SKCPipeline, KCPipeline])
def test_lossy_encoding_is_deterministic(pipeline_cls):
    tensor = np.random.default_rng(8).standard_normal(5000).astype(np.float32)

    first = pipeline_cls().encode(tensor)
    second = pipeline_cls().encode(tensor)

    assert bytes(first[0]) == bytes(second[0]) and first[1] == second[1]


@pytest.mark.parametrize("pipeline_cls", [STCPipeline, SKCPipeline, KCPipeline])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_quantizers_refuse_non_finite_values(pipeline_cls, bad):
    tensor = np.ones(100, dtype=np.float32)
    tensor[7] = bad

    with pytest.raises(ValueError, match="NaN or infinity"):
        pipeline_cls().encode(tensor)


@pytest.mark.parametrize(
    ("pipeline_cls", "settings"),
    [
        (STCPipeline, {"p_sparsity": 0.0}),
        (STCPipeline, {"p_sparsity": 1.5}),
        (STCPipeline, {"p_sparsity": "0.1"}),
        (SKCPipeline, {"p_sparsity": -0.1}),
        (SKCPipeline, {"n_clusters": 0}),
        (SKCPipeline, {"n_clusters": 257}),
        (KCPipeline, {"n_clusters": 2.5}),
    ],
)
def test_bad_settings_are_refused(pipeline_cls, settings):
    with pytest.raises(ValueError):
        pipeline_cls(**settings)


def test_openfl_settings_are_accepted():
    assert STCPipeline(p_sparsity=0.2, n_clusters=6).p_sparsity == 0.2
    assert KCPipeline(p_sparsity=0.01, n_clusters=4).n_clusters == 4
