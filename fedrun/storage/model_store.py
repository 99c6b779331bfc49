"""ModelStore: writes the aggregator's init/best/last model files."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from fedrun.errors import StateError
from fedrun.federation.aggregator import ModelSink
from fedrun.storage.model_file import (
    TensorSequence,
    copy_model,
    mapped_model_file,
    save_model,
    stale_temporaries,
    write_failure,
)

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
        # a spare left by an earlier process may be the model a resumed run starts from
        self._spare.unlink(missing_ok=True)
        self._spare.with_name(self._spare.name + ".next").unlink(missing_ok=True)
        for target in (self.best_path, self.last_path):
            for stale in stale_temporaries(target):
                log.info("removing %s, left by an aggregator killed while writing it", stale.name)
                stale.unlink(missing_ok=True)

    @property
    def _spare(self) -> Path:
        return self.last_path.with_name(f".{self.last_path.name}.spare")

    writes_last = True

    def save_last(self, tensors: Mapping[str, np.ndarray] | TensorSequence, round_num: int) -> Path:
        """Replace ``last.pbuf`` atomically.

        The file before the current one is kept as a hidden spare and overwritten by the next
        save (nothing maps it any more: the aggregator serves the current file, the state store
        links the current one as its checkpoint), so each round rewrites pages that are already
        in the page cache instead of allocating a model's worth of new ones.
        """
        spare = self._spare
        previous = spare.with_name(spare.name + ".next")
        try:
            previous.unlink(missing_ok=True)
        except OSError as exc:  # read-only or failing file system: the save below would fail too
            raise write_failure(self.last_path, exc) from exc
        with contextlib.suppress(OSError):
            os.link(self.last_path, previous)  # the current model becomes the next spare
        save_model(
            self.last_path,
            tensors,
            round_num=round_num,
            plan_hash=self.plan_hash,
            kind="last",
            reuse=spare if spare.exists() else None,
        )
        if previous.exists():
            with contextlib.suppress(OSError):  # only a page-cache optimisation: never fatal
                os.replace(previous, spare)
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
            except (StateError, FileNotFoundError):
                pass  # e.g. the file went away meanwhile: write the tensors out instead
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
        self._spare.unlink(missing_ok=True)
        if self.on_finish is not None:
            self.on_finish(self.best_path, self.last_path)
