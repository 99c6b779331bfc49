"""Write TensorBoard event files without TensorFlow or the tensorboard package.

An event file is a sequence of TFRecords, each holding one serialized ``Event`` protobuf. Only the
pieces needed for scalars are encoded here, by hand::

    message Event   { double wall_time = 1; int64 step = 2;
                      oneof what { string file_version = 3; Summary summary = 5; } }
    message Summary { repeated Value value = 1; }
    message Value   { string tag = 1; float simple_value = 2; }

A TFRecord is ``uint64 length (LE) | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)``.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import threading
import time
from pathlib import Path
from types import TracebackType

#: The first record of every event file names this format version.
FILE_VERSION = "brain.Event:2"
#: Suffix of the file name, after the TensorFlow-style prefix.
FILE_SUFFIX = ".fedrun"

_CRC32C_POLY = 0x82F63B78  # Castagnoli polynomial, bit-reflected
_CRC_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_FLOAT32_MAX = 3.4028234663852886e38


def _make_crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``.

    Parameters
    ----------
    data:
        The bytes to checksum.
    crc:
        A previous result, to continue a checksum over several pieces.

    Returns
    -------
    int
        The checksum as an unsigned 32-bit integer.
    """
    table = _CRC32C_TABLE
    crc ^= _U32
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: bytes) -> int:
    """The CRC-32C of ``data``, rotated right by 15 bits plus a constant, as TFRecord stores it."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & _U32


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as 64-bit two's complement (10 bytes)."""
    value &= _U64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    """Little-endian float32; finite values beyond its range become +/-inf, as a cast would."""
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        value = math.copysign(math.inf, value)
    try:
        return struct.pack("<f", value)
    except OverflowError:  # a value that rounds above the float32 max
        return struct.pack("<f", math.copysign(math.inf, value))


def encode_scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """Serialize an ``Event`` holding one scalar ``Summary.Value``."""
    summary_value = _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + _float32(value)
    summary = _length_delimited(1, summary_value)
    return (
        _key(1, 1)
        + struct.pack("<d", wall_time)
        + _key(2, 0)
        + _varint(step)
        + _length_delimited(5, summary)
    )


def encode_version_event(wall_time: float, version: str = FILE_VERSION) -> bytes:
    """Serialize the ``Event`` that opens every event file."""
    return _key(1, 1) + struct.pack("<d", wall_time) + _length_delimited(3, version.encode())


def frame_record(data: bytes) -> bytes:
    """Wrap ``data`` in TFRecord framing (length, masked CRCs)."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


_file_counter = itertools.count()
_file_counter_lock = threading.Lock()


class TensorBoardWriter:
    """Append scalars to a new TensorBoard event file in ``logdir``.

    The file is named ``events.out.tfevents.<unix time>.<hostname>.<pid>.<n>.fedrun``, where
    ``n`` counts the writers opened by this process. Each :meth:`add_scalar` is pushed to the
    operating system at once, so a crash loses nothing already logged; :meth:`flush` and
    :meth:`close` also ``fsync`` the file. Safe to share between threads.

    Parameters
    ----------
    logdir:
        Directory of the run (created if needed). Point ``tensorboard --logdir`` at it or at
        its parent.

    Examples
    --------
    >>> with TensorBoardWriter("logs/tensorboard") as tb:  # doctest: +SKIP
    ...     tb.add_scalar("aggregator/accuracy", 0.91, step=3)
    """

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        with _file_counter_lock:
            counter = next(_file_counter)
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{counter}{FILE_SUFFIX}"
        )
        self.path = self.logdir / name
        self._lock = threading.Lock()
        # "xb": never append to (or clobber) another writer's file.
        self._file = self.path.open("xb")
        self._closed = False
        self._write(encode_version_event(time.time()))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _write(self, event: bytes) -> None:
        record = frame_record(event)
        with self._lock:
            if self._closed:
                raise ValueError(f"TensorBoardWriter for {self.path} is closed")
            self._file.write(record)
            self._file.flush()

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Log one scalar.

        Parameters
        ----------
        tag:
            Name of the series, e.g. ``"collaborator1/train/loss"`` (``/`` groups in the UI).
        value:
            The value; stored as float32 (NaN and infinities are kept).
        step:
            The x-axis position, usually the round number.
        wall_time:
            Seconds since the epoch; default now.
        """
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"tag must be a non-empty string, got {tag!r}")
        if isinstance(step, bool):
            raise TypeError("step must be an integer, not a bool")
        step_int = int(step)
        if step_int != step:
            raise ValueError(f"step must be an integer, got {step!r}")
        when = time.time() if wall_time is None else float(wall_time)
        self._write(encode_scalar_event(tag, float(value), step_int, when))

    def flush(self) -> None:
        """Push buffered records to the OS and ask it to write them to disk."""
        with self._lock:
            if self._closed:
                return
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush and close the file; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._closed = True

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"TensorBoardWriter({str(self.path)!r}, {state})"
