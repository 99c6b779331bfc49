"""StateStore: what the aggregator must remember to resume after a restart.

Every implementation MUST:
- make :meth:`record_result` durable before it returns (the result is acknowledged after it);
- refuse a second result for the same (round, collaborator, task) with ``False``;
- make :meth:`finish_round` atomic: after a crash either the whole round-end is visible or none;
- return from :meth:`load` exactly what was recorded since the last finished round;
- remember when the experiment's end was committed (``finished_at``) and whether the aggregator
  stopped afterwards with every collaborator told (:meth:`record_ended`): a restart in between
  tells the collaborators still waiting for the end to stop.
"""

from __future__ import annotations

import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class AcceptedResult:
    """One accepted task result; its tensors live in ``spool_path`` (may be empty)."""

    round: int
    collaborator: str
    task: str
    data_size: int
    metrics: dict[str, float]
    spool_path: str = ""
    tensor_bytes: int = 0  # payload bytes as received (after compression)
    raw_bytes: int = 0  # bytes of the decoded tensors


@dataclass
class SavedState:
    """What :meth:`StateStore.load` returns."""

    plan_hash: str = ""
    round: int = 0
    experiment_done: bool = False
    best_score: float | None = None
    best_round: int | None = None
    results: list[AcceptedResult] = field(default_factory=list)
    #: wall-clock time (``time.time()``) the experiment's end was committed
    finished_at: float | None = None
    #: the aggregator stopped after the end with every collaborator told (or gone)
    ended: bool = False


def new_run_id() -> str:
    """A random identity for a run of an experiment."""
    return secrets.token_hex(8)


class StateStore(ABC):
    """Contract for the aggregator's persisted state (see the module docstring)."""

    @abstractmethod
    def load(self) -> SavedState: ...

    @abstractmethod
    def start(self, plan_hash: str, round_num: int) -> None:
        """Record the experiment's identity (first start only)."""

    @abstractmethod
    def run_id(self) -> str:
        """This run of the experiment: made at its first start (and again after a reset, which
        starts from an empty store), the same after every resume. Results of tasks handed out
        by another run are refused."""

    @abstractmethod
    def record_result(self, result: AcceptedResult) -> bool:
        """Durably record an accepted result; False if it is a duplicate."""

    @abstractmethod
    def drop_result(self, round_num: int, collaborator: str, task: str) -> None:
        """Forget an accepted result whose tensors cannot be read back (the task is redone)."""

    @abstractmethod
    def finish_round(
        self,
        finished_round: int,
        best_score: float | None,
        best_round: int | None,
        experiment_done: bool,
        next_model: Mapping[str, np.ndarray] | None = None,
        aggregation_state: Mapping[str, np.ndarray] | None = None,
        next_model_file: Path | None = None,
    ) -> None:
        """Atomically mark a round finished, with the model (and rule state) the next round
        starts from; the finished round's results are no longer needed afterwards."""

    def load_checkpoint(
        self, round_num: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The global model and aggregation-rule state saved for ``round_num``."""
        raise NotImplementedError(f"{type(self).__name__} keeps no checkpoints")

    def record_ended(self) -> None:  # noqa: B027 - optional hook
        """Note that the finished experiment's aggregator stopped with nobody left waiting."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class InMemoryStateStore(StateStore):
    """Keeps the state in memory: nothing survives a restart (``persist_checkpoint: false``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = SavedState()
        self._run_id = ""

    def load(self) -> SavedState:
        with self._lock:
            return SavedState(
                self._state.plan_hash,
                self._state.round,
                self._state.experiment_done,
                self._state.best_score,
                self._state.best_round,
                list(self._state.results),
            )

    def start(self, plan_hash: str, round_num: int) -> None:
        with self._lock:
            if not self._state.plan_hash:
                self._state.plan_hash = plan_hash
                self._state.round = round_num

    def run_id(self) -> str:
        with self._lock:
            if not self._run_id:
                self._run_id = new_run_id()
            return self._run_id

    def record_result(self, result: AcceptedResult) -> bool:
        with self._lock:
            key = (result.round, result.collaborator, result.task)
            if any((r.round, r.collaborator, r.task) == key for r in self._state.results):
                return False
            self._state.results.append(result)
            return True

    def drop_result(self, round_num: int, collaborator: str, task: str) -> None:
        with self._lock:
            key = (round_num, collaborator, task)
            self._state.results = [
                r for r in self._state.results if (r.round, r.collaborator, r.task) != key
            ]

    def finish_round(
        self,
        finished_round: int,
        best_score: float | None,
        best_round: int | None,
        experiment_done: bool,
        next_model: Mapping[str, np.ndarray] | None = None,
        aggregation_state: Mapping[str, np.ndarray] | None = None,
        next_model_file: Path | None = None,
    ) -> None:
        with self._lock:
            self._state.round = finished_round + 1
            self._state.best_score = best_score
            self._state.best_round = best_round
            self._state.experiment_done = experiment_done
            self._state.results = [r for r in self._state.results if r.round > finished_round]
