"""Shared byte-level helpers of the pipelines: raw tensor bytes, meta headers, bounded inflate.

Every meta blob a pipeline writes starts with a one-byte kind and a one-byte format version,
followed by little-endian ``struct`` fields:

======  ==================  ===========================================================
kind    written by          body
======  ==================  ===========================================================
``R``   every lossy one     nothing: the payload is the raw tensor bytes (non-float or empty)
``H``   random_shift        ``<Q`` noise seed
``T``   stc                 ``<QQd`` element count, kept count, mean magnitude
``S``   skc                 ``<QQH`` element count, kept count, centroid count, then centroids
``K``   kc                  ``<QH`` element count, centroid count, then centroids (``<f8`` each)
======  ==================  ===========================================================

Decoders check every declared size against ``dtype.itemsize * prod(shape)`` before allocating,
and raise ``ValueError`` for anything that does not add up.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import numpy as np

FORMAT_VERSION = 1

KIND_RAW = b"R"
KIND_SHIFT = b"H"
KIND_STC = b"T"
KIND_SKC = b"S"
KIND_KC = b"K"

#: dtype kinds a pipeline accepts: bool, signed and unsigned integers, floats, complex.
NUMERIC_KINDS = "biufc"


def as_wire_array(tensor: Any) -> np.ndarray:
    """``tensor`` as a C-contiguous little-endian array; no copy when it already is one."""
    array = np.asarray(tensor)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise ValueError(
            f"cannot compress a tensor of dtype {array.dtype}: only bool, integer, float and "
            "complex tensors are supported"
        )
    little = array.dtype.newbyteorder("<")
    if array.dtype != little:
        array = array.astype(little)
    return np.ascontiguousarray(array)


def raw_bytes(array: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous little-endian array (no copy)."""
    return array.reshape(-1).view(np.uint8).data


def is_quantizable(dtype: np.dtype) -> bool:
    """True for the float dtypes lossy pipelines transform (float16/32/64)."""
    return dtype.kind == "f" and dtype.itemsize in (2, 4, 8)


def tensor_layout(dtype: Any, shape: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate a decode request; return ``(dtype, shape, element count)``."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"not a dtype: {dtype!r}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"cannot decode a tensor of dtype {dtype}")
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"tensor shape must be a sequence of integers, got {shape!r}") from None
    clean: list[int] = []
    for dim in dims:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
            raise ValueError(f"tensor shape must hold integers, got {shape!r}")
        if dim < 0:
            raise ValueError(f"tensor shape must not be negative, got {shape!r}")
        clean.append(int(dim))
    return dtype, tuple(clean), math.prod(clean)


def as_bytes_view(data: Any, what: str) -> memoryview:
    """``data`` (bytes, bytearray, memoryview) as a flat byte memoryview."""
    try:
        view = memoryview(data)
    except TypeError:
        raise ValueError(f"{what} must be bytes, got {type(data).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"{what} must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def raw_tensor(payload: Any, dtype: np.dtype, shape: tuple[int, ...], count: int) -> np.ndarray:
    """Rebuild a tensor from its raw little-endian bytes; the result owns its memory."""
    data = as_bytes_view(payload, "payload")
    expected = count * dtype.itemsize
    if data.nbytes != expected:
        raise ValueError(
            f"payload holds {data.nbytes} bytes, but a {dtype} tensor of shape {shape} needs "
            f"{expected}; the payload is truncated or does not belong to this tensor"
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    little = dtype.newbyteorder("<")
    flat = np.frombuffer(data, dtype=little, count=count).copy()
    if dtype == np.bool_ and int(flat.view(np.uint8).max()) > 1:
        raise ValueError("payload of a bool tensor holds bytes other than 0 and 1")
    if little != dtype:
        flat = flat.astype(dtype)
    return flat.reshape(shape)


def pack_meta(kind: bytes, fmt: str = "", *fields: Any) -> bytes:
    """Meta header ``kind + version`` followed by ``struct.pack('<' + fmt, *fields)``."""
    return kind + bytes([FORMAT_VERSION]) + struct.pack("<" + fmt, *fields)


def meta_kind(meta: Any, pipeline: str, allowed: bytes) -> tuple[bytes, memoryview]:
    """Split ``meta`` into its kind byte and body; refuse unknown kinds and versions."""
    view = as_bytes_view(meta, "meta")
    if view.nbytes < 2:
        raise ValueError(f"{pipeline} meta is {view.nbytes} bytes long; it is truncated")
    kind = bytes(view[:1])
    if kind not in [allowed[i : i + 1] for i in range(len(allowed))]:
        raise ValueError(
            f"{pipeline} meta has unknown kind {kind!r}; was it written by {pipeline}?"
        )
    if view[1] != FORMAT_VERSION:
        raise ValueError(
            f"{pipeline} meta has format version {view[1]}, this fedrun reads {FORMAT_VERSION}"
        )
    return kind, view[2:]


def unpack_fields(fmt: str, body: memoryview, pipeline: str) -> tuple[tuple[Any, ...], memoryview]:
    """Unpack ``<fmt`` from the start of ``body``; return the fields and the bytes after them."""
    size = struct.calcsize("<" + fmt)
    if body.nbytes < size:
        raise ValueError(f"{pipeline} meta is truncated")
    return struct.unpack_from("<" + fmt, body), body[size:]


def check_body_length(body: memoryview, expected: int, pipeline: str) -> None:
    """Refuse meta with missing or trailing bytes."""
    if body.nbytes != expected:
        raise ValueError(
            f"{pipeline} meta body is {body.nbytes} bytes, expected {expected}; it is garbled"
        )


def check_count(declared: int, count: int, pipeline: str) -> None:
    """The element count stored in meta must match the tensor's shape."""
    if declared != count:
        raise ValueError(
            f"{pipeline} meta describes {declared} elements, but the tensor shape has {count}"
        )


#: zlib level: 3 is within a few percent of 6 on codes and masks, and several times faster.
ZLIB_LEVEL = 3


def deflate(data: bytes | memoryview) -> bytes:
    """zlib-compress ``data``."""
    return zlib.compress(data, ZLIB_LEVEL)


def inflate(payload: Any, expected: int, pipeline: str) -> bytes:
    """Decompress a zlib payload that must expand to exactly ``expected`` bytes.

    Never produces more than ``expected + 1`` bytes, whatever the payload claims, so a forged
    payload cannot make the decoder allocate more than the tensor's own size.
    """
    data = as_bytes_view(payload, "payload")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, expected + 1)
    except zlib.error as exc:
        raise ValueError(f"{pipeline} payload is not valid compressed data ({exc})") from None
    if len(out) != expected or not inflater.eof or inflater.unused_data:
        raise ValueError(
            f"{pipeline} payload does not expand to the {expected} bytes this tensor needs; "
            "it is truncated, garbled or belongs to another tensor"
        )
    return out


def packed_length(bits: int) -> int:
    """Bytes taken by ``bits`` bits packed 8 to a byte."""
    return (bits + 7) // 8


def unpack_bits(data: bytes | memoryview, bits: int, pipeline: str, what: str) -> np.ndarray:
    """Unpack ``bits`` bits (big-endian bit order, as ``np.packbits``) to a bool array.

    The padding bits of the last byte must be zero.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != packed_length(bits):
        raise ValueError(f"{pipeline} {what} has the wrong length")
    unpacked = np.unpackbits(raw)
    if unpacked[bits:].any():
        raise ValueError(f"{pipeline} {what} has stray padding bits; the payload is garbled")
    return unpacked[:bits].astype(bool)
