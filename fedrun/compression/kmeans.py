"""k-means quantization pipelines: SKC (sparsify, then cluster) and KC (cluster everything).

Values are replaced by the index of their nearest centroid (one byte each); the centroids travel
in meta. The clustering is a deterministic 1-D k-means written here (numpy only): centroids start
at evenly spaced order statistics (min and max included), duplicates are topped up with the
value farthest from every centroid, then Lloyd iterations refine them. After the last iteration
every value is assigned its nearest centroid, so each decoded value is the centroid nearest to
the original among those sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrun.compression._format import (
    KIND_KC,
    KIND_SKC,
    check_body_length,
    check_count,
    deflate,
    inflate,
    pack_meta,
    packed_length,
    unpack_bits,
    unpack_fields,
)
from fedrun.compression._lossy import LossyFloatPipeline, check_finite, check_representable
from fedrun.compression.stc import check_fraction, top_fraction_mask

#: Codes are one byte each, so at most 256 clusters.
MAX_CLUSTERS = 256
#: Lloyd iterations at most (they stop earlier once the centroids no longer move).
LLOYD_ITERATIONS = 25
#: Values assigned per step in the final pass, to bound its temporary memory.
ASSIGN_CHUNK = 1 << 20


def _segment_bounds(ordered: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Start of every centroid's run in ``ordered`` (sorted values), plus the end.

    A value belongs to centroid ``j`` when ``mid[j-1] < value <= mid[j]``, the same rule as
    :func:`nearest_centroid`.
    """
    midpoints = (centroids[:-1] + centroids[1:]) / 2.0
    inner = np.searchsorted(ordered, midpoints, side="right")
    return np.concatenate(([0], inner, [ordered.size]))


