"""Results a collaborator finished computing, kept on its own disk until their round is over.

A collaborator that stops in the middle of a round (a crash, a reboot, an operator's Ctrl-C)
and is started again gets the round's unfinished tasks again; with the results it already
computed kept here it sends those instead of training again, and validates its locally trained
model from them. Kept are the results of the running round of the running experiment (run id
and plan hash checked), as a model file of the trained tensors and a JSON file that says what
they are (written last: a result without it does not exist). Only results that took a while to
compute are kept (:meth:`FinishedResults.worth_keeping`), so a fast task pays nothing for
writing them; they are not synced to disk (a crashed process leaves them in the page cache; a
power cut may lose them, and a file found damaged is computed again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedrun.errors import StateError
from fedrun.storage.model_file import load_model, save_model
from fedrun.units import human_bytes

log = logging.getLogger("fedrun.collaborator")

#: results that took less than this to compute are not kept: computing them again is cheap
#: (the environment variable FEDRUN_KEEP_RESULTS_AFTER_SECONDS sets another: 0 keeps all)
KEEP_MIN_SECONDS = 2.0
KEEP_AFTER_VARIABLE = "FEDRUN_KEEP_RESULTS_AFTER_SECONDS"
#: ...nor those whose tensors would take more than about 5 % of their compute time to write
#: (at ~1 GB/s, this machine's page cache)
KEEP_BYTES_PER_SECOND = 50e6


@dataclass
class FinishedResult:
    """What a task produced: its tensors (trained, before any delta), metrics and sample count,
    and the id its uploads carry (an upload of it cut off can be resumed by another process)."""

    round: int
    task: str
    data_size: int
    metrics: dict[str, float]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    result_id: str = ""


_warned_about: set[str] = set()


def _least_seconds() -> float:
    """KEEP_MIN_SECONDS, or what FEDRUN_KEEP_RESULTS_AFTER_SECONDS sets (said once when it is
    not a number of seconds)."""
    text = os.environ.get(KEEP_AFTER_VARIABLE, "").strip()
    if not text:
        return KEEP_MIN_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        if text not in _warned_about:
            _warned_about.add(text)
            log.warning(
                "%s=%r is not a number of seconds: results are kept after %.0f s of compute",
                KEEP_AFTER_VARIABLE,
                text,
                KEEP_MIN_SECONDS,
            )
        return KEEP_MIN_SECONDS
    return value


class FinishedResults:
    """The folder where a collaborator keeps the results of its running round."""

    def __init__(self, folder: str | os.PathLike[str], plan_hash: str) -> None:
        self.folder = Path(folder)
        self.plan_hash = plan_hash
        self._write_failed = False

    @staticmethod
    def worth_keeping(seconds: float, nbytes: int) -> bool:
        """Whether a result that took ``seconds`` to compute is worth writing ``nbytes`` for."""
        least = _least_seconds()
        if least <= 0:
            return True
        return seconds >= least and nbytes <= seconds * KEEP_BYTES_PER_SECOND

    def _paths(self, round_num: int, task: str) -> tuple[Path, Path]:
        stem = f"r{round_num}_{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}"
        return self.folder / f"{stem}.json", self.folder / f"{stem}.pbuf"

    def keep(self, run: str, result: FinishedResult) -> None:
        """Write ``result`` (of ``run``); a failure (a full disk...) is said once and changes
        nothing else: the result is still sent, it only would not survive a restart."""
        about, tensors = self._paths(result.round, result.task)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            about.unlink(missing_ok=True)
            if result.tensors:
                save_model(
                    tensors,
                    result.tensors,
                    round_num=result.round,
                    plan_hash=self.plan_hash,
                    kind="result",
                    durable=False,
                )
            text = json.dumps(
                {
                    "run": run,
                    "plan_hash": self.plan_hash,
                    "round": result.round,
                    "task": result.task,
                    "data_size": result.data_size,
                    "metrics": result.metrics,
                    "tensors": len(result.tensors),
                    "result_id": result.result_id,
                }
            )
            partial = about.with_suffix(".json.tmp")
            partial.write_text(text)
            partial.replace(about)
        except (OSError, StateError) as error:
            if not self._write_failed:
                self._write_failed = True
                log.warning(
                    "could not keep the result of %s (round %d) in %s (%s): it is sent all "
                    "the same, but a restart of this collaborator in this round computes it "
                    "again (said once)",
                    result.task,
                    result.round,
                    self.folder,
                    # the reason only: a state error's fix is the aggregator's, not ours
                    error.message if isinstance(error, StateError) else error,
                )

    def find(self, run: str, round_num: int, task: str) -> FinishedResult | None:
        """The kept result of ``task`` in ``round_num`` of ``run``, if there is one whole."""
        about, tensors = self._paths(round_num, task)
        try:
            meta = json.loads(about.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("ignoring the kept result %s: %s", about, error)
            return None
        if not isinstance(meta, dict) or (
            meta.get("run"),
            meta.get("plan_hash"),
            meta.get("round"),
            meta.get("task"),
        ) != (run, self.plan_hash, round_num, task):
            return None
        arrays: dict[str, np.ndarray] = {}
        if meta.get("tensors"):
            try:
                snapshot = load_model(tensors)
            except (OSError, StateError) as error:
                log.warning(
                    "the kept result of %s (round %d) is damaged (%s): computing it again",
                    task,
                    round_num,
                    error,
                )
                return None
            if snapshot.plan_hash != self.plan_hash or len(snapshot.tensors) != meta["tensors"]:
                return None
            arrays = dict(snapshot.tensors)
        return FinishedResult(
            round=round_num,
            task=task,
            data_size=int(meta["data_size"]),
            metrics={str(k): float(v) for k, v in dict(meta["metrics"]).items()},
            tensors=arrays,
            result_id=str(meta.get("result_id") or ""),
        )

    def trained_model(self, run: str, round_num: int, tasks: list[str]) -> dict[str, np.ndarray]:
        """The tensors of the first of ``tasks`` (training tasks) with a kept result of
        ``round_num``; empty when none has one."""
        for task in tasks:
            found = self.find(run, round_num, task)
            if found is not None and found.tensors:
                log.info(
                    "round %d: the model %s trained before this collaborator restarted is "
                    "read back (%s)",
                    round_num,
                    task,
                    human_bytes(sum(int(a.nbytes) for a in found.tensors.values())),
                )
                return found.tensors
        return {}

    def forget_except(self, round_num: int | None) -> None:
        """Delete the kept results of every round but ``round_num`` (all with None)."""
        if not self.folder.is_dir():
            return
        keep = None if round_num is None else f"r{round_num}_"
        for path in self.folder.iterdir():
            if keep is None or not path.name.startswith(keep):
                with contextlib.suppress(OSError):
                    path.unlink()
