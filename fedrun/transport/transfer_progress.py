"""TransferProgress: how far a long model download or upload got, said every half minute.

A model of gigabytes over a hospital's or a bank's wide-area link takes minutes each way; a
collaborator that says nothing for that long looks hung to the operator watching it. Transfers
shorter than :data:`PROGRESS_LINE_SECONDS` say nothing (their end is logged as before).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fedrun.units import human_bytes

log = logging.getLogger("fedrun.client")

#: a transfer running longer than this says how far it got, then again after as long
PROGRESS_LINE_SECONDS = 30.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TransferProgress:
    """Counts the bytes of one transfer and logs its progress every ``every`` seconds.

    ``total`` is what the whole transfer moves (0: unknown, only what moved is said); ``done``
    what an earlier, broken-off attempt already moved (a resumed transfer); ``at_most`` says the
    total is an upper bound (compressed updates come out smaller).
    """

    def __init__(
        self,
        what: str,
        total: int,
        done: int = 0,
        *,
        at_most: bool = False,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = int(total)
        self.done = int(done)
        self.at_most = at_most
        self.every = PROGRESS_LINE_SECONDS if every is None else every
        self.clock = clock
        self._started = clock()
        self._first = self.done
        self._said = self._started

    def add(self, nbytes: int) -> None:
        """``nbytes`` more moved; logs a line when the last one is ``every`` seconds old."""
        self.done += nbytes
        now = self.clock()
        if now - self._said < self.every:
            return
        self._said = now
        rate = (self.done - self._first) / max(now - self._started, 1e-9)
        # what moved counts framing too: never more than the whole is said
        done = min(self.done, self.total) if self.total and not self.at_most else self.done
        line = f"{self.what}: {human_bytes(done)}"
        if self.total:
            line += f" of {'at most ' if self.at_most else ''}{human_bytes(self.total)}"
        line += f" ({human_bytes(rate)}/s"
        left = (self.total - done) / rate if self.total and not self.at_most and rate > 0 else 0
        if left >= 1:
            line += f", about {_duration(left)} left"
        log.info("%s)", line)
