"""Named crash points for reliability tests.

Setting ``FEDRUN_FAILPOINT=<name>`` (optionally ``<name>:<n>`` for the n-th time the point is
reached) makes the process kill itself with SIGKILL right there, exactly as a power cut or the
OOM killer would. ``FEDRUN_PAUSEPOINT=<name>:<seconds>`` makes it wait there instead, the first
time the point is reached (a slow disk, a model of gigabytes), saying so on stderr. Unset
(always, outside tests), :func:`hit` costs two dictionary lookups.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_counts: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str) -> None:
    """Die (or pause) here if the environment names this point (and its count is reached)."""
    pause = os.environ.get("FEDRUN_PAUSEPOINT")
    if pause:
        _pause(name, pause)
    spec = os.environ.get("FEDRUN_FAILPOINT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        count = _counts[name]
    if count >= (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)


_paused: set[str] = set()


def _pause(name: str, spec: str) -> None:
    target, _, seconds = spec.partition(":")
    with _lock:
        if target != name or name in _paused:
            return
        _paused.add(name)
    sys.stderr.write(f"pausing {seconds} s at {name} (FEDRUN_PAUSEPOINT)\n")
    sys.stderr.flush()
    time.sleep(float(seconds or 0))
