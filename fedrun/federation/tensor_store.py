"""TensorStore: named tensor sets kept per round, trimmed to the newest ``db_store_rounds``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedrun.buffers import BufferPool


class TensorStore:
    """Holds tensor dicts keyed by ``(round, kind)``; e.g. ``(3, "global")`` or ``(3, "trained")``.

    Parameters
    ----------
    keep_rounds:
        How many of the newest rounds :meth:`clean_up` keeps (``db_store_rounds``).
    """

    def __init__(self, keep_rounds: int = 1) -> None:
        self.keep_rounds = max(1, int(keep_rounds))
        self._data: dict[tuple[int, str], dict[str, np.ndarray]] = {}

    def put(self, round_num: int, kind: str, tensors: Mapping[str, np.ndarray]) -> None:
        self._data[(round_num, kind)] = dict(tensors)

    def get(self, round_num: int, kind: str) -> dict[str, np.ndarray] | None:
        return self._data.get((round_num, kind))

    def rounds(self) -> list[int]:
        return sorted({r for r, _ in self._data})

    def clean_up(self) -> None:
        """Drop every entry older than the newest ``keep_rounds`` rounds."""
        rounds = self.rounds()
        if len(rounds) <= self.keep_rounds:
            return
        cutoff = rounds[-self.keep_rounds]
        for key in [k for k in self._data if k[0] < cutoff]:
            del self._data[key]

    def make_room(self, round_num: int, pool: BufferPool | None = None) -> None:
        """Before round ``round_num``'s tensors arrive: drop what :meth:`clean_up` will drop
        once they are in (of the earlier rounds, keep the newest ``keep_rounds - 1``), so their
        memory can hold the new ones; arrays nobody else uses go back to ``pool``."""
        earlier = [r for r in self.rounds() if r < round_num]
        keep = (
            set(earlier[len(earlier) - (self.keep_rounds - 1) :]) if self.keep_rounds > 1 else set()
        )
        dropped = [k for k in self._data if k[0] < round_num and k[0] not in keep]
        unique: dict[int, np.ndarray] = {}
        for key in dropped:
            unique.update((id(a), a) for a in self._data.pop(key).values())
        items: list[np.ndarray | None] = list(unique.values())
        unique.clear()  # `items` must hold the only references left for recycle() to see
        if pool is not None:
            pool.recycle(items)

    def nbytes(self) -> int:
        return sum(a.nbytes for d in self._data.values() for a in d.values())
