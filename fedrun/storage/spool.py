"""Spool: the folder where the aggregator writes incoming results while they stream in.

A result is spooled as ``r<round>_<collaborator>_<task>-<n>.result`` (a model file) and made durable
before it is acknowledged, so an accepted result survives a crash; the round's files are
dropped once the round is committed. Dropped files are kept as a few ``free-<n>.spool`` files
and overwritten by the next round's results: rewriting pages already in the page cache costs a
fraction of allocating new ones, and results are the bulk of what the aggregator writes.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from fedrun.storage.model_file import TensorFileWriter

#: finished result files always kept for reuse (disk space: that many results)...
MAX_FREE_FILES = 8
#: ...and more while the kept files total at most this: small results (many collaborators) are
#: all overwritten next round instead of each being created and deleted again
MAX_FREE_BYTES = 256 << 20


class Spool:
    """Result files of the running round, and a small free list of old ones to overwrite."""

    def __init__(
        self,
        folder: str | Path,
        max_free: int = MAX_FREE_FILES,
        max_free_bytes: int = MAX_FREE_BYTES,
    ) -> None:
        self.folder = Path(folder)
        self.max_free = max_free
        self.max_free_bytes = max_free_bytes
        self._free: list[tuple[Path, int]] = []  # (file, size)
        self._free_bytes = 0
        self._ids = itertools.count()
        self._uploads = itertools.count()
        self._lock = threading.Lock()
        # left by an earlier run: its reusable files, and results a kill cut off mid-stream
        # (hidden temporaries: one per crash, up to a model in size)
        for stale in [*self.folder.glob("free-*.spool"), *self.folder.glob(".r*_*.result.*")]:
            stale.unlink(missing_ok=True)

    def path(self, round_num: int, collaborator: str, task: str) -> Path:
        """A new file for a result of ``collaborator``'s ``task`` in ``round_num``: every
        upload gets its own, so an upload given up on (a newer one of the same result replaced
        it) never writes over, or deletes, the file of the one that counts."""
        return self.folder / f"r{round_num}_{collaborator}_{task}-{next(self._uploads)}.result"

    def writer(
        self,
        round_num: int,
        collaborator: str,
        task: str,
        *,
        tensor_count: int,
        plan_hash: str,
        durable: bool,
    ) -> TensorFileWriter:
        """A writer for one result, overwriting a free file when there is one."""
        reuse = None
        with self._lock:
            if self._free:
                reuse, size = self._free.pop()
                self._free_bytes -= size
        return TensorFileWriter(
            self.path(round_num, collaborator, task),
            round_num=round_num,
            tensor_count=tensor_count,
            plan_hash=plan_hash,
            kind="result",
            durable=durable,
            reuse=reuse,
        )

    def retire_round(self, round_num: int) -> None:
        """The round is committed: its result files are no longer needed."""
        for done in sorted(self.folder.glob(f"r{round_num}_*.result")):
            try:
                size = done.stat().st_size
            except OSError:
                continue
            with self._lock:
                keep = (
                    len(self._free) < self.max_free
                    or self._free_bytes + size <= self.max_free_bytes
                )
                if keep:
                    free = self.folder / f"free-{next(self._ids)}.spool"
            if keep:
                try:
                    done.rename(free)
                except OSError:
                    done.unlink(missing_ok=True)
                    continue
                with self._lock:
                    self._free.append((free, size))
                    self._free_bytes += size
            else:
                done.unlink(missing_ok=True)

    def drop_before(self, round_num: int) -> None:
        """Delete the result files of rounds before ``round_num``: committed rounds whose files a
        stop between the commit and :meth:`retire_round` left behind."""
        for path in self.folder.glob("r*_*.result"):
            number = path.name[1:].split("_", 1)[0]
            if number.isdigit() and int(number) < round_num:
                path.unlink(missing_ok=True)

    def drop_free(self) -> None:
        """Delete the files kept for reuse (the experiment is over)."""
        with self._lock:
            free, self._free, self._free_bytes = self._free, [], 0
        for path, _ in free:
            path.unlink(missing_ok=True)
