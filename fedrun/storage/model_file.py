"""Model files (``save/init.pbuf``, ``best.pbuf``, ``last.pbuf``).

A model file is a sequence of length-delimited protobuf ``TensorFrame`` messages: one
``ModelInfo`` frame (round, plan hash, tensor count), then each tensor as a header frame and its
raw payload chunks, exactly as on the wire. Being a stream rather than one protobuf message, it
has no 2 GiB limit, and it is written to a temporary file and renamed, so a crash while saving
never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from google.protobuf.internal.encoder import _VarintBytes

from fedrun.buffers import BufferPool
from fedrun.errors import ProtocolError, StateError
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import DecodedTensor, check_header, raw_bytes, wire_dtype

MAGIC = b"FEDRUN-MODEL-2\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp makes 0600 files; model files are not secrets, so they get the usual 0644
FILE_MODE = 0o666 & ~_umask()


@dataclass
class ModelSnapshot:
    """A model read from disk: its tensors and where it came from."""

    tensors: dict[str, np.ndarray]
    round: int = 0
    plan_hash: str = ""
    kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def _write_frame(out: BinaryIO, frame: pb.TensorFrame) -> None:
    data = frame.SerializeToString()
    out.write(_VarintBytes(len(data)))
    out.write(data)


def _write_tensor(out: BinaryIO, name: str, array: np.ndarray, delta: bool = False) -> None:
    """A tensor header frame, then the tensor's raw little-endian bytes (no copy, no chunks)."""
    arr = np.asarray(array)
    payload = raw_bytes(arr)
    header = pb.TensorHeader(
        name=name,
        dtype=wire_dtype(arr.dtype),
        shape=list(arr.shape),
        payload_bytes=len(payload),
        encoding="none",
        delta=delta,
    )
    _write_frame(out, pb.TensorFrame(header=header))
    out.write(payload)


def save_model(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    *,
    round_num: int,
    plan_hash: str = "",
    kind: str = "",
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write ``tensors`` atomically to ``path`` and return the path."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise StateError(
            "FX-STATE-001",
            f"cannot write the model file {target}: {exc.strerror}",
            f"make {target.parent} writable, or point the plan's *_state_path elsewhere",
        ) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC)
            info = pb.ModelInfo(
                round=round_num,
                plan_hash=plan_hash,
                tensor_count=len(tensors),
                kind=kind,
                metrics=dict(metrics or {}),
            )
            _write_frame(out, pb.TensorFrame(model=info))
            for name, array in tensors.items():
                _write_tensor(out, name, array)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _corrupt(path: Path, what: str) -> StateError:
    return StateError(
        "FX-STATE-002",
        f"model file {path} is corrupt: {what}",
        "restore it from a copy, or re-create init.pbuf with `fx plan initialize`",
    )


class TensorFileWriter:
    """Writes tensors one at a time into a model file, atomically on :meth:`commit`.

    Used to spool an incoming result to disk as it streams in, so the aggregator holds one
    tensor at a time in memory and an accepted result survives a crash.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        round_num: int,
        tensor_count: int,
        plan_hash: str = "",
        kind: str = "",
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._out = os.fdopen(fd, "wb")
        self._out.write(MAGIC)
        info = pb.ModelInfo(
            round=round_num, plan_hash=plan_hash, tensor_count=tensor_count, kind=kind
        )
        _write_frame(self._out, pb.TensorFrame(model=info))
        self.count = 0

    def write(self, name: str, array: np.ndarray, *, delta: bool = False) -> None:
        _write_tensor(self._out, name, array, delta)
        self.count += 1

    def commit(self) -> Path:
        self._out.flush()
        if self.durable:
            os.fsync(self._out.fileno())
        self._out.close()
        os.chmod(self._tmp, FILE_MODE)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._out.closed:
            self._out.close()
        self._tmp.unlink(missing_ok=True)


def _stream(
    path: str | os.PathLike[str], pool: BufferPool | None = None
) -> Iterator[pb.ModelInfo | DecodedTensor]:
    """Yield a model file's header, then its tensors one at a time (never the whole file).

    Each tensor's payload is read straight into its array's memory. A corrupt or truncated file
    raises :class:`StateError` (``FX-STATE-002``), also when it ends cleanly between tensors but
    holds fewer than its header announced.
    """
    source = Path(path)
    with open(source, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise _corrupt(source, "not a fedrun model file (bad magic or an older format)")
        expected: int | None = None
        seen = 0
        while True:
            frame = _read_frame(f, source)
            if frame is None:
                break
            kind = frame.WhichOneof("body")
            if expected is None:
                if kind != "model":
                    raise _corrupt(source, "missing model header")
                expected = frame.model.tensor_count
                yield frame.model
                continue
            if kind != "header" or frame.header.encoding not in ("", "none"):
                raise _corrupt(source, f"unexpected {kind!r} frame")
            header = frame.header
            try:
                dtype = check_header(header)
            except ProtocolError as exc:
                raise _corrupt(source, exc.message) from exc
            shape = tuple(int(d) for d in header.shape)
            array = (
                pool.take_array(shape, dtype) if pool is not None else np.empty(shape, dtype=dtype)
            )
            view = array.reshape(-1).view(np.uint8).data if array.size else memoryview(b"")
            got = f.readinto(view) if array.size else 0
            if got != header.payload_bytes:
                raise _corrupt(source, f"tensor {header.name!r} is truncated")
            seen += 1
            yield DecodedTensor(header.name, array, header.delta, int(header.payload_bytes))
        if expected is None:
            raise _corrupt(source, "missing model header")
        if seen != expected:
            raise _corrupt(source, f"{seen} of {expected} tensors present")


def _read_frame(f: BinaryIO, source: Path) -> pb.TensorFrame | None:
    try:
        size = _read_varint(f)
    except ValueError as exc:
        raise _corrupt(source, "truncated frame length") from exc
    if size is None:
        return None
    data = f.read(size)
    if len(data) != size:
        raise _corrupt(source, "file ends inside a frame (truncated?)")
    frame = pb.TensorFrame()
    try:
        frame.ParseFromString(data)
    except Exception as exc:
        raise _corrupt(source, "unreadable frame") from exc
    return frame


def iter_tensor_file(
    path: str | os.PathLike[str], pool: BufferPool | None = None
) -> Iterator[tuple[str, np.ndarray, bool]]:
    """Yield ``(name, array, delta)`` from a model file, one tensor at a time; with a ``pool``
    the arrays live in pooled buffers the caller may give back once done with them."""
    for item in _stream(path, pool):
        if isinstance(item, DecodedTensor):
            yield item.name, item.array, item.delta


def _read_varint(f: BinaryIO) -> int | None:
    shift = 0
    result = 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7


def load_model(path: str | os.PathLike[str]) -> ModelSnapshot:
    """Read a model file written by :func:`save_model` (streamed: about one model of memory)."""
    source = Path(path)
    if not source.is_file():
        raise StateError(
            "FX-STATE-003",
            f"model file {source} does not exist",
            "run `fx plan initialize` to create save/init.pbuf",
        )
    items = _stream(source)
    info = next(items)
    assert isinstance(info, pb.ModelInfo)
    tensors = {t.name: t.array for t in items if isinstance(t, DecodedTensor)}
    return ModelSnapshot(tensors, info.round, info.plan_hash, info.kind, dict(info.metrics))
