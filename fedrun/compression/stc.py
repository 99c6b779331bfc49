"""Sparse ternary compression (Sattler et al. 2019): top-p sparsify, then ternarize."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedrun.compression._format import (
    KIND_STC,
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


def check_fraction(p_sparsity: Any, pipeline: str) -> float:
    """``p_sparsity`` must be a number in (0, 1]."""
    if isinstance(p_sparsity, bool) or not isinstance(p_sparsity, (int, float)):
        raise ValueError(f"{pipeline} p_sparsity must be a number in (0, 1], got {p_sparsity!r}")
    if not 0.0 < p_sparsity <= 1.0:
        raise ValueError(f"{pipeline} p_sparsity must lie in (0, 1], got {p_sparsity!r}")
    return float(p_sparsity)


def kept_count(size: int, p_sparsity: float) -> int:
    """Entries kept out of ``size``: ``floor(p_sparsity * size)``, at least 1."""
    return min(size, max(1, math.floor(p_sparsity * size + 1e-9)))


def top_fraction_mask(flat: np.ndarray, p_sparsity: float) -> np.ndarray:
    """Mask of the ``kept_count`` entries of largest magnitude, minus any that are exactly 0.

    Zeros are never marked kept: they decode to 0 anyway, and keeping them would bias the mean
    magnitude. Among equal magnitudes at the threshold the choice is numpy's (deterministic).
    """
    size = flat.size
    keep = kept_count(size, p_sparsity)
    magnitude = np.abs(flat)
    if keep == size:
        mask = np.ones(size, dtype=bool)
    else:
        mask = np.zeros(size, dtype=bool)
        mask[np.argpartition(magnitude, size - keep)[size - keep :]] = True
    mask &= magnitude > 0
    return mask


class STCPipeline(LossyFloatPipeline):
    """Sparse ternary compression: keep the top ``p_sparsity`` fraction, as +-mean magnitude.

    Parameters
    ----------
    p_sparsity:
        Fraction of entries kept, by largest magnitude, in (0, 1]; ``floor(p * n)`` entries and
        at least one.
    n_clusters:
        Accepted for OpenFL plan compatibility and ignored.

    Every kept (non-zero) entry decodes to ``sign(x) * mu`` where ``mu`` is the mean magnitude
    of the kept entries; every other entry decodes to 0. The payload is the zlib-compressed
    bitmask of kept positions followed by their packed sign bits; ``mu`` travels in meta as a
    float64. float16/32/64 tensors holding NaN or infinity are refused (``ValueError``);
    non-float and empty tensors pass through losslessly.
    """

    name = "stc"
    kind = KIND_STC

    def __init__(self, p_sparsity: float = 0.1, n_clusters: int | None = None) -> None:
        self.p_sparsity = check_fraction(p_sparsity, "STCPipeline")
        self.n_clusters = n_clusters

    def _encode_float(self, array: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        check_finite(array, self.name)
        flat = array.reshape(-1)
        mask = top_fraction_mask(flat, self.p_sparsity)
        kept = flat[mask]
        mu = float(np.abs(kept, dtype=np.float64).mean()) if kept.size else 0.0
        payload = deflate(np.packbits(mask).tobytes() + np.packbits(kept < 0).tobytes())
        return payload, pack_meta(KIND_STC, "QQd", flat.size, kept.size, mu)

    def _decode_float(
        self, payload: Any, body: memoryview, dtype: np.dtype, count: int
    ) -> np.ndarray:
        (declared, kept, mu), rest = unpack_fields("QQd", body, self.name)
        check_body_length(rest, 0, self.name)
        check_count(declared, count, self.name)
        if kept > count:
            raise ValueError(f"{self.name} meta keeps {kept} of {count} entries; it is garbled")
        if not mu >= 0:
            raise ValueError(f"{self.name} meta has magnitude {mu!r}; it is garbled")
        check_representable(np.array([mu]), dtype, self.name, "magnitude")
        mask_bytes = packed_length(count)
        data = inflate(payload, mask_bytes + packed_length(kept), self.name)
        mask = unpack_bits(data[:mask_bytes], count, self.name, "position mask")
        if int(np.count_nonzero(mask)) != kept:
            raise ValueError(
                f"{self.name} position mask marks {int(np.count_nonzero(mask))} entries, "
                f"meta says {kept}; the payload is garbled"
            )
        negative = unpack_bits(data[mask_bytes:], kept, self.name, "sign bits")
        out = np.zeros(count, dtype=dtype)
        out[mask] = np.where(negative, -mu, mu)
        return out
