"""ModelStore: writes the aggregator's init/best/last model files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fedrun.federation.aggregator import ModelSink
from fedrun.storage.model_file import copy_model, mapped_model_file, save_model

log = logging.getLogger("fedrun.aggregator")


class ModelStore(ModelSink):
    """Saves ``best`` and ``last`` model files atomically.

    Parameters
    ----------
    best_path, last_path:
        Where the files go (``save/best.pbuf``, ``save/last.pbuf``).
    plan_hash:
        Recorded in each file so a model can be traced to its plan.
    on_finish:
        Called with (best_path, last_path) when the experiment ends (e.g. native export).
    """

    def __init__(
        self,
        best_path: Path,
        last_path: Path,
        plan_hash: str,
        on_finish: Callable[[Path, Path], None] | None = None,
    ) -> None:
        self.best_path = Path(best_path)
        self.last_path = Path(last_path)
        self.plan_hash = plan_hash
        self.on_finish = on_finish

    def save_last(self, tensors: Mapping[str, np.ndarray], round_num: int) -> Path:
        save_model(
            self.last_path, tensors, round_num=round_num, plan_hash=self.plan_hash, kind="last"
        )
        log.info("saved %s (model for round %d)", self.last_path.name, round_num)
        return self.last_path

    def save_best(
        self, tensors: Mapping[str, np.ndarray], round_num: int, score: float, metric: str
    ) -> None:
        metrics = {metric: score}
        source = mapped_model_file(tensors)
        if source is not None:
            # the model is the file it is mapped from: let the kernel copy it
            try:
                copy_model(
                    source,
                    self.best_path,
                    round_num=round_num,
                    plan_hash=self.plan_hash,
                    kind="best",
                    metrics=metrics,
                )
                return
            except FileNotFoundError:
                pass  # the file went away meanwhile: write the tensors out instead
        save_model(
            self.best_path,
            tensors,
            round_num=round_num,
            plan_hash=self.plan_hash,
            kind="best",
            metrics=metrics,
        )
        log.debug("saved %s (%s = %.4f)", self.best_path.name, metric, score)

    def finish(self, best_round: int | None) -> None:
        if self.on_finish is not None:
            self.on_finish(self.best_path, self.last_path)