def nearest_centroid(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (uint8) of the nearest of the sorted ``centroids`` (at most 256) for every value.

    A value exactly half-way goes to the lower centroid; so may one within float64 rounding of
    the half-way point, whose two distances are then equal to rounding.
    """
    midpoints = (centroids[:-1] + centroids[1:]) / 2.0
    flat = values.reshape(-1)
    codes = np.empty(flat.size, dtype=np.uint8)
    for start in range(0, flat.size, ASSIGN_CHUNK):
        stop = start + ASSIGN_CHUNK
        codes[start:stop] = np.searchsorted(midpoints, flat[start:stop], side="left")
    return codes


def kmeans_1d(values: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster finite ``values`` (any shape, flattened) into at most ``n_clusters`` groups.

    Returns ``(centroids, codes)``: the sorted float64 centroids (fewer than ``n_clusters``
    when there are fewer distinct values, which are then reproduced exactly) and, per value,
    the uint8 index of its nearest centroid. ``n_clusters`` must lie in [1, 256].

    The values are sorted once; each cluster is then a run of the sorted values, so a Lloyd
    iteration costs ``O(k log n)`` searches plus one pass of sums.
    """
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        raise ValueError("k-means needs at least one value")
    if not 1 <= n_clusters <= MAX_CLUSTERS:
        raise ValueError(f"k-means needs 1 to {MAX_CLUSTERS} clusters, got {n_clusters}")
    ordered = np.sort(flat)
    wanted = min(int(n_clusters), ordered.size)
    positions = np.floor(np.linspace(0.0, 1.0, wanted) * (ordered.size - 1)).astype(np.intp)
    centroids = np.unique(ordered[positions].astype(np.float64))
    while centroids.size < wanted:
        # Top up with the value farthest from its centroid: within a run that is its first
        # or last value.
        bounds = _segment_bounds(ordered, centroids)
        best_gap, best_value = 0.0, 0.0
        for j in range(centroids.size):
            if bounds[j] == bounds[j + 1]:
                continue
            for value in (float(ordered[bounds[j]]), float(ordered[bounds[j + 1] - 1])):
                gap = abs(value - centroids[j])
                if gap > best_gap:
                    best_gap, best_value = gap, value
        if best_gap == 0.0:
            break  # fewer distinct values than clusters: every value is a centroid already
        centroids = np.sort(np.append(centroids, best_value))
    for _ in range(LLOYD_ITERATIONS):
        bounds = _segment_bounds(ordered, centroids)
        counts = np.diff(bounds)
        filled = counts > 0
        sums = np.add.reduceat(ordered, bounds[:-1][filled], dtype=np.float64)
        moved = centroids.copy()
        moved[filled] = sums / counts[filled]
        moved.sort()
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    return centroids, nearest_centroid(flat, centroids)


def check_clusters(n_clusters: Any, pipeline: str) -> int:
    """``n_clusters`` must be an integer in [1, 256]."""
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise ValueError(f"{pipeline} n_clusters must be an integer, got {n_clusters!r}")
    if not 1 <= n_clusters <= MAX_CLUSTERS:
        raise ValueError(
            f"{pipeline} n_clusters must lie in [1, {MAX_CLUSTERS}], got {n_clusters!r}"
        )
    return int(n_clusters)


def _centroid_bytes(centroids: np.ndarray) -> bytes:
    return centroids.astype("<f8").tobytes()


def _read_centroids(rest: memoryview, declared: int, dtype: np.dtype, pipeline: str) -> np.ndarray:
    if declared > MAX_CLUSTERS:
        raise ValueError(f"{pipeline} meta declares {declared} centroids; it is garbled")
    check_body_length(rest, 8 * declared, pipeline)
    centroids = np.frombuffer(rest, dtype="<f8").astype(np.float64)
    check_representable(centroids, dtype, pipeline, "centroid")
    return centroids


def _read_codes(data: bytes | memoryview, clusters: int, pipeline: str) -> np.ndarray:
    codes = np.frombuffer(data, dtype=np.uint8)
    if codes.size and int(codes.max()) >= clusters:
        raise ValueError(
            f"{pipeline} payload refers to centroid {int(codes.max())} of {clusters}; it is garbled"
        )
    return codes


class SKCPipeline(LossyFloatPipeline):
    """Sparsity then k-means quantization: top ``p_sparsity`` entries, clustered to centroids.

    Parameters
    ----------
    p_sparsity:
        Fraction of entries kept, by largest magnitude, in (0, 1] (at least one entry).
    n_clusters:
        Number of centroids, 1 to 256 (default 6).

    Kept (non-zero) entries decode to their nearest centroid, the others to 0. The payload is
    the zlib-compressed bitmask of kept positions followed by one code byte per kept entry;
    the centroids travel in meta as float64. float16/32/64 tensors holding NaN or infinity are
    refused (``ValueError``); non-float and empty tensors pass through losslessly.
    """

    name = "skc"
    kind = KIND_SKC

    def __init__(self, p_sparsity: float = 0.1, n_clusters: int = 6) -> None:
        self.p_sparsity = check_fraction(p_sparsity, "SKCPipeline")
        self.n_clusters = check_clusters(n_clusters, "SKCPipeline")

    def _encode_float(self, array: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        check_finite(array, self.name)
        flat = array.reshape(-1)
        mask = top_fraction_mask(flat, self.p_sparsity)
        kept = flat[mask]
        if kept.size:
            centroids, codes = kmeans_1d(kept, self.n_clusters)
        else:
            centroids, codes = np.zeros(0), np.zeros(0, dtype=np.uint8)
        payload = deflate(np.packbits(mask).tobytes() + codes.tobytes())
        meta = pack_meta(KIND_SKC, "QQH", flat.size, kept.size, centroids.size)
        return payload, meta + _centroid_bytes(centroids)

    def _decode_float(
        self, payload: Any, body: memoryview, dtype: np.dtype, count: int
    ) -> np.ndarray:
        (declared, kept, clusters), rest = unpack_fields("QQH", body, self.name)
        check_count(declared, count, self.name)
        if kept > count or (kept > 0) != (clusters > 0):
            raise ValueError(
                f"{self.name} meta keeps {kept} of {count} entries with {clusters} centroids; "
                "it is garbled"
            )
        centroids = _read_centroids(rest, clusters, dtype, self.name)
        mask_bytes = packed_length(count)
        data = inflate(payload, mask_bytes + kept, self.name)
        mask = unpack_bits(data[:mask_bytes], count, self.name, "position mask")
        if int(np.count_nonzero(mask)) != kept:
            raise ValueError(
                f"{self.name} position mask marks {int(np.count_nonzero(mask))} entries, "
                f"meta says {kept}; the payload is garbled"
            )
        codes = _read_codes(data[mask_bytes:], clusters, self.name)
        out = np.zeros(count, dtype=dtype)
        out[mask] = centroids.astype(dtype)[codes]
        return out


class KCPipeline(LossyFloatPipeline):
    """k-means quantization of every entry: one code byte per entry plus the centroids.

    Parameters
    ----------
    p_sparsity:
        Accepted for OpenFL plan compatibility and unused (as in OpenFL).
    n_clusters:
        Number of centroids, 1 to 256 (default 6). A tensor with fewer entries than this is
        sent raw, losslessly.

    Every entry decodes to its nearest centroid. The payload is the zlib-compressed code bytes;
    the centroids travel in meta as float64. float16/32/64 tensors holding NaN or infinity are
    refused (``ValueError``); non-float and empty tensors pass through losslessly.
    """

    name = "kc"
    kind = KIND_KC

    def __init__(self, p_sparsity: float = 0.01, n_clusters: int = 6) -> None:
        self.p_sparsity = p_sparsity
        self.n_clusters = check_clusters(n_clusters, "KCPipeline")

    def _transforms(self, array: np.ndarray) -> bool:
        return array.size >= self.n_clusters

    def _encode_float(self, array: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        check_finite(array, self.name)
        flat = array.reshape(-1)
        centroids, codes = kmeans_1d(flat, self.n_clusters)
        payload = deflate(codes.tobytes())
        meta = pack_meta(KIND_KC, "QH", flat.size, centroids.size)
        return payload, meta + _centroid_bytes(centroids)

    def _decode_float(
        self, payload: Any, body: memoryview, dtype: np.dtype, count: int
    ) -> np.ndarray:
        (declared, clusters), rest = unpack_fields("QH", body, self.name)
        check_count(declared, count, self.name)
        if clusters == 0:
            raise ValueError(f"{self.name} meta declares no centroids; it is garbled")
        centroids = _read_centroids(rest, clusters, dtype, self.name)
        codes = _read_codes(inflate(payload, count, self.name), clusters, self.name)
        restored: np.ndarray = centroids.astype(dtype)[codes]
        return restored
