"""What the aggregator tracks for the round in progress, and what it tells listeners when a
round closes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

from fedrun.aggregation.base import Accumulator
from fedrun.storage.state_store import AcceptedResult


@dataclass
class RoundState:
    """Everything the aggregator tracks for the round in progress."""

    number: int
    assigned: dict[str, list[str]]
    final_validation: bool = False
    done: dict[str, set[str]] = field(default_factory=dict)
    in_progress: set[tuple[str, str]] = field(default_factory=set)
    accumulators: dict[str, Accumulator] = field(default_factory=dict)
    metric_sums: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    stragglers: set[str] = field(default_factory=set)
    started_at: float | None = None
    opened_at: float = field(default_factory=time.monotonic)
    #: the aggregator process's CPU seconds when the round opened (None: not measured)
    cpu_at_open: float | None = None
    bytes_received: int = 0
    raw_bytes: int = 0
    accepted: list[AcceptedResult] = field(default_factory=list)
    #: participants whose every assigned task is done (kept as results land: with many
    #: collaborators, recounting at each result made a round cost O(N^2))
    finished_names: set[str] = field(default_factory=set)
    #: no round can follow this one: collaborators may leave once its results are acknowledged
    last: bool = False
    #: opened by an earlier run of the aggregator, which stopped: its times count from the restart
    resumed: bool = False

    def count_metrics(self, result: AcceptedResult) -> None:
        """Add a result's metrics to the round's data-size-weighted sums."""
        for metric, value in result.metrics.items():
            sums = self.metric_sums.setdefault((result.task, metric), [0.0, 0.0, 0.0])
            sums[0] += float(value) * result.data_size
            sums[1] += result.data_size
            sums[2] += 1

    def finished(self, collaborator: str) -> bool:
        return collaborator in self.finished_names or not self.assigned.get(collaborator)

    def mark_done(self, collaborator: str, task: str) -> bool:
        """Record a task as done; True when that completes the collaborator's round."""
        done = self.done.setdefault(collaborator, set())
        done.add(task)
        if (
            collaborator in self.finished_names
            or not set(self.assigned.get(collaborator, [])) <= done
        ):
            return False
        self.finished_names.add(collaborator)
        return True

    @property
    def finished_count(self) -> int:
        return len(self.finished_names)

    @cached_property
    def participants(self) -> list[str]:
        return [c for c, t in self.assigned.items() if t]


@dataclass
class RoundSummary:
    """Handed to listeners when a round closes."""

    number: int
    metrics: dict[str, float]
    duration: float
    collaborators: list[str]
    stragglers: list[str]
    bytes_received: int
    final_validation: bool
    #: CPU seconds the aggregator's process spent during the round (None: not measured)
    cpu_seconds: float | None = None
    #: seconds from the last result to the new model saved (aggregation and writing it)
    aggregation_seconds: float = 0.0
    #: the round began before the aggregator restarted: ``duration`` counts from the restart
    resumed: bool = False
