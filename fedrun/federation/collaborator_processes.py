"""CollaboratorProcesses: one live process per collaborator name.

Starting a collaborator twice (a service manager and a terminal, two hosts sharing one
certificate) passes every identity check: both processes get the round's tasks, the first
result of each task counts and the other's work is wasted; when the experiment ends only one of
them is told to stop, and the other retries an aggregator that is gone until its reconnect
timeout. Every request therefore carries a random token of the process that sent it
(``Header.process``). A restarted collaborator changes token once and the old one is never heard
again; two live processes interleave: A, B, then A again. From that moment the newer of the two
is refused (FX-AUTH-006) and stops with that message; the older one carries on. A crash and
restart never interleaves, so it is never refused.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from fedrun.errors import ProtocolError

#: tokens remembered per collaborator (restarts add one each)
KEPT_PER_COLLABORATOR = 8


@dataclass
class _Process:
    peer: str
    first_seen: float
    last_seen: float


class CollaboratorProcesses:
    """Tracks which processes speak for each collaborator name; refuses a second live one.

    Parameters
    ----------
    window:
        Two processes count as running at once when one is heard again within ``window``
        seconds of a request from the other.
    """

    def __init__(self, window: float = 600.0) -> None:
        self.window = float(window)
        self._seen: dict[str, OrderedDict[str, _Process]] = {}
        self._refused: dict[tuple[str, str], tuple[str, _Process]] = {}  # -> (peer, older)
        self._lock = threading.Lock()

    def heard(self, collaborator: str, process: str, peer: str, now: float) -> None:
        """Record a request from ``process`` (its token) speaking for ``collaborator``.

        Raises ``ProtocolError`` FX-AUTH-006 when that process is the newer of two live
        processes using the name. Requests without a token (older clients) are not tracked.
        """
        if not process:
            return
        with self._lock:
            if (collaborator, process) not in self._refused:
                self._record(collaborator, process, peer, now)
            if (collaborator, process) not in self._refused:
                return
            own_peer, older = self._refused[(collaborator, process)]
            message = (
                f"another process is already working as collaborator {collaborator!r} (from "
                f"{_address(older.peer)}, last heard {max(0.0, now - older.last_seen):.1f} s "
                f"ago); this one (from {_address(own_peer)}) is refused"
            )
        raise ProtocolError(
            "FX-AUTH-006",
            message,
            "run one collaborator process per name; if the other process should not exist, "
            "stop it, then start this one again",
        )

    def _record(self, collaborator: str, process: str, peer: str, now: float) -> None:
        known = self._seen.setdefault(collaborator, OrderedDict())
        # the last token heard is the newest entry: entries move to the end when heard
        previous_token = next(reversed(known), None)
        previous = known.get(previous_token) if previous_token else None
        returning = process in known and process != previous_token
        entry = known.get(process) or _Process(peer, now, now)
        entry.peer, entry.last_seen = peer, now
        known[process] = entry
        known.move_to_end(process)
        while len(known) > KEPT_PER_COLLABORATOR:  # a refusal is forgotten with its process
            forgotten, _ = known.popitem(last=False)
            self._refused.pop((collaborator, forgotten), None)
        if not returning or previous is None or previous_token is None:
            return
        if now - previous.last_seen > self.window:
            return
        # both are alive: the one first heard later is refused from now on
        if entry.first_seen <= previous.first_seen:
            self._refused[(collaborator, previous_token)] = (previous.peer, entry)
        else:
            self._refused[(collaborator, process)] = (peer, previous)


def _address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1:5000`` (gRPC's peer strings)."""
    kind, _, rest = peer.partition(":")
    return rest if kind in ("ipv4", "ipv6", "unix") and rest else peer
