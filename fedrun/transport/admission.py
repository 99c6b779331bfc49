"""CallAdmission: how many of the aggregator's server threads one certified peer may hold.

gRPC's synchronous server runs every call on one thread of a fixed pool, from the moment the
call arrives until it ends, and buffers up to a receive window of data for every call still
waiting for a thread. A peer that opens calls and never completes them (a stream whose first
message never comes, a download it never reads, long polls by the dozen) would otherwise hold
every thread, so honest collaborators wait, and the calls queued behind grow the aggregator's
memory by a window each. Each certified peer gets at most :data:`MAX_CALLS_PER_PEER` calls at
once (an honest collaborator needs up to five: a long poll, a heartbeat, a download, an upload
and its resend), the pool keeps that many threads beyond what the collaborators need, and calls
beyond :func:`call_limit` are refused by gRPC before they take memory.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable

#: calls one certified peer may have open at the aggregator at once
MAX_CALLS_PER_PEER = 6
#: seconds an upload may take to send its first message (its header, sent at once by a
#: collaborator) before the call is ended and its thread freed
FIRST_MESSAGE_SECONDS = 30.0


def worker_threads(collaborators: int) -> int:
    """Server threads for ``collaborators``: two per collaborator and eight spare (long polls
    and transfers overlap), plus one peer's allowance, so that a single peer holding all the
    calls it may does not take the threads the others need."""
    return max(16, 2 * collaborators + 8) + MAX_CALLS_PER_PEER


def call_limit(workers: int) -> int:
    """Calls the server takes at once, running or queued for a thread; gRPC refuses more
    (RESOURCE_EXHAUSTED, which collaborators retry), so queued calls cannot grow memory
    without bound."""
    return 3 * workers


class CallAdmission:
    """Counts each peer's open calls and admits a new one while the peer is under its limit."""

    def __init__(self, per_peer: int = MAX_CALLS_PER_PEER) -> None:
        self.per_peer = per_peer
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def enter(self, peer: str) -> bool:
        """Count a call of ``peer`` and return True, or False (nothing counted) when it has
        ``per_peer`` calls open already."""
        with self._lock:
            if self._open[peer] >= self.per_peer:
                return False
            self._open[peer] += 1
            return True

    def leave(self, peer: str) -> None:
        """A call of ``peer`` that :meth:`enter` admitted has ended."""
        with self._lock:
            self._open[peer] -= 1
            if self._open[peer] <= 0:
                del self._open[peer]

    def open_calls(self, peer: str) -> int:
        with self._lock:
            return self._open[peer]


class SilenceWatchdog:
    """Calls ``on_silence`` of calls still waiting for their first message after ``seconds``.

    One thread for every call, not a timer thread per call: starting a thread for each call a
    collaborator makes cost the aggregator a measurable share of its CPU per round."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._waiting: set[int] = set()
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, seconds: float, on_silence: Callable[[], object]) -> int:
        """Start watching; returns the token :meth:`heard` takes."""
        token = next(self._ids)
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + seconds, token, on_silence))
            self._waiting.add(token)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fedrun-silence-watchdog", daemon=True
                )
                self._thread.start()
            elif self._due[0][1] == token:
                self._wake.notify()
        return token

    def heard(self, token: int) -> None:
        """The call's first message came (or the call ended): nothing to do for it."""
        with self._wake:
            self._waiting.discard(token)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._due and self._due[0][1] not in self._waiting:
                    heapq.heappop(self._due)  # heard from already
                now = time.monotonic()
                if not self._due or self._due[0][0] > now:
                    self._wake.wait(None if not self._due else self._due[0][0] - now)
                    continue
                _, token, on_silence = heapq.heappop(self._due)
                self._waiting.discard(token)
            on_silence()
