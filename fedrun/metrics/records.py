"""Metric records and where they go: ``logs/metrics.jsonl``, TensorBoard, user callbacks."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MetricRecord:
    """One metric value: who reported it, for which task and round."""

    round: int
    origin: str  # a collaborator name, or "aggregator" for aggregated values
    task: str
    metric: str
    value: float
    time: float

    def to_json(self) -> str:
        # built by hand: dataclasses.asdict deep-copies and cost 0.3 ms a record
        return json.dumps(
            {
                "round": self.round,
                "origin": self.origin,
                "task": self.task,
                "metric": self.metric,
                "value": self.value,
                "time": self.time,
            },
            separators=(",", ":"),
        )


MetricSink = Callable[[MetricRecord], None]


#: metric lines a writer holds back while the disk takes none (a full disk); later ones are lost
MAX_HELD_BACK_BYTES = 16 << 20


def _ends_mid_line(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            if file.seek(0, 2) == 0:
                return False
            file.seek(-1, 2)
            return file.read(1) != b"\n"
    except OSError:
        return False


class JsonlMetricWriter:
    """Appends one JSON object per metric to a file, written through per line.

    Lines the disk cannot take (full, over quota) are held back, up to
    :data:`MAX_HELD_BACK_BYTES`, and written before the next record once it takes them again, so
    a full disk delays records instead of losing them; a line is never left half-written in
    the middle of the file (what a write took is not written twice)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._held = bytearray()
        if _ends_mid_line(self.path):
            # a line cut off (a kill mid-write, a damaged disk): the next record starts a line
            # of its own instead of being glued to it, and lost with it
            self._held += b"\n"
        #: records lost because too many were held back already
        self.lost = 0

    def __call__(self, record: MetricRecord) -> None:
        line = (record.to_json() + "\n").encode("utf-8")
        with self._lock:
            if len(self._held) + len(line) > MAX_HELD_BACK_BYTES:
                self.lost += 1
            else:
                self._held += line
            self._write_held()

    def _write_held(self) -> None:
        while self._held:
            try:
                written = os.write(self._fd, self._held)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"{exc.strerror}: {len(self._held)} bytes of records are held back and "
                    "written as soon as it takes them"
                    + (f" ({self.lost} records lost)" if self.lost else ""),
                    str(self.path),
                ) from exc
            del self._held[:written]

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                self._write_held()
            os.close(self._fd)


class TensorBoardSink:
    """Writes each metric as a scalar ``<task>/<metric>`` under ``logs/tensorboard/<origin>/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._writers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, record: MetricRecord) -> None:
        from fedrun.metrics.tensorboard import TensorBoardWriter

        with self._lock:
            writer = self._writers.get(record.origin)
            if writer is None:
                writer = TensorBoardWriter(self.root / record.origin)
                self._writers[record.origin] = writer
            writer.add_scalar(
                f"{record.task}/{record.metric}", record.value, record.round, record.time
            )

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.close()


class CallbackSink:
    """Calls OpenFL's ``log_metric_callback(node_name, task_name, metric_name, value, round)``."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, record: MetricRecord) -> None:
        self.function(record.origin, record.task, record.metric, record.value, record.round)


class MetricHub:
    """Fans every record out to several sinks; a failing sink is reported once, not fatal.

    Each (round, origin, task, metric) goes out once: a resumed aggregator that replays
    results, or closes a round a second time after a crash, does not log duplicates.
    """

    def __init__(
        self,
        sinks: Iterable[MetricSink] = (),
        on_error: Callable[[str], None] | None = None,
        seen: Iterable[tuple[int, str, str, str]] = (),
    ) -> None:
        self.sinks = list(sinks)
        self.on_error = on_error
        self._failed: set[int] = set()
        self._seen = set(seen)
        self._lock = threading.Lock()

    def __call__(self, record: MetricRecord) -> None:
        key = (record.round, record.origin, record.task, record.metric)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        for i, sink in enumerate(self.sinks):
            try:
                sink(record)
            except Exception as exc:  # a broken logger must not stop the federation
                if i not in self._failed and self.on_error:
                    self.on_error(f"metric sink {type(sink).__name__} failed: {exc}")
                self._failed.add(i)
            else:
                self._failed.discard(i)  # working again: a later failure is said again

    def forget_before(self, round_num: int) -> None:
        """Rounds before ``round_num`` are committed and emit nothing again: stop remembering
        their records (a long experiment would otherwise hold every key it ever logged)."""
        with self._lock:
            self._seen = {key for key in self._seen if key[0] >= round_num}

    def emit(self, round_num: int, origin: str, task: str, metric: str, value: float) -> None:
        self(MetricRecord(round_num, origin, task, metric, float(value), time.time()))

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close:
                close()


def read_metrics(path: str | Path) -> Iterator[MetricRecord]:
    """Read back a metrics.jsonl file (partial last lines, and lines damaged into something
    that is no record, are skipped)."""
    p = Path(path)
    if not p.is_file():
        return
    yield from _parse_records(p.read_text(encoding="utf-8", errors="replace").splitlines())


def _parse_records(lines: Iterable[str]) -> Iterator[MetricRecord]:
    for line in lines:
        try:
            data = json.loads(line)
            yield MetricRecord(**data)
        except (json.JSONDecodeError, TypeError):
            continue


class MetricsFollower:
    """Follows a metrics.jsonl another process appends to: each call returns only the records
    written since the last one (whole lines), so watching a long run costs what it adds, not
    what it holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0

    def new_records(self) -> list[MetricRecord]:
        """Records appended since the previous call (all of them the first time)."""
        try:
            with self.path.open("rb") as file:
                if file.seek(0, 2) < self._offset:  # replaced by a shorter file: start over
                    self._offset = 0
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # no whole line yet
        self._offset += end + 1
        return list(_parse_records(data[: end + 1].decode("utf-8", "replace").splitlines()))
