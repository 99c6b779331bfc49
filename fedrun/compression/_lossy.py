"""The frame every lossy pipeline shares: what is not a float16/32/64 tensor passes through raw."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fedrun.compression._format import (
    KIND_RAW,
    as_wire_array,
    check_body_length,
    is_quantizable,
    meta_kind,
    pack_meta,
    raw_bytes,
    raw_tensor,
    tensor_layout,
)
from fedrun.compression.base import CompressionPipeline


def check_finite(array: np.ndarray, pipeline: str) -> None:
    """Refuse NaN and infinity, which a quantizer cannot represent."""
    if not np.isfinite(array).all():
        raise ValueError(
            f"{pipeline} cannot compress a tensor holding NaN or infinity; "
            "use the 'none' pipeline or fix the update"
        )


def check_representable(values: np.ndarray, dtype: np.dtype, pipeline: str, what: str) -> None:
    """Decoded constants must be finite and fit the target dtype."""
    if values.size and not (
        np.isfinite(values).all() and float(np.abs(values).max()) <= float(np.finfo(dtype).max)
    ):
        raise ValueError(f"{pipeline} meta holds a {what} that does not fit {dtype}; it is garbled")


class LossyFloatPipeline(CompressionPipeline):
    """Base of the lossy pipelines.

    float16/32/64 tensors go through :meth:`_encode_float` / :meth:`_decode_float`; every other
    tensor (bool, integers, complex, longdouble), an empty tensor, or one :meth:`_transforms`
    declines is sent losslessly as its raw bytes, marked by meta kind ``R``.
    """

    lossy = True
    #: The meta kind byte written for transformed tensors.
    kind: ClassVar[bytes] = b""

    def _transforms(self, array: np.ndarray) -> bool:
        return True

    def _encode_float(self, array: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        raise NotImplementedError

    def _decode_float(
        self, payload: Any, body: memoryview, dtype: np.dtype, count: int
    ) -> np.ndarray:
        """Rebuild the ``count`` values, flat, in ``dtype`` or float64 (cast afterwards)."""
        raise NotImplementedError

    def encode(self, tensor: np.ndarray) -> tuple[bytes | memoryview, bytes]:
        array = as_wire_array(tensor)
        if array.size == 0 or not is_quantizable(array.dtype) or not self._transforms(array):
            return raw_bytes(array), pack_meta(KIND_RAW)
        return self._encode_float(array)

    def decode(
        self, payload: bytes | memoryview, meta: bytes, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        dtype, shape, count = tensor_layout(dtype, shape)
        kind, body = meta_kind(meta, self.name, KIND_RAW + self.kind)
        if kind == KIND_RAW:
            check_body_length(body, 0, self.name)
            return raw_tensor(payload, dtype, shape, count)
        if count == 0 or not is_quantizable(dtype):
            raise ValueError(
                f"{self.name} meta says the tensor was transformed, but a {dtype} tensor of "
                f"shape {shape} never is; the meta does not belong to this tensor"
            )
        flat = self._decode_float(payload, body, dtype, count)
        return flat.astype(dtype, copy=False).reshape(shape)
