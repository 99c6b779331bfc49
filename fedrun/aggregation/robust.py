"""Byzantine-robust rules: coordinate-wise trimmed mean, Krum and Multi-Krum.

* Trimmed mean (Yin et al. 2018): per element, drop the ``floor(beta * N)`` largest and smallest
  values and average the rest.
* Krum (Blanchard et al. 2017): each collaborator's whole update (every tensor name, flattened and
  concatenated) is scored by the sum of squared distances to its ``N - f - 2`` nearest other
  updates; the lowest score wins. Multi-Krum averages the ``m`` best-scored updates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedrun.aggregation.base import (
    Accumulator,
    AggregationFunction,
    LocalTensor,
    UpdateLog,
    finish_like,
    normalized_weights,
)
from fedrun.aggregation.median import stack_tensors
from fedrun.aggregation.weighted_average import accumulation_dtype
from fedrun.constants import OPTIMIZER_PREFIX

logger = logging.getLogger(__name__)


class TrimmedMean(AggregationFunction):
    """Coordinate-wise trimmed mean, unweighted (weights are ignored).

    Parameters
    ----------
    beta:
        Fraction trimmed at each end, in [0, 0.5): per element the ``floor(beta * N)`` largest and
        the ``floor(beta * N)`` smallest values are dropped and the rest averaged. With
        ``beta = 0`` this is the plain mean; at least one value always remains.

    Needs every update of the round at once.
    """

    needs_all_updates = True

    def __init__(self, beta: float = 0.1) -> None:
        if not (isinstance(beta, (int, float)) and 0.0 <= beta < 0.5):
            raise ValueError(f"TrimmedMean beta must lie in [0, 0.5), got {beta!r}")
        self.beta = float(beta)

    def trimmed_count(self, n: int) -> int:
        """How many values are dropped at each end when ``n`` collaborators reported."""
        return math.floor(self.beta * n + 1e-9)

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Trimmed mean of ``local_tensors`` (OpenFL's signature), in float64."""
        stacked = stack_tensors(local_tensors)
        values = stacked.astype(accumulation_dtype(stacked.dtype))
        values.sort(axis=0)
        n = values.shape[0]
        cut = self.trimmed_count(n)
        return np.asarray(values[cut : n - cut].mean(axis=0))


