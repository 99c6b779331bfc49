"""BufferPool: reuse large byte buffers instead of faulting in fresh memory every round.

On virtual machines a fresh gigabyte costs close to a second of page faults before the first
byte is copied into it, while copying into memory already touched runs at several GB/s. The
aggregator receives, spools and folds the same tensor sizes round after round, so it keeps a few
released buffers per size and hands them out again.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: buffers below this size are cheap to allocate and are not pooled
MIN_POOLED_BYTES = 1 << 20  # 1 MiB


class BufferPool:
    """A bounded free list of uint8 buffers, keyed by exact size.

    Parameters
    ----------
    max_bytes:
        Most memory kept idle in the pool; a buffer given back beyond that is simply dropped.
    per_size:
        Most idle buffers kept for one size.
    """

    def __init__(self, max_bytes: int = 8 << 30, per_size: int = 4) -> None:
        self.max_bytes = max_bytes
        self.per_size = per_size
        self._free: dict[int, list[np.ndarray]] = {}
        self._idle = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of exactly ``nbytes`` (contents undefined)."""
        if nbytes >= MIN_POOLED_BYTES:
            with self._lock:
                free = self._free.get(nbytes)
                if free:
                    self._idle -= nbytes
                    return free.pop()
        return np.empty(nbytes, dtype=np.uint8)

    def take_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` backed by a pooled buffer (contents undefined)."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        return self.take(count * dt.itemsize).view(dt).reshape(shape)

    def give(self, array: np.ndarray | None) -> None:
        """Return a buffer (or an array viewing a whole pooled buffer) for reuse."""
        if array is None:
            return
        base = array
        while isinstance(base.base, np.ndarray):
            base = base.base
        if base.dtype != np.uint8 or base.ndim != 1 or base.nbytes < MIN_POOLED_BYTES:
            return
        with self._lock:
            free = self._free.setdefault(base.nbytes, [])
            if len(free) >= self.per_size or self._idle + base.nbytes > self.max_bytes:
                return
            if any(b is base for b in free):
                return
            free.append(base)
            self._idle += base.nbytes

    def recycle(self, arrays: list[np.ndarray | None]) -> int:
        """Give back those of ``arrays`` (emptied by this call) that nothing else references:
        no other name, no view, no framework tensor sharing their memory. Returns bytes
        recycled. Relies on CPython reference counts, so an array still used anywhere is
        never handed out again."""
        recycled = 0
        for i in range(len(arrays)):
            array = arrays[i]
            arrays[i] = None
            # references now: `array` here and getrefcount's argument; likewise its base buffer
            # is held by `array` alone
            if (
                array is not None
                and sys.getrefcount(array) == 2
                and isinstance(array.base, np.ndarray)
                and array.base.base is None
                and sys.getrefcount(array.base) == 2
            ):
                before = self._idle
                self.give(array)
                recycled += self._idle - before
            del array
        return recycled

    @property
    def idle_bytes(self) -> int:
        return self._idle


#: the process-wide pool used on the aggregator's receive / spool / fold path
POOL = BufferPool()

#: glibc's mallopt parameter for the number of malloc arenas
_M_ARENA_MAX = -8


def limit_malloc_arenas(count: int = 2) -> bool:
    """Let threads share ``count`` malloc arenas (glibc only; call before threads start).

    Each gRPC thread allocates and frees megabyte-sized messages; with glibc's default of up
    to eight arenas per core, every thread's arena keeps its own freed chunks, which added
    0.4-0.8 GB of idle memory to a node moving a 1 GB model. Two shared arenas keep that near
    zero at no measurable cost (a few hundred allocations per second). Returns True if set.
    """
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if not name:
            return False
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_ARENA_MAX, int(count)))
    except (OSError, AttributeError):
        return False
