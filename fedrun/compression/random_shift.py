"""Random shift: hide values behind seeded uniform noise (obfuscation, not encryption)."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from fedrun.compression._format import (
    KIND_SHIFT,
    check_body_length,
    pack_meta,
    raw_bytes,
    raw_tensor,
    unpack_fields,
)
from fedrun.compression._lossy import LossyFloatPipeline

#: The noise is uniform on [SHIFT_LOW, SHIFT_HIGH).
SHIFT_LOW = -20.0
SHIFT_HIGH = 20.0


def shift_noise(seed: int, count: int) -> np.ndarray:
    """``count`` float64 values uniform on [-20, 20), determined by ``seed`` alone.

    Built from the raw 64-bit output of PCG64 seeded through SeedSequence, both fixed
    algorithms, so every numpy version regenerates the same noise (``Generator.uniform`` makes
    no such promise across versions).
    """
    raw = np.random.PCG64(seed).random_raw(count)
    unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return unit * (SHIFT_HIGH - SHIFT_LOW) + SHIFT_LOW


def wire_dtype(dtype: np.dtype) -> np.dtype:
    """Shifted values travel as float32 for float16 tensors, else in the tensor's own dtype."""
    return np.dtype("<f4") if dtype.itemsize < 4 else dtype.newbyteorder("<")


class RandomShiftPipeline(LossyFloatPipeline):
    """Add uniform(-20, 20) noise drawn from a fresh random 64-bit seed; decode subtracts it.

    The seed, not the noise, travels in meta (10 bytes), so the payload is as large as the
    tensor (float16 tensors travel as float32, to keep the noise from drowning them). This is
    obfuscation only: whoever holds the meta can undo it. NaN and infinity survive unchanged.

    Not bit-exact, because adding and removing the noise rounds: with ``eps`` the machine
    epsilon of the wire dtype (2**-23 for float16 and float32 tensors, 2**-52 for float64),
    ``|decode(encode(x)) - x| <= 2 * eps * (|x| + 20)`` element-wise (about 5e-6 for |x| <= 1 in
    float32). Non-float and empty tensors pass through losslessly.
    """

    name = "random_shift"
    kind = KIND_SHIFT

    def _encode_float(self, array: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        seed = secrets.randbits(64)
        noise = shift_noise(seed, array.size)
        shifted = (array.reshape(-1).astype(np.float64) + noise).astype(wire_dtype(array.dtype))
        return raw_bytes(shifted), pack_meta(KIND_SHIFT, "Q", seed)

    def _decode_float(
        self, payload: Any, body: memoryview, dtype: np.dtype, count: int
    ) -> np.ndarray:
        (seed,), rest = unpack_fields("Q", body, self.name)
        check_body_length(rest, 0, self.name)
        wire = wire_dtype(dtype)
        shifted = raw_tensor(payload, wire, (count,), count)
        with np.errstate(invalid="ignore"):  # a signalling NaN in the payload stays a NaN
            restored: np.ndarray = shifted.astype(np.float64) - shift_noise(seed, count)
        return restored
