"""TensorCodec: numpy arrays to wire frames and back.

A tensor crosses the wire as one ``TensorHeader`` frame (name, dtype, shape, payload length,
encoding) followed by ``data`` frames of at most :data:`~fedrun.constants.CHUNK_BYTES` each. The
receiver allocates the payload buffer once from the declared length (after checking it against
dtype and shape), copies each chunk into place, and decodes. Nothing here knows about rounds.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from google.protobuf.internal.decoder import _DecodeVarint
from google.protobuf.internal.encoder import _VarintBytes

from fedrun.buffers import BufferPool
from fedrun.compression.base import CompressionPipeline
from fedrun.constants import CHUNK_BYTES, MAX_TENSOR_BYTES
from fedrun.errors import PlanError, ProtocolError, shown
from fedrun.protocol import federation_pb2 as pb

#: dtypes that may cross the wire (numeric and bool; never object or structured dtypes)
ALLOWED_KINDS = frozenset("biuf")


@dataclass
class DecodedTensor:
    """A tensor as received: its array and whether it is a delta against the global model.

    ``buffer`` is the pooled memory behind ``array`` when the receiver uses a buffer pool; hand it
    back with ``pool.give(tensor.buffer)`` once the array is no longer needed.
    """

    name: str
    array: np.ndarray
    delta: bool = False
    payload_bytes: int = 0
    buffer: np.ndarray | None = None


def wire_dtype(dtype: np.dtype) -> str:
    """Little-endian dtype string for the header (``<f4``, ``|u1``...)."""
    dt = np.dtype(dtype)
    if dt.kind not in ALLOWED_KINDS:
        raise ProtocolError(
            "FX-WIRE-001",
            f"dtype {dt} cannot be sent (only bool, integer and float tensors travel)",
            "convert the tensor to a numeric dtype in get_tensor_dict",
        )
    return dt.newbyteorder("<").str if dt.itemsize > 1 else dt.str


def parse_dtype(text: str) -> np.dtype:
    """Parse and check a header dtype string."""
    try:
        dt = np.dtype(text)
    except TypeError as exc:
        raise ProtocolError("FX-WIRE-002", f"unknown dtype {shown(text)} in tensor header") from exc
    if dt.kind not in ALLOWED_KINDS:
        raise ProtocolError("FX-WIRE-002", f"dtype {shown(text)} is not allowed on the wire")
    return dt


def raw_bytes(array: np.ndarray) -> memoryview:
    """The array's C-order little-endian bytes, without a copy when it already is."""
    arr = np.asarray(array)
    if not in_wire_order(arr.dtype):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    return arr.data.cast("B") if arr.size else memoryview(b"")


def in_wire_order(dtype: np.dtype) -> bool:
    """True when the dtype's bytes are already little-endian (or have no byte order)."""
    return not (dtype.byteorder == ">" or (dtype.byteorder == "=" and not np.little_endian))


def raw_header(name: str, array: np.ndarray, *, delta: bool = False) -> pb.TensorHeader:
    """The header of an uncompressed tensor: its raw little-endian bytes follow."""
    return layout_header(name, array.shape, array.dtype, delta=delta)


def layout_header(
    name: str, shape: tuple[int, ...], dtype: np.dtype, *, delta: bool = False
) -> pb.TensorHeader:
    """The header of an uncompressed tensor of this shape and dtype (its bytes follow)."""
    dt = np.dtype(dtype)
    return pb.TensorHeader(
        name=name,
        dtype=wire_dtype(dt),
        shape=list(shape),
        payload_bytes=int(np.prod(shape, dtype=np.int64)) * dt.itemsize,
        encoding="none",
        delta=delta,
    )


