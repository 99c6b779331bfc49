"""Reading OpenFL's model files (``save/init.pbuf``, ``best.pbuf``, ``last.pbuf``).

OpenFL saves a model as one protobuf message: a list of named tensors, each with its round, tags,
the metadata of the compression pipeline's transforms and the payload. Its saved models are
uncompressed: one transform (float32 to bytes) whose metadata is the tensor's shape, and the
payload is the array as little-endian float32. This module reads that layout with a small
parser of the protobuf wire format (no generated code: OpenFL's schema is not a dependency), so
a team moving from OpenFL can start fedrun from an OpenFL model (``fx plan initialize -i``) or
export one (``fx model save -i``). Field numbers, as found in OpenFL 1.9's files::

    file        1: NamedTensor (repeated)
    NamedTensor 1: name  2: round  3: lossless  4: report  5: tags (repeated)
                6: transform metadata (repeated: 1 map int->float, 2 packed int32 list,
                   3 packed bool list)  7: payload bytes

Payloads compressed by a lossy pipeline (several transforms, or metadata beyond the shape) are
refused with a message saying so, never decoded into wrong numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedrun.errors import StateError

#: the first byte of an OpenFL model file: field 1, length-delimited
_FIRST_BYTE = 0x0A
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _Malformed(ValueError):
    pass


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) pairs of one message; length-delimited values as memoryviews."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _BYTES:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _Malformed(f"field {number} runs past the end")
            value, pos = data[pos : pos + size], pos + size
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
            if pos + size > len(data):
                raise _Malformed(f"field {number} runs past the end")
            value, pos = data[pos : pos + size], pos + size
        else:
            raise _Malformed(f"wire type {wire} of field {number}")
        if number == 0:
            raise _Malformed("field number 0")
        yield number, value


def _packed_ints(data: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        out.append(value)
    return out


def looks_like_openfl_model(path: str | Path) -> bool:
    """Whether ``path`` starts like an OpenFL model file (a cheap check of its first byte)."""
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError:
        return False
    return first == bytes([_FIRST_BYTE])


def read_openfl_model(path: str | Path) -> tuple[dict[str, np.ndarray], int]:
    """The tensors (float32, named as in OpenFL) and round of an OpenFL model file.

    Raises ``StateError`` FX-STATE-002 for a file that is not one (or is truncated), and
    FX-STATE-017 for one whose tensors were compressed by a lossy pipeline.
    """
    source = Path(path)
    data = memoryview(source.read_bytes())
    tensors: dict[str, np.ndarray] = {}
    round_num = 0
    try:
        for number, entry in _fields(data):
            if number != 1 or not isinstance(entry, memoryview):
                raise _Malformed(f"unexpected top-level field {number}")
            name, array, tensor_round = _named_tensor(entry)
            if name in tensors:
                raise _Malformed(f"tensor {name!r} appears twice")
            tensors[name] = array
            round_num = max(round_num, tensor_round)
    except _Malformed as exc:
        raise StateError(
            "FX-STATE-002",
            f"model file {source} is corrupt: not a fedrun model file (bad magic or an older "
            f"format), nor a readable OpenFL one ({exc})",
            "pass a model saved by fedrun or OpenFL (save/init.pbuf, best.pbuf, last.pbuf) or a "
            "native model file (.pt, .keras); re-create init.pbuf with `fx plan initialize`",
        ) from None
    except _Compressed as exc:
        raise StateError(
            "FX-STATE-017",
            f"{source} is an OpenFL model file whose tensor {exc.name!r} was compressed by "
            f"a compression pipeline ({exc.detail}); fedrun reads uncompressed OpenFL models",
            "use OpenFL's saved init/best/last.pbuf (they are uncompressed), or export the "
            "model from OpenFL in its native format (`fx model save`) and pass that file",
        ) from None
    if not tensors:
        raise StateError(
            "FX-STATE-002",
            f"{source} holds no tensors",
            "pass a model saved by fedrun or OpenFL, or a native model file",
        )
    return tensors, round_num


class _Compressed(Exception):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(name)
        self.name, self.detail = name, detail


def _named_tensor(entry: memoryview) -> tuple[str, np.ndarray, int]:
    name = ""
    round_num = 0
    transforms: list[memoryview] = []
    payload: memoryview | None = None
    for number, value in _fields(entry):
        if number == 1 and isinstance(value, memoryview):
            try:
                name = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise _Malformed("a tensor name is not UTF-8") from None
        elif number == 2 and isinstance(value, int):
            round_num = value
        elif number == 6 and isinstance(value, memoryview):
            transforms.append(value)
        elif number == 7 and isinstance(value, memoryview):
            payload = value
    if not name:
        raise _Malformed("a tensor without a name")
    if payload is None:
        payload = memoryview(b"")
    if len(transforms) != 1:
        raise _Compressed(name, f"{len(transforms)} transforms")
    shape: list[int] = []
    for number, value in _fields(transforms[0]):
        if number == 2 and isinstance(value, memoryview):
            shape.extend(_packed_ints(value))
        elif number == 2 and isinstance(value, int):  # an unpacked encoder
            shape.append(value)
        else:
            raise _Compressed(name, f"transform metadata field {number}")
    expected = math.prod(shape) * 4
    if len(payload) != expected:
        raise _Compressed(name, f"{len(payload)} payload bytes for shape {tuple(shape)}")
    array = np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32, copy=True)
    return name, array, round_num
