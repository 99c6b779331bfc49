"""Model files (``save/init.pbuf``, ``best.pbuf``, ``last.pbuf``).

A model file is a sequence of length-delimited protobuf ``TensorFrame`` messages: one
``ModelInfo`` frame (round, plan hash, tensor count), then each tensor as a header frame and its
raw payload chunks, exactly as on the wire. Being a stream rather than one protobuf message, it
has no 2 GiB limit, and it is written to a temporary file and renamed, so a crash while saving
never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from google.protobuf.internal.encoder import _VarintBytes

from fedrun.buffers import BufferPool
from fedrun.constants import CHUNK_BYTES
from fedrun.errors import ProtocolError, StateError
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import (
    FILE_IDENTITY,
    DecodedTensor,
    check_header,
    layout_header,
    mapped_file_range,
    raw_bytes,
    raw_header,
)
from fedrun.storage.openfl_model import looks_like_openfl_model, read_openfl_model

MAGIC = b"FEDRUN-MODEL-2\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp makes 0600 files; model files are not secrets, so they get the usual 0644 (as the
#: umask says, but never world-writable)
FILE_MODE = 0o666 & ~(_umask() | stat.S_IWOTH)


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


@dataclass
class TensorPieces:
    """A tensor handed over piece by piece: its shape and dtype, and its flat C-order values as
    consecutive arrays of that dtype (each need only stay valid until the next is asked for)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    pieces: Iterable[np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(layout_header("", self.shape, self.dtype).payload_bytes)


def _write_tensor(
    out: BinaryIO, name: str, array: np.ndarray | TensorPieces, delta: bool = False
) -> None:
    """A tensor header frame, then the tensor's raw little-endian bytes (no copy, no chunks)."""
    if isinstance(array, TensorPieces):
        header = layout_header(name, array.shape, array.dtype, delta=delta)
        _write_frame(out, pb.TensorFrame(header=header))
        written = 0
        for piece in array.pieces:
            if piece.dtype != array.dtype:
                raise ValueError(f"a piece of tensor {name!r} is {piece.dtype}, not {array.dtype}")
            data = raw_bytes(piece)
            out.write(data)
            written += len(data)
        if written != array.nbytes:
            raise ValueError(f"tensor {name!r}: {array.nbytes} bytes announced, {written} written")
        return
    arr = np.asarray(array)
    _write_frame(out, pb.TensorFrame(header=raw_header(name, arr, delta=delta)))
    out.write(raw_bytes(arr))


#: the random part ``tempfile.mkstemp`` adds to AtomicFile's temporary names
_TEMP_SUFFIX = re.compile(r"[a-z0-9_]{8}")


def stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Temporary files an :class:`AtomicFile` for ``target`` left behind (a process killed while
    writing it). Only the process that writes ``target`` may remove them, when it starts."""
    target = Path(target)
    prefix = f".{target.name}."
    try:
        names = [entry.name for entry in os.scandir(target.parent)]
    except OSError:
        return []
    return [
        target.parent / name
        for name in names
        if name.startswith(prefix) and _TEMP_SUFFIX.fullmatch(name[len(prefix) :])
    ]


#: a durable file asks the kernel to start writing it to disk after every this many bytes
WRITEBACK_BYTES = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, no wait


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_sync_file_range = _find_sync_file_range()


class EagerWritebackFile(io.BufferedWriter):
    """A buffered file that has the kernel start writing each ``WRITEBACK_BYTES`` it is given
    to disk at once, in the background, instead of leaving them dirty in the page cache.

    A durable file ends with an fsync, which waits until every dirty page is on disk: for a
    100 MB result arriving at network pace that was ~50-70 ms after its last byte before it
    could be acknowledged, for a 1 GB one ~0.3 s (4 ms with this). Started early, the disk
    writes overlap the network and the fsync finds a few pages left. The request is only advice
    (an error is ignored); durability still comes from the fsync.
    """

    def __init__(self, raw: io.RawIOBase) -> None:
        super().__init__(raw)
        self._unsent = 0  # bytes given since writeback was last requested
        self._started = 0  # file offset up to which writeback was requested

    def write(self, data: Any) -> int:
        written = super().write(data)
        self._unsent += written
        if self._unsent >= WRITEBACK_BYTES and _sync_file_range is not None:
            self._unsent = 0
            self.flush()
            end = self.tell()
            if end > self._started:
                _sync_file_range(
                    self.fileno(), self._started, end - self._started, _SYNC_FILE_RANGE_WRITE
                )
                self._started = end
        return written

    def rewound(self, offset: int) -> None:
        """The file continues at ``offset``: writeback is requested again from there."""
        self._unsent = 0
        self._started = min(self._started, offset)


class AtomicFile:
    """A file written under a temporary name and renamed over ``target`` on :meth:`commit`, so
    a crash while writing never leaves a half-written file behind.

    ``reuse`` names a file nothing needs any more (in the same folder) to overwrite instead of
    creating a new one: its pages are still in the page cache, which on a virtual machine makes
    writing a gigabyte several times cheaper. A ``durable`` file is synced to disk on
    :meth:`commit` and written back as it is written (see :class:`EagerWritebackFile`). Write
    failures (a full disk...) raise ``StateError`` FX-STATE-005; failing to create the file
    raises FX-STATE-001.
    """

    def __init__(
        self, target: str | os.PathLike[str], reuse: Path | None = None, *, durable: bool = True
    ) -> None:
        self.target = Path(target)
        self.durable = durable
        fd = -1
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            if reuse is not None:
                with contextlib.suppress(OSError):
                    fd = os.open(reuse, os.O_WRONLY)
                    self.tmp = Path(reuse)
            if fd < 0:
                fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=self.target.parent)
                self.tmp = Path(name)
        except OSError as exc:
            if exc.errno in DISK_FAILURES:
                raise write_failure(self.target, exc) from exc
            raise StateError(
                "FX-STATE-001",
                f"cannot create {self.target}: {exc.strerror or exc}",
                f"make {self.target.parent} a folder this user can write to",
            ) from exc
        raw = io.FileIO(fd, "wb")
        self.out: io.BufferedWriter = EagerWritebackFile(raw) if durable else io.BufferedWriter(raw)

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.out.write(data)
        except OSError as exc:
            raise write_failure(self.target, exc) from exc

    def commit(self) -> Path:
        """Cut what a reused file had beyond the new end, sync (if durable), and rename into
        place."""
        try:
            self.out.flush()
            self.out.truncate()
            if self.durable:
                os.fsync(self.out.fileno())
            self.out.close()
            os.chmod(self.tmp, FILE_MODE)
            os.replace(self.tmp, self.target)
        except OSError as exc:
            self.abort()
            raise write_failure(self.target, exc) from exc
        return self.target

    def abort(self) -> None:
        if not self.out.closed:
            with contextlib.suppress(OSError):  # e.g. the disk is full: flushing fails too
                self.out.close()
        self.tmp.unlink(missing_ok=True)

    def tell(self) -> int:
        return self.out.tell()

    def rewind(self, offset: int) -> None:
        """Continue writing at ``offset`` (what was written beyond it is overwritten, or cut
        on :meth:`commit`)."""
        try:
            self.out.seek(offset)
        except OSError as exc:
            raise write_failure(self.target, exc) from exc
        if isinstance(self.out, EagerWritebackFile):
            self.out.rewound(offset)


def _write_model_header(out: AtomicFile, info: pb.ModelInfo) -> None:
    out.write(MAGIC)
    data = pb.TensorFrame(model=info).SerializeToString()
    out.write(_VarintBytes(len(data)) + data)


class TensorSequence:
    """A model handed over one tensor at a time, for writing a model without holding it whole.

    Iterating yields ``(name, tensor)`` pairs, the tensor an array or :class:`TensorPieces`;
    each need only stay valid until the next pair is asked for, so the producer may reuse its
    memory. ``len()`` is the number of pairs the iterator yields (a model file announces its
    tensor count before its tensors).
    """

    def __init__(self, count: int, items: Iterable[tuple[str, np.ndarray | TensorPieces]]) -> None:
        self.count = int(count)
        self._items = iter(items)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[str, np.ndarray | TensorPieces]]:
        return self._items


def save_model(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray] | TensorSequence,
    *,
    round_num: int,
    plan_hash: str = "",
    kind: str = "",
    metrics: Mapping[str, float] | None = None,
    reuse: Path | None = None,
    durable: bool = True,
) -> Path:
    """Write ``tensors`` atomically to ``path`` and return the path (see :class:`AtomicFile`
    for ``reuse`` and ``durable``). An exception raised while a :class:`TensorSequence`
    produces its tensors leaves no file behind and propagates."""
    out = AtomicFile(path, reuse, durable=durable)
    try:
        info = pb.ModelInfo(
            round=round_num,
            plan_hash=plan_hash,
            tensor_count=len(tensors),
            kind=kind,
            metrics=dict(metrics or {}),
        )
        _write_model_header(out, info)
        written = 0
        for name, array in tensors.items() if isinstance(tensors, Mapping) else tensors:
            try:
                _write_tensor(out.out, name, array)
            except OSError as exc:
                raise write_failure(out.target, exc) from exc
            written += 1
        if written != len(tensors):
            raise ValueError(f"{len(tensors)} tensors announced, {written} produced")
    except BaseException:
        out.abort()
        raise
    return out.commit()


#: errors of the disk, not of the path: a full disk, a quota, a failing device, a file system
#: that went read-only (ext4 does after errors)
DISK_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def write_failure(path: Path, exc: OSError) -> StateError:
    """A model or result file could not be written (disk full, permissions, I/O error)."""
    return StateError(
        "FX-STATE-005",
        f"cannot write {path}: {exc.strerror or exc}",
        f"free space on {path.parent} (or fix its permissions, or remount or repair its file "
        "system), then run the command again: nothing written before is lost (an aggregator "
        "resumes from the work it acknowledged)",
    )


def _corrupt(path: Path, what: str) -> StateError:
    if path.suffix == ".result":
        fix = (
            "a collaborator's spooled result was damaged on disk; start the aggregator again: "
            "it drops that result and the collaborator does the task again"
        )
    elif path.name == "init.pbuf":
        fix = "re-create it with `fx plan initialize` (or restore it from a copy)"
    else:
        fix = "restore it from a copy (save/previous-*/ holds the models of earlier runs)"
    return StateError("FX-STATE-002", f"model file {path} is corrupt: {what}", fix)


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
        reuse: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self._file = AtomicFile(self.path, reuse, durable=durable)
        info = pb.ModelInfo(
            round=round_num, plan_hash=plan_hash, tensor_count=tensor_count, kind=kind
        )
        try:
            _write_model_header(self._file, info)
        except BaseException:
            self._file.abort()
            raise
        #: tensors written whole, and the file offset where the last of them ends
        self.count = 0
        self.complete_end = self._file.tell()
        self._payload_left = 0  # of the tensor begun by begin_tensor

    def write(self, name: str, array: np.ndarray, *, delta: bool = False) -> None:
        try:
            _write_tensor(self._file.out, name, array, delta)
        except OSError as exc:
            raise write_failure(self.path, exc) from exc
        self._completed()

    def begin_tensor(self, header: pb.TensorHeader) -> None:
        """Start a tensor whose raw payload follows in :meth:`write_payload` calls (as it
        arrives from the network); the caller writes exactly ``header.payload_bytes``."""
        data = pb.TensorFrame(header=header).SerializeToString()
        self._file.write(_VarintBytes(len(data)) + data)
        self._payload_left = int(header.payload_bytes)
        if not self._payload_left:
            self._completed()

    def write_payload(self, chunk: memoryview | bytes) -> None:
        self._file.write(chunk)
        self._payload_left -= len(chunk)
        if self._payload_left <= 0:
            self._completed()

    def _completed(self) -> None:
        self.count += 1
        self.complete_end = self._file.tell()
        self._payload_left = 0

    def cut_back(self) -> None:
        """Drop a tensor begun and not finished: writing continues after the last whole one
        (an upload that broke off and is resumed)."""
        self._file.rewind(self.complete_end)
        self._payload_left = 0

    def commit(self) -> Path:
        return self._file.commit()

    def abort(self) -> None:
        self._file.abort()


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


def _check_exists(source: Path) -> None:
    if not source.is_file():
        fix = (
            "run `fx plan initialize` to create it"
            if source.name == "init.pbuf"
            else "check the path: save/ holds best.pbuf and last.pbuf once a round has finished"
        )
        raise StateError("FX-STATE-003", f"model file {source} does not exist", fix)


def _scan(source: Path) -> tuple[pb.ModelInfo, list[tuple[pb.TensorHeader, int]], int]:
    """The header, each tensor's header with the file offset of its payload, and the offset
    where the first tensor starts; payloads are skipped, not read."""
    size = source.stat().st_size
    with open(source, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise _corrupt(source, "not a fedrun model file (bad magic or an older format)")
        first = _read_frame(f, source)
        if first is None or first.WhichOneof("body") != "model":
            raise _corrupt(source, "missing model header")
        info = first.model
        body_start = f.tell()
        tensors: list[tuple[pb.TensorHeader, int]] = []
        for _ in range(info.tensor_count):
            frame = _read_frame(f, source)
            if frame is None:
                raise _corrupt(source, f"{len(tensors)} of {info.tensor_count} tensors present")
            if frame.WhichOneof("body") != "header" or frame.header.encoding not in ("", "none"):
                raise _corrupt(source, f"unexpected {frame.WhichOneof('body')!r} frame")
            try:
                check_header(frame.header)
            except ProtocolError as exc:
                raise _corrupt(source, exc.message) from exc
            offset = f.tell()
            end = offset + int(frame.header.payload_bytes)
            if end > size:
                raise _corrupt(source, f"tensor {frame.header.name!r} is truncated")
            tensors.append((frame.header, offset))
            f.seek(end)
    return info, tensors, body_start


def spool_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a model file (a spooled result) cannot be read back whole, or None when it can:
    its headers are intact and every tensor's payload is present."""
    source = Path(path)
    if not source.is_file():
        return f"{source} is missing"
    try:
        _scan(source)
    except StateError as exc:
        return exc.message
    except OSError as exc:
        return f"{source}: {exc.strerror}"
    return None


class TensorFileReader:
    """Random access to the tensors of a model file, such as a spooled result.

    The file is scanned once for its tensor headers; payload bytes are then read with
    ``pread`` into the caller's buffers, never mapped, so reading a file costs the aggregator
    only the buffers it chooses (mapped pages would count against its resident memory).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        _check_exists(self.path)
        _, tensors, _ = _scan(self.path)
        #: name -> (header, payload offset), in file order
        self.tensors: dict[str, tuple[pb.TensorHeader, int]] = {
            header.name: (header, offset) for header, offset in tensors
        }
        self._fd = os.open(self.path, os.O_RDONLY)

    def __enter__(self) -> TensorFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_into(self, name: str, start: int, out: memoryview) -> None:
        """Fill ``out`` with tensor ``name``'s payload bytes from byte ``start`` on."""
        header, offset = self.tensors[name]
        if start < 0 or start + len(out) > header.payload_bytes:
            raise ValueError(
                f"bytes [{start}, {start + len(out)}) lie outside tensor {name!r} "
                f"({header.payload_bytes} bytes)"
            )
        done = 0
        while done < len(out):
            got = os.preadv(self._fd, [out[done:]], offset + start + done)
            if got <= 0:
                raise _corrupt(self.path, f"tensor {name!r} is truncated")
            done += got

    def layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of tensor ``name``."""
        header, _ = self.tensors[name]
        return tuple(int(d) for d in header.shape), check_header(header)

    def read(
        self, name: str, pool: BufferPool | None = None, span: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Tensor ``name`` whole, or its flat elements ``[start, stop)`` for a ``span``, in a
        pooled buffer when ``pool`` is given."""
        shape, dtype = self.layout(name)
        start = 0
        if span is not None:
            start, stop = span
            shape = (stop - start,)
        array = pool.take_array(shape, dtype) if pool is not None else np.empty(shape, dtype)
        if array.size:
            self.read_into(name, start * dtype.itemsize, array.reshape(-1).view(np.uint8).data)
        return array


def _openfl_model(source: Path) -> ModelSnapshot | None:
    """``source`` read in full when it is an OpenFL model file, else None."""
    with open(source, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            return None
    if not looks_like_openfl_model(source):
        return None
    tensors, round_num = read_openfl_model(source)
    return ModelSnapshot(tensors, round_num, kind="openfl")


def open_model_view(path: str | os.PathLike[str]) -> ModelSnapshot:
    """A model file's tensors as read-only memory maps: nothing is read until used.

    The aggregator keeps its global model this way, so serving it costs page-cache reads (see
    :func:`fedrun.protocol.codec.mapped_file_range`) instead of a resident copy. A file replaced by rename later stays
    valid for the maps already open (they hold the old inode). An OpenFL model file (e.g. the
    ``init.pbuf`` of a workspace made with OpenFL) is read into memory instead.
    """
    source = Path(path)
    _check_exists(source)
    foreign = _openfl_model(source)
    if foreign is not None:
        return foreign
    info, tensors, _ = _scan(source)
    st = source.stat()
    arrays: dict[str, np.ndarray] = {}
    for header, offset in tensors:
        dtype = check_header(header)
        shape = tuple(int(d) for d in header.shape)
        if header.payload_bytes == 0:
            arrays[header.name] = np.zeros(shape, dtype=dtype)
        else:
            mapped = np.memmap(source, dtype=dtype, mode="r", offset=offset, shape=shape)
            setattr(mapped, FILE_IDENTITY, (st.st_dev, st.st_ino))
            arrays[header.name] = mapped
    return ModelSnapshot(arrays, info.round, info.plan_hash, info.kind, dict(info.metrics))


def mapped_model_file(tensors: Mapping[str, np.ndarray]) -> Path | None:
    """The model file ``tensors`` are exactly the mapped contents of (see
    :func:`open_model_view`), or None: then they must be written out, not copied."""
    ranges = {name: mapped_file_range(array) for name, array in tensors.items()}
    files = {r[0] for r in ranges.values() if r is not None}
    unmapped = [n for n, r in ranges.items() if r is None and np.asarray(tensors[n]).size]
    if len(files) != 1 or unmapped:
        return None
    source = Path(files.pop())
    try:
        st = source.stat()
        _, stored, _ = _scan(source)
    except (OSError, StateError):
        return None
    identities = {getattr(a, FILE_IDENTITY, None) for a in tensors.values() if np.size(a)}
    if identities != {(st.st_dev, st.st_ino)}:
        return None  # the path names another file by now
    if [header.name for header, _ in stored] != list(tensors):
        return None
    for header, offset in stored:
        mapped = ranges[header.name]
        if header.payload_bytes and (mapped is None or mapped[1] != offset):
            return None
    return source


def copy_model(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    round_num: int,
    plan_hash: str = "",
    kind: str = "",
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Copy a model file under a new header (round, kind, metrics), atomically; the tensors are
    copied by the kernel (``copy_file_range``), never through this process's memory."""
    src = Path(source)
    _check_exists(src)
    info, _, body_start = _scan(src)
    with open(src, "rb") as inp:
        out = AtomicFile(target)
        try:
            header = pb.ModelInfo(
                round=round_num,
                plan_hash=plan_hash or info.plan_hash,
                tensor_count=info.tensor_count,
                kind=kind,
                metrics=dict(metrics or {}),
            )
            _write_model_header(out, header)
            out.out.flush()
            remaining = src.stat().st_size - body_start
            offset = body_start
            while remaining > 0:
                try:
                    n = os.copy_file_range(inp.fileno(), out.out.fileno(), remaining, offset)
                except OSError:
                    n = 0
                if n <= 0:  # not supported here (or across file systems): copy by hand
                    inp.seek(offset)
                    shutil.copyfileobj(inp, out.out, length=CHUNK_BYTES)
                    break
                offset += n
                remaining -= n
        except OSError as exc:
            out.abort()
            raise write_failure(out.target, exc) from exc
        except BaseException:
            out.abort()
            raise
    return out.commit()


def load_model(path: str | os.PathLike[str]) -> ModelSnapshot:
    """Read a model file written by :func:`save_model` (streamed: about one model of memory),
    or an OpenFL model file (see :mod:`fedrun.storage.openfl_model`)."""
    source = Path(path)
    _check_exists(source)
    foreign = _openfl_model(source)
    if foreign is not None:
        return foreign
    items = _stream(source)
    info = next(items)
    assert isinstance(info, pb.ModelInfo)
    tensors = {t.name: t.array for t in items if isinstance(t, DecodedTensor)}
    return ModelSnapshot(tensors, info.round, info.plan_hash, info.kind, dict(info.metrics))