def encode_tensor(
    name: str,
    array: np.ndarray,
    *,
    pipeline: CompressionPipeline | None = None,
    delta: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[pb.TensorFrame]:
    """Yield the frames of one tensor: a header, then payload chunks."""
    arr = np.asarray(array)
    dtype = wire_dtype(arr.dtype)
    if pipeline is None or pipeline.name == "none":
        payload: bytes | memoryview = raw_bytes(arr)
        meta = b""
        encoding = "none"
    else:
        payload, meta = pipeline.encode(arr)
        encoding = pipeline.name
    view = memoryview(payload).cast("B") if not isinstance(payload, memoryview) else payload
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    header = pb.TensorHeader(
        name=name,
        dtype=dtype,
        shape=list(arr.shape),
        payload_bytes=len(view),
        encoding=encoding,
        encoding_meta=meta,
        delta=delta,
    )
    yield pb.TensorFrame(header=header)
    if chunk_bytes <= 0:  # internal: hand the payload view to encode_tensor_wire
        yield view  # type: ignore[misc]
        return
    for start in range(0, len(view), chunk_bytes):
        yield pb.TensorFrame(data=bytes(view[start : start + chunk_bytes]))


def encode_tensors(
    tensors: Mapping[str, np.ndarray],
    *,
    pipeline: CompressionPipeline | None = None,
    delta: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[pb.TensorFrame]:
    """Yield the frames of several tensors, one after the other."""
    for name, array in tensors.items():
        yield from encode_tensor(
            name, array, pipeline=pipeline, delta=delta, chunk_bytes=chunk_bytes
        )


# ---------------------------------------------------------------------- wire fast path
#: first byte of a serialized ``TensorFrame`` whose body is ``data`` (field 2, length-delimited)
DATA_TAG = 0x12
#: first byte of a serialized ``TensorFrame`` whose body is ``batch`` (field 5, length-delimited)
BATCH_TAG = 0x2A


class DataChunk(NamedTuple):
    """A data frame decoded without building a protobuf message (a view on the received bytes)."""

    view: memoryview


def data_frame_bytes(chunk: memoryview) -> bytes:
    """The serialized ``TensorFrame(data=chunk)``, built with one copy of the chunk.

    Byte for byte what protobuf would produce, without the three copies of building a message and
    serializing it; the receiver may still parse it as an ordinary ``TensorFrame``.
    """
    return b"".join((bytes((DATA_TAG,)), _VarintBytes(len(chunk)), chunk))


def serialize_frame(frame: pb.TensorFrame | bytes) -> bytes:
    """gRPC serializer for tensor streams: pre-serialized frames pass through untouched."""
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


def data_view(frame: pb.TensorFrame, tensor: str) -> memoryview:
    """The payload of a frame that must be a data frame (inside a tensor's stream)."""
    if frame.WhichOneof("body") != "data":
        raise ProtocolError(
            "FX-WIRE-007",
            f"tensor {shown(tensor)} ended before its declared size "
            f"(a {frame.WhichOneof('body')!r} frame came inside it)",
        )
    return memoryview(frame.data)


class FrameBatch(NamedTuple):
    """A received ``batch`` frame, split into its frames by :func:`expand_frames`."""

    view: memoryview


class UnreadableFrame(NamedTuple):
    """A received message that is no TensorFrame; :func:`expand_frames` refuses it by name."""

    reason: str


def parse_frame(
    raw: bytes | memoryview,
) -> pb.TensorFrame | DataChunk | FrameBatch | UnreadableFrame:
    """gRPC deserializer for tensor streams: data frames become views, batches are kept whole
    (split by :func:`expand_frames`, where a malformed one is refused), others messages.

    It never raises: gRPC would log a traceback, end the stream with "Exception deserializing"
    and leave the reader to guess why its stream ended early.
    """
    try:
        if raw and raw[0] in (DATA_TAG, BATCH_TAG):
            length, pos = _DecodeVarint(raw, 1)
            if pos + length == len(raw):
                view = memoryview(raw)[pos:]
                return DataChunk(view) if raw[0] == DATA_TAG else FrameBatch(view)
        return pb.TensorFrame.FromString(bytes(raw))  # no copy when ``raw`` is bytes
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, a varint past the end
        return UnreadableFrame(f"{type(exc).__name__}: {exc}")


def batch_frames(
    frames: Iterable[pb.TensorFrame | bytes], limit: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """Serialized frames for a tensor stream, runs of small ones packed into ``batch`` frames of
    at most ``limit`` bytes.

    Every gRPC message costs both ends a fixed amount of work (HTTP/2 and TLS framing, completion
    events, a Python wake-up); a model of small tensors otherwise needs two messages per tensor.
    Frames of ``limit // 2`` bytes or more (full data chunks) go alone and are never copied.
    """
    pending: list[bytes] = []
    size = 0
    for frame in frames:
        raw = serialize_frame(frame)
        alone = len(raw) >= limit // 2
        item = len(raw) + len(_VarintBytes(len(raw)))
        if pending and (alone or size + item + 16 > limit):
            yield _pack(pending, size)
            pending, size = [], 0
        if alone:
            yield raw
        else:
            pending.append(raw)
            size += item
    if pending:
        yield _pack(pending, size)


def _pack(frames: list[bytes], size: int) -> bytes:
    """One serialized frame as it is, several as a ``batch`` frame of ``size`` payload bytes."""
    if len(frames) == 1:
        return frames[0]
    parts = [bytes((BATCH_TAG,)), _VarintBytes(size)]
    for raw in frames:
        parts += (_VarintBytes(len(raw)), raw)
    return b"".join(parts)


def expand_frames(
    messages: Iterable[pb.TensorFrame | DataChunk | FrameBatch | UnreadableFrame],
) -> Iterator[pb.TensorFrame | DataChunk]:
    """The frames of a tensor stream, with ``batch`` frames opened (ProtocolError if malformed)."""
    for message in messages:
        if isinstance(message, UnreadableFrame):
            raise ProtocolError(
                "FX-WIRE-015",
                f"a message of the tensor stream is not a TensorFrame ({message.reason})",
                "use the same fedrun version on every node",
            )
        if not isinstance(message, FrameBatch):
            if isinstance(message, pb.TensorFrame) and message.WhichOneof("body") == "batch":
                raise ProtocolError("FX-WIRE-014", "a batch frame's length does not match")
            yield message
            continue
        yield from _split_batch(message.view)


def _split_batch(view: memoryview) -> Iterator[pb.TensorFrame | DataChunk]:
    pos, end = 0, len(view)
    while pos < end:
        try:
            length, start = _DecodeVarint(view, pos)
        except Exception:  # noqa: BLE001 - a varint running past the end
            length, start = end + 1, end
        pos = start + length
        if pos > end or length == 0:
            raise ProtocolError("FX-WIRE-014", "a batch frame is cut short or holds an empty frame")
        if view[start] == BATCH_TAG:
            raise ProtocolError("FX-WIRE-014", "a batch frame holds another batch frame")
        frame = parse_frame(view[start:pos])
        if isinstance(frame, UnreadableFrame):
            raise ProtocolError(
                "FX-WIRE-014", f"a frame inside a batch is not a TensorFrame ({frame.reason})"
            )
        assert not isinstance(frame, FrameBatch)  # its tag was checked above
        yield frame


def mapped_file_range(array: np.ndarray) -> tuple[str, int, int] | None:
    """``(file, offset, length)`` when ``array`` is a whole read-only memory map of a file region
    in wire byte order (as the aggregator keeps its global model), else None."""
    if (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)
        and array.filename
        and array.flags.c_contiguous
        and in_wire_order(array.dtype)
        and array.size
    ):
        return str(array.filename), int(array.offset), int(array.nbytes)
    return None


#: attribute a memory-mapped model tensor carries: ``(st_dev, st_ino)`` of the file it maps
FILE_IDENTITY = "fedrun_file_identity"


def _open_same_file(array: np.ndarray, path: str) -> int | None:
    """A descriptor of the file ``array`` maps, or None when that path now names another file
    (``last.pbuf`` replaced by the next round while a late download still reads the old one)."""
    identity = getattr(array, FILE_IDENTITY, None)
    if identity is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != identity:
        os.close(fd)
        return None
    return fd


def _file_data_frames(fd: int, offset: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
    """Data frames read straight from the file (page cache), never mapped into this process:
    a served model costs no resident memory. Closes ``fd``."""
    try:
        end = offset + length
        while offset < end:
            n = min(chunk_bytes, end - offset)
            chunk = os.pread(fd, n, offset)
            if len(chunk) != n:
                raise ProtocolError("FX-WIRE-013", "a model file ended while being sent")
            yield data_frame_bytes(memoryview(chunk))
            offset += n
    finally:
        os.close(fd)


def encode_tensor_wire(
    name: str,
    array: np.ndarray,
    *,
    pipeline: CompressionPipeline | None = None,
    delta: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[pb.TensorFrame | bytes]:
    """:func:`encode_tensor`, with data frames already serialized (for :func:`serialize_frame`).

    A tensor memory-mapped from a model file is read from the file chunk by chunk instead."""
    mapped = mapped_file_range(array) if pipeline is None else None
    fd = _open_same_file(array, mapped[0]) if mapped is not None else None
    if mapped is not None and fd is not None:
        _, offset, length = mapped
        yield pb.TensorFrame(header=raw_header(name, array, delta=delta))
        yield from _file_data_frames(fd, offset, length, chunk_bytes)
        return
    frames = encode_tensor(name, array, pipeline=pipeline, delta=delta, chunk_bytes=0)
    header_frame = next(frames)
    yield header_frame
    view = next(frames)  # with chunk_bytes=0 the encoder hands back the whole payload view
    assert isinstance(view, memoryview)
    for start in range(0, len(view), chunk_bytes):
        yield data_frame_bytes(view[start : start + chunk_bytes])


def check_header(header: pb.TensorHeader, max_bytes: int = MAX_TENSOR_BYTES) -> np.dtype:
    """Refuse headers whose declared size is impossible before allocating anything."""
    if not header.name:
        raise ProtocolError("FX-WIRE-003", "tensor header without a name")
    dtype = parse_dtype(header.dtype)
    if any(d < 0 for d in header.shape):
        raise ProtocolError("FX-WIRE-004", f"tensor {shown(header.name)} has a negative dimension")
    expected = dtype.itemsize * int(np.prod(header.shape, dtype=np.float64))
    # a zero dimension makes the size 0 whatever the others are; numpy still refuses the shape
    # when they are absurd, so they are held to the limit as well
    spanned = dtype.itemsize * int(np.prod([d for d in header.shape if d], dtype=np.float64))
    if expected == 0 and spanned > max_bytes:
        raise ProtocolError(
            "FX-WIRE-004",
            f"tensor {shown(header.name)} has an impossible shape "
            f"{shown(str(tuple(header.shape)))}",
        )
    if expected > max_bytes or header.payload_bytes > max_bytes:
        raise ProtocolError(
            "FX-WIRE-005",
            f"tensor {shown(header.name)} declares {max(expected, header.payload_bytes)} bytes, "
            f"over the limit of {max_bytes}",
        )
    if header.encoding in ("", "none") and header.payload_bytes != expected:
        raise ProtocolError(
            "FX-WIRE-006",
            f"tensor {shown(header.name)}: {header.payload_bytes} payload bytes for dtype "
            f"{dtype} and shape {tuple(header.shape)} (expected {expected})",
        )
    if header.payload_bytes > encoded_limit(expected):
        raise ProtocolError(
            "FX-WIRE-006",
            f"tensor {shown(header.name)}: {header.payload_bytes} encoded payload bytes for "
            f"{expected} bytes of dtype {dtype} and shape {tuple(header.shape)}; no pipeline "
            f"makes more than {encoded_limit(expected)}",
        )
    return dtype


def encoded_limit(raw: int) -> int:
    """Most payload bytes a compression pipeline may send for a tensor of ``raw`` bytes.

    Every pipeline sends at most the raw bytes plus a few bytes of framing (an incompressible
    tensor through zlib); the generous bound only keeps a receiver from buffering a payload
    out of all proportion to the tensor it claims to be.
    """
    return 2 * raw + (64 << 10)


#: what a downloaded model may hold beyond ``UNKNOWN_FACTOR`` times the tensors a collaborator's
#: model has (e.g. optimizer state the aggregator keeps that the runner has not made yet)
UNKNOWN_SLACK_BYTES = 64 << 20
UNKNOWN_FACTOR = 3


class ExpectedModel:
    """What a global model downloaded by a collaborator may hold, known before it arrives: its
    own model's tensor names and shapes. A tensor is checked when its header comes, before any
    memory is taken for it: a name sent twice, a known tensor of another shape, or more bytes
    in all than the model (with room for tensors it does not know, such as optimizer state)
    end the download with an error instead of growing memory without bound."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], nbytes: int) -> None:
        self.shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self.model_bytes = int(nbytes)
        self.budget = UNKNOWN_FACTOR * self.model_bytes + UNKNOWN_SLACK_BYTES
        self._seen: set[str] = set()
        self._declared = 0

    @classmethod
    def of(cls, tensors: Mapping[str, np.ndarray]) -> ExpectedModel:
        """The expectation a model's own tensors set."""
        return cls(
            {n: tuple(a.shape) for n, a in tensors.items()},
            sum(int(a.nbytes) for a in tensors.values()),
        )

    def start(self, held: Mapping[str, np.ndarray] | None = None) -> None:
        """A new download; one resumed after a break starts with the tensors it already holds
        (not to be sent again, and counted against the budget)."""
        held = held or {}
        self._seen = set(held)
        self._declared = sum(int(a.nbytes) for a in held.values())

    def admit(self, header: pb.TensorHeader, dtype: np.dtype) -> None:
        """Accept ``header`` or raise why not."""
        name = header.name
        if name in self._seen:
            raise ProtocolError(
                "FX-WIRE-023",
                f"the aggregator sent tensor {shown(name)} twice in one model",
                "the aggregator is faulty or not a fedrun aggregator of this version: check "
                "agg_addr/agg_port and the aggregator's fedrun version",
            )
        self._seen.add(name)
        shape = tuple(int(d) for d in header.shape)
        wanted = self.shapes.get(name)
        if wanted is not None and shape != wanted:
            raise PlanError(
                "FX-MODEL-002",
                f"tensor {shown(name)} has shape {shown(str(shape))}, the model expects {wanted}",
                "every node must run the same task runner code (src/)",
            )
        raw = dtype.itemsize * int(np.prod(shape, dtype=np.float64))
        self._declared += max(raw, int(header.payload_bytes))
        if self._declared > self.budget:
            raise ProtocolError(
                "FX-WIRE-024",
                f"the model the aggregator sends holds more than {self.budget} bytes after "
                f"{len(self._seen)} tensors; this collaborator's model has {len(self.shapes)} "
                f"tensors of {self.model_bytes} bytes",
                "the aggregator serves another model: check that it runs this plan and task "
                "runner code (src/), and that agg_addr/agg_port point at it",
            )


class TensorAssembler:
    """Rebuilds tensors from a frame stream, one at a time.

    Feed frames with :meth:`feed`; each completed tensor is returned as soon as its last chunk
    arrives, so a consumer can fold it in and drop it before the next one is received.
    """

    def __init__(
        self,
        pipelines: Mapping[str, CompressionPipeline] | None = None,
        max_bytes: int = MAX_TENSOR_BYTES,
        pool: BufferPool | None = None,
        expected: ExpectedModel | None = None,
    ) -> None:
        self.pipelines = dict(pipelines or {})
        self.max_bytes = max_bytes
        self.pool = pool
        self.expected = expected
        self._header: pb.TensorHeader | None = None
        self._dtype: np.dtype | None = None
        self._buffer: np.ndarray | None = None
        self._filled = 0

    @property
    def busy(self) -> bool:
        """True while a tensor is partly received."""
        return self._header is not None

    def feed(self, frame: pb.TensorFrame | DataChunk) -> DecodedTensor | None:
        """Consume one frame; return a tensor when this frame completed it."""
        if isinstance(frame, DataChunk):
            return self._data(frame.view)
        kind = frame.WhichOneof("body")
        if kind == "header":
            if self._header is not None:
                raise ProtocolError(
                    "FX-WIRE-007",
                    f"tensor {shown(self._header.name)} ended after {self._filled} of "
                    f"{self._header.payload_bytes} bytes",
                )
            self._dtype = check_header(frame.header, self.max_bytes)
            self._check_encoding(frame.header)
            if self.expected is not None:
                self.expected.admit(frame.header, self._dtype)
            self._header = frame.header
            size = int(frame.header.payload_bytes)
            self._buffer = (
                self.pool.take(size) if self.pool is not None else np.empty(size, np.uint8)
            )
            self._filled = 0
            if frame.header.payload_bytes == 0:
                return self._finish()
            return None
        if kind == "data":
            return self._data(memoryview(frame.data))
        raise ProtocolError("FX-WIRE-009", f"unexpected frame {kind!r} inside a tensor stream")

    def _check_encoding(self, header: pb.TensorHeader) -> None:
        """Refuse an encoding this side's plan does not use before any payload is buffered."""
        if header.encoding not in ("", "none") and header.encoding not in self.pipelines:
            raise ProtocolError(
                "FX-WIRE-010",
                f"tensor {shown(header.name)} uses encoding {shown(header.encoding)}, "
                "which this side's plan does not use",
                "use the same compression_pipeline on every node",
            )

    def _data(self, chunk: memoryview) -> DecodedTensor | None:
        if self._header is None or self._buffer is None:
            raise ProtocolError("FX-WIRE-008", "tensor data frame without a header")
        end = self._filled + len(chunk)
        if end > len(self._buffer):
            raise ProtocolError(
                "FX-WIRE-007",
                f"tensor {shown(self._header.name)} sent more than its declared "
                f"{self._header.payload_bytes} bytes",
            )
        self._buffer[self._filled : end] = np.frombuffer(chunk, dtype=np.uint8)
        self._filled = end
        if end == len(self._buffer):
            return self._finish()
        return None

    def _finish(self) -> DecodedTensor:
        assert self._header is not None and self._dtype is not None and self._buffer is not None
        header, dtype, buffer = self._header, self._dtype, self._buffer
        self._header = self._dtype = self._buffer = None
        shape = tuple(int(d) for d in header.shape)
        if header.encoding in ("", "none"):
            array = buffer.view(dtype).reshape(shape) if buffer.size else np.empty(shape, dtype)
            pooled = buffer if self.pool is not None else None
            return DecodedTensor(
                header.name, array, header.delta, int(header.payload_bytes), pooled
            )
        pipeline = self.pipelines[header.encoding]  # known: checked with the header
        try:
            array = pipeline.decode(buffer.data, header.encoding_meta, dtype, shape)
        except ValueError as exc:
            raise ProtocolError(
                "FX-WIRE-011", f"tensor {shown(header.name)} could not be decoded: {exc}"
            ) from exc
        if self.pool is not None and not np.shares_memory(array, buffer):
            self.pool.give(buffer)  # the decoded array is new memory; the payload is done
        return DecodedTensor(header.name, array, header.delta, int(header.payload_bytes))

    def close(self) -> None:
        """Call at end of stream: a half-received tensor is an error."""
        if self._header is not None:
            raise ProtocolError(
                "FX-WIRE-007",
                f"stream ended inside tensor {shown(self._header.name)} "
                f"({self._filled} of {self._header.payload_bytes} bytes)",
            )


def decode_frames(
    frames: Iterable[pb.TensorFrame | DataChunk],
    pipelines: Mapping[str, CompressionPipeline] | None = None,
    pool: BufferPool | None = None,
    expected: ExpectedModel | None = None,
    held: Mapping[str, np.ndarray] | None = None,
) -> Iterator[DecodedTensor]:
    """Yield every tensor of a pure tensor stream (raw tensors in ``pool`` memory if given;
    each header held to ``expected`` if given, which counts ``held``: tensors of the same model
    received before, which the stream must not send again)."""
    if expected is not None:
        expected.start(held)
    assembler = TensorAssembler(pipelines, pool=pool, expected=expected)
    for frame in frames:
        tensor = assembler.feed(frame)
        if tensor is not None:
            yield tensor
    assembler.close()
