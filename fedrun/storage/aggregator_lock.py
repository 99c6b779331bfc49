"""AggregatorLock: one aggregator per workspace.

Two aggregators started in the same workspace would share its state database, spool and model
files; a second one started with ``--reset-state`` would delete the first one's saved progress
before failing to bind the port. The lock is an exclusive ``flock`` on
``local_state/aggregator.lock``, taken before the aggregator reads or resets any state and held
until it exits; the kernel drops it when the process dies, so a crash never leaves a stale lock.
The file records who holds it, for the error the second aggregator prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from fedrun.errors import StateError

log = logging.getLogger("fedrun.aggregator")

#: the lock file, relative to the workspace
LOCK_FILE = Path("local_state") / "aggregator.lock"


class AggregatorLock:
    """An exclusive advisory lock on a workspace's aggregator state.

    Use as a context manager (or call :meth:`acquire` / :meth:`release`). Acquiring fails at
    once, with ``StateError`` FX-STATE-015 naming the holder, when another process holds it. On
    a file system without ``flock`` the aggregator runs unguarded, with a warning.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = -1

    @classmethod
    def for_workspace(cls, workspace: str | os.PathLike[str]) -> AggregatorLock:
        """The lock of the workspace folder ``workspace``."""
        return cls(Path(workspace) / LOCK_FILE)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd >= 0

    def acquire(self) -> AggregatorLock:
        """Take the lock or raise FX-STATE-015; returns ``self``."""
        if self.held:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                "FX-STATE-001",
                f"cannot create the aggregator lock {self.path}: {exc.strerror}",
                f"make {self.path.parent} writable",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateError(
                "FX-STATE-015",
                f"another aggregator is running in this workspace ({holder}); it holds {self.path}",
                "stop that aggregator (or wait for it to finish) before starting one here; "
                "two aggregators in one workspace would overwrite each other's saved state",
            ) from None
        except OSError as exc:  # e.g. ENOLCK on a file system without locks: run unguarded
            os.close(fd)
            log.warning(
                "cannot lock %s (%s): nothing stops a second aggregator in this workspace; "
                "put it on a file system with flock (a local disk, NFSv4) to be protected",
                self.path,
                exc.strerror,
            )
            return self
        self._fd = fd
        with contextlib.suppress(OSError):  # who holds it is a courtesy for the error above
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_line().encode(), 0)
        return self

    def release(self) -> None:
        """Give the lock up (the file stays; an empty or stale file means nothing)."""
        if not self.held:
            return
        fd, self._fd = self._fd, -1
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> AggregatorLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder_line() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}"


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