class Krum(AggregationFunction):
    """Krum / Multi-Krum on whole updates (Blanchard et al. 2017).

    Parameters
    ----------
    num_byzantine:
        ``f``, the number of Byzantine collaborators to tolerate. Krum needs ``N > 2f + 2``
        updates; with fewer, :meth:`Accumulator.result` raises ``ValueError``.
    multi_krum:
        ``m``, how many best-scored updates to average (weighted by sample count). ``1`` is
        Krum proper; ``None`` means ``N - f``. When ``m`` exceeds ``N - f`` in a round (fewer
        collaborators reported than planned) it is lowered to ``N - f`` and a warning logged.

    At ``result()`` the model's weights an origin sent (floating-point tensors; integer counters
    such as BatchNorm's ``num_batches_tracked``, which grow with the data, and optimizer state are
    averaged over the selection but not compared) are flattened and concatenated into one vector
    per origin (every origin must send the same names); each origin's score is the sum of squared
    distances to its ``N - f - 2`` nearest others. Ties go to the origin whose name sorts first,
    so the choice does not depend on arrival order. The accumulator exposes ``selected`` (the
    chosen origins) and ``scores`` after ``result()``. Needs every update of the round at once.
    """

    needs_all_updates = True

    def __init__(self, num_byzantine: int = 0, multi_krum: int | None = 1) -> None:
        name = type(self).__name__
        if isinstance(num_byzantine, bool) or int(num_byzantine) != num_byzantine:
            raise ValueError(f"{name} num_byzantine must be an integer, got {num_byzantine!r}")
        if num_byzantine < 0:
            raise ValueError(f"{name} num_byzantine must be >= 0, got {num_byzantine!r}")
        if multi_krum is not None and (
            isinstance(multi_krum, bool) or int(multi_krum) != multi_krum or multi_krum < 1
        ):
            raise ValueError(
                f"{name} multi_krum must be an integer >= 1 or None, got {multi_krum!r}"
            )
        self.num_byzantine = int(num_byzantine)
        self.multi_krum = None if multi_krum is None else int(multi_krum)

    def check_federation(self, collaborators: int) -> None:
        f = self.num_byzantine
        if collaborators <= 2 * f + 2:
            raise ValueError(
                f"{type(self).__name__} with num_byzantine = {f} needs more than 2f + 2 = "
                f"{2 * f + 2} updates per round, and the federation has {collaborators} "
                "collaborator(s)"
            )

    def begin_round(self, round_num: int, global_model: Mapping[str, np.ndarray]) -> Accumulator:
        return KrumAccumulator(self)

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Not available: Krum compares whole updates, not one tensor at a time."""
        raise NotImplementedError(
            f"{type(self).__name__} compares whole updates across every tensor name; "
            "use begin_round()"
        )


class MultiKrum(Krum):
    """Multi-Krum: :class:`Krum` averaging the ``m`` best updates, ``m = N - f`` by default.

    Parameters as :class:`Krum`; only the default of ``multi_krum`` differs (``None``, meaning
    ``N - f`` for the ``N`` collaborators of each round).
    """

    def __init__(self, num_byzantine: int = 0, multi_krum: int | None = None) -> None:
        super().__init__(num_byzantine=num_byzantine, multi_krum=multi_krum)


class KrumAccumulator(Accumulator):
    """Keeps every origin's tensors (by reference, not copied); scores and selects at result().

    Every origin must use one weight for all its tensors (its sample count).
    """

    def __init__(self, rule: Krum) -> None:
        self.rule = rule
        self._log = UpdateLog()
        self._updates: dict[str, dict[str, np.ndarray]] = {}
        self._weights: dict[str, float] = {}
        self._names: dict[str, None] = {}
        self.selected: list[str] = []
        self.scores: dict[str, float] = {}

    def add(self, name: str, tensor: np.ndarray, weight: float, origin: str) -> None:
        array, weight_value = self._log.check(name, tensor, weight, origin)
        known = self._weights.get(origin)
        if known is not None and known != weight_value:
            raise ValueError(
                f"{origin!r} sent tensor {name!r} with weight {weight_value}, but its other "
                f"tensors with weight {known}; Krum needs one weight per collaborator"
            )
        self._weights[origin] = weight_value
        self._updates.setdefault(origin, {})[name] = array
        self._names[name] = None

    def _pairwise_squared_distances(self, origins: list[str]) -> np.ndarray:
        # ||a - b||^2 over the concatenation of every name equals the sum over names, and
        # distances do not change when every vector is shifted by the same mean, which keeps
        # the Gram-matrix formula free of cancellation.
        n = len(origins)
        gram = np.zeros((n, n), dtype=np.float64)
        first = self._updates[origins[0]]
        compared = [
            name
            for name in self._names
            if first[name].dtype.kind in "fc" and not name.startswith(OPTIMIZER_PREFIX)
        ]
        for name in compared or list(self._names):
            rows = np.stack(
                [np.ravel(self._updates[origin][name]).astype(np.float64) for origin in origins]
            )
            rows -= rows.mean(axis=0)
            gram += rows @ rows.T
        norms = np.diag(gram)
        distances = norms[:, None] + norms[None, :] - 2.0 * gram
        np.maximum(distances, 0.0, out=distances)
        np.fill_diagonal(distances, 0.0)
        return distances

    def result(self) -> dict[str, np.ndarray]:
        origins = sorted(self._updates)
        n = len(origins)
        f = self.rule.num_byzantine
        if n <= 2 * f + 2:
            raise ValueError(
                f"Krum needs more than 2f + 2 = {2 * f + 2} updates to tolerate f = {f} "
                f"Byzantine collaborators, but N = {n} collaborators sent updates"
            )
        for origin in origins:
            missing = [name for name in self._names if name not in self._updates[origin]]
            if missing:
                raise ValueError(
                    f"{origin!r} did not send {len(missing)} tensor(s) the others sent "
                    f"(e.g. {missing[0]!r}); Krum compares whole updates"
                )
        distances = self._pairwise_squared_distances(origins)
        nearest = n - f - 2
        scores = np.empty(n)
        for i in range(n):
            others = np.delete(distances[i], i)
            scores[i] = np.partition(others, nearest - 1)[:nearest].sum()
        wanted = self.rule.multi_krum if self.rule.multi_krum is not None else n - f
        if wanted > n - f:
            logger.warning(
                "Multi-Krum asked for %d updates but only N - f = %d may be averaged "
                "(N = %d, f = %d); using %d",
                wanted,
                n - f,
                n,
                f,
                n - f,
            )
            wanted = n - f
        order = np.argsort(scores, kind="stable")[:wanted]
        self.selected = [origins[i] for i in order]
        self.scores = {origin: float(score) for origin, score in zip(origins, scores, strict=True)}
        fractions = normalized_weights([self._weights[origin] for origin in self.selected])
        out: dict[str, np.ndarray] = {}
        for name in self._names:
            dtype = self._updates[self.selected[0]][name].dtype
            acc_dtype = accumulation_dtype(dtype)
            total = np.zeros(self._updates[self.selected[0]][name].shape, dtype=acc_dtype)
            for origin, fraction in zip(self.selected, fractions, strict=True):
                total += np.multiply(self._updates[origin][name], fraction, dtype=acc_dtype)
            out[name] = finish_like(total, dtype)
        return out
