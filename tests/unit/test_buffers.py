"""BufferPool: reuse of big buffers, and recycling only what nothing else uses."""

from __future__ import annotations

import numpy as np

from fedrun.buffers import BufferPool
from fedrun.federation.tensor_store import TensorStore

MIB = 1 << 20


def pooled(pool: BufferPool, n: int = 2 * MIB) -> np.ndarray:
    return pool.take_array((n // 4,), np.dtype(np.float32))


def test_a_given_buffer_is_handed_out_again():
    pool = BufferPool()
    a = pooled(pool)
    base = a.base
    pool.give(a)
    assert pool.idle_bytes == 2 * MIB
    assert pooled(pool).base is base and pool.idle_bytes == 0


def test_recycle_takes_only_arrays_nothing_else_references():
    pool = BufferPool()
    free, held, viewed = pooled(pool), pooled(pool), pooled(pool)
    keep_alive = held  # another name still uses it
    view = viewed[10:20]  # a view shares its memory
    items: list[np.ndarray | None] = [free, held, viewed]
    del free, held, viewed
    assert pool.recycle(items) == 2 * MIB
    assert items == [None, None, None]
    # the two arrays still in use were not given back: new takes do not alias them
    again = [pooled(pool) for _ in range(3)]
    for array in again:
        assert not np.shares_memory(array, keep_alive)
        assert not np.shares_memory(array, view)


def test_make_room_drops_earlier_rounds_and_recycles_their_memory():
    pool = BufferPool()
    store = TensorStore(keep_rounds=1)
    model = {"w": pooled(pool)}
    store.put(0, "global", model)
    store.put(0, "trained", model)  # the same arrays twice (a runner returning its input)
    del model
    store.make_room(1, pool)
    assert store.rounds() == [] and pool.idle_bytes == 2 * MIB
    two = TensorStore(keep_rounds=2)
    for r in range(3):
        two.put(r, "global", {"w": np.zeros(3)})
    two.make_room(3, pool)
    assert two.rounds() == [2]  # with round 3 that makes the two newest


def test_malloc_arenas_can_be_limited_on_glibc():
    import platform

    from fedrun.buffers import limit_malloc_arenas

    ok = limit_malloc_arenas(8)  # the glibc default on most machines: harmless in tests
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert ok
