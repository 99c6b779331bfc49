"""Summary tables printed at the end of an experiment."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fedrun.metrics.records import MetricRecord
from fedrun.units import human_bytes


def round_table(history: Sequence[Any]) -> Any:
    """A rich Table with one row per round and one column per aggregated metric; rounds
    before the first row (closed before a resume, or beyond the rows kept) are counted in its
    caption."""
    from rich.table import Table

    columns: list[str] = []
    for summary in history:
        for key in summary.metrics:
            if key not in columns:
                columns.append(key)
    table = Table(title="Rounds", title_justify="left")
    earlier = history[0].number if history else 0
    notes = []
    if earlier:
        notes.append(f"{earlier} earlier rounds are in logs/metrics.jsonl")
    if any(getattr(summary, "resumed", False) for summary in history):
        notes.append("* since the aggregator restarted")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    table.add_column("round", justify="right")
    for key in columns:
        table.add_column(_header(key), justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("new model s", justify="right")
    cpu = any(summary.cpu_seconds is not None for summary in history)
    if cpu:
        table.add_column("aggregator\nCPU s", justify="right")
    table.add_column("received", justify="right")
    for summary in history:
        label = "final" if summary.final_validation else str(summary.number)
        cells = [_fmt(summary.metrics.get(k), k) for k in columns]
        cells.append(f"{summary.duration:.1f}{'*' if getattr(summary, 'resumed', False) else ''}")
        cells.append(f"{summary.aggregation_seconds:.2f}")
        if cpu:
            seconds = summary.cpu_seconds
            cells.append("" if seconds is None else f"{seconds:.2f}")
        table.add_row(label, *cells, human_bytes(summary.bytes_received))
    return table


def metrics_table(records: Iterable[MetricRecord], rounds_to_train: int) -> Any:
    """A rich Table of the aggregator's metrics per round, read from metrics.jsonl."""
    from rich.table import Table

    rows: dict[int, dict[str, float]] = {}
    columns: list[str] = []
    for record in records:
        if record.origin != "aggregator":
            continue
        key = f"{record.task}/{record.metric}"
        rows.setdefault(record.round, {})[key] = record.value
        if key not in columns:
            columns.append(key)
    table = Table(title="Aggregated metrics per round", title_justify="left")
    table.add_column("round", justify="right")
    for key in columns:
        table.add_column(_header(key), justify="right")
    for number in sorted(rows):
        label = f"{number} (final model)" if number >= rounds_to_train else str(number)
        table.add_row(label, *[_fmt(rows[number].get(k), k) for k in columns])
    return table


_SHORT_TASKS = {
    "aggregated_model_validation": "global model\nvalidation",
    "locally_tuned_model_validation": "local model\nvalidation",
    "train": "training",
}


def _header(key: str) -> str:
    task, _, metric = key.partition("/")
    return f"{_SHORT_TASKS.get(task, task)}\n{metric}"


def _fmt(value: float | None, key: str = "") -> str:
    if value is None:
        return ""
    if key.startswith("communication/bytes"):
        return f"{value:.0f}"  # a count of bytes
    return f"{value:.4f}"
