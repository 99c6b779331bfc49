"""The lossless default: a tensor's raw little-endian bytes, nothing else."""

from __future__ import annotations

import numpy as np

from fedrun.compression._format import (
    as_bytes_view,
    as_wire_array,
    raw_bytes,
    raw_tensor,
    tensor_layout,
)
from fedrun.compression.base import CompressionPipeline


class NoCompressionPipeline(CompressionPipeline):
    """Send the tensor's raw C-order little-endian bytes; meta is empty. Lossless.

    Works for bool, every integer, float and complex dtype, 0-d and empty tensors. ``encode``
    returns a memoryview of the tensor itself when it is already C-contiguous and little-endian
    (no copy): do not modify the tensor while the payload is in use. ``decode`` returns a new
    array that owns its memory.
    """

    name = "none"
    lossy = False

    def encode(self, tensor: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        return raw_bytes(as_wire_array(tensor)), b""

    def decode(
        self, payload: bytes | memoryview, meta: bytes, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        if as_bytes_view(meta, "meta").nbytes:
            raise ValueError("the 'none' pipeline writes empty meta; this meta is not its own")
        dtype, shape, count = tensor_layout(dtype, shape)
        return raw_tensor(payload, dtype, shape, count)
