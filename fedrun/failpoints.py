"""Named crash points for reliability tests.

Setting ``FEDRUN_FAILPOINT=<name>`` (optionally ``<name>:<n>`` for the n-th time the point is
reached) makes the process kill itself with SIGKILL right there, exactly as a power cut or the
OOM killer would. Unset (always, outside tests), :func:`hit` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str) -> None:
    """Die here if the environment names this point (and its count is reached)."""
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
