"""Weighted average (FedAvg), the default rule, and the streaming accumulator behind it.

The accumulator keeps, per tensor name, a running sum of ``weight * tensor`` in float64 (complex128
for complex tensors) and the running weight, so its memory is one float64 copy of the model
whatever the number of collaborators. Sums of floating-point numbers depend slightly on their
order; two arrival orders agree to about ``N * 1e-16`` relative, far below float32 resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedrun.aggregation.base import (
    FOLD_CHUNK,
    Accumulator,
    AggregationFunction,
    CollectingAccumulator,
    LocalTensor,
    UpdateLog,
    finish_like,
    normalized_weights,
)
from fedrun.buffers import POOL


def _fold(total: Any, array: np.ndarray, weight: float) -> Any:
    """Return ``total + weight * array``, added in place in slices for arrays so no full-size
    float64 temporary is made (0-d totals are numpy scalars and are replaced)."""
    if np.ndim(total) == 0:
        return total + np.multiply(array, weight, dtype=np.result_type(total))
    dst = total.reshape(-1)
    src = np.asarray(array).reshape(-1)
    buffer = np.empty(min(FOLD_CHUNK, dst.size), dtype=dst.dtype)
    for start in range(0, dst.size, FOLD_CHUNK):
        end = min(start + FOLD_CHUNK, dst.size)
        part = buffer[: end - start]
        np.multiply(src[start:end], weight, out=part, dtype=dst.dtype)
        dst[start:end] += part
    return total


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype sums are kept in: float64, complex128 for complex, longdouble stays longdouble."""
    return np.result_type(np.dtype(dtype), np.float64)


class _RunningSum:
    """Running state of one tensor name."""

    __slots__ = ("total", "weight", "count")

    def __init__(self) -> None:
        self.total: Any = None  # ndarray (or numpy scalar for 0-d tensors)
        self.weight = 0.0  # sum of the positive weights folded in
        self.count = 0  # number of tensors folded in


class StreamingAverageAccumulator(Accumulator):
    """Running weighted sum and weight per name; memory about one float64 model.

    Parameters
    ----------
    summed:
        Optional predicate on tensor names; names it accepts are summed (unweighted) instead of
        averaged, as FedCurv does with its Fisher terms.

    Notes
    -----
    While every weight seen for a name is 0, tensors are summed with equal weights; the first
    positive weight restarts the sum as a proper weighted one (zero-weight tensors then count
    for nothing, as their weight says). The result is therefore the weighted average when any
    weight is positive and the plain mean otherwise, whatever the arrival order.
    """

    def __init__(self, summed: Callable[[str], bool] | None = None) -> None:
        self._summed = summed
        self._log = UpdateLog()
        self._sums: dict[str, _RunningSum] = {}
        self._result: dict[str, np.ndarray] | None = None

    def add(self, name: str, tensor: np.ndarray, weight: float, origin: str) -> None:
        array, weight_value = self._log.check(name, tensor, weight, origin)
        state = self._sums.get(name)
        if state is None:
            state = self._sums[name] = _RunningSum()
        acc_dtype = accumulation_dtype(array.dtype)
        if self._summed is not None and self._summed(name):
            if state.total is None:
                state.total = np.array(array, dtype=acc_dtype, copy=True)
            else:
                state.total += array
        elif weight_value > 0:
            if state.weight == 0.0:
                # the first weighted tensor starts the sum (dropping any zero-weight sum so far)
                state.total = np.multiply(
                    array,
                    weight_value,
                    out=POOL.take_array(array.shape, acc_dtype),
                    dtype=acc_dtype,
                )
            else:
                state.total = _fold(state.total, array, weight_value)
            state.weight += weight_value
        elif state.weight == 0.0:
            if state.total is None:
                state.total = np.array(array, dtype=acc_dtype, copy=True)
            else:
                state.total += array
        state.count += 1

    def dtypes(self) -> dict[str, np.dtype]:
        """The input dtype of every name added so far."""
        return {name: dtype for name, (_, dtype) in self._log.layout.items()}

    def exact_result(self) -> dict[str, np.ndarray]:
        """The aggregates in the accumulation dtype (float64 for real inputs), before the cast."""
        out: dict[str, np.ndarray] = {}
        for name, state in self._sums.items():
            if self._summed is not None and self._summed(name):
                value = state.total
            elif state.weight > 0:
                value = state.total / state.weight
            else:
                value = state.total / state.count
            out[name] = np.asarray(value)
        return out

    def result(self) -> dict[str, np.ndarray]:
        """The aggregates in the inputs' dtypes; the float64 sums are divided in place and their
        memory goes back to the buffer pool (call once; later calls return the same dict)."""
        if self._result is not None:
            return self._result
        dtypes = self.dtypes()
        out: dict[str, np.ndarray] = {}
        for name, state in self._sums.items():
            total = state.total
            owned = isinstance(total, np.ndarray) and total.ndim > 0
            if self._summed is not None and self._summed(name):
                value = total
            else:
                divisor = state.weight if state.weight > 0 else state.count
                value = (
                    np.divide(total, divisor, out=total) if owned else np.asarray(total / divisor)
                )
            out[name] = finish_like(np.asarray(value), dtypes[name])
            if owned and out[name] is not total:
                POOL.give(total)
            state.total = None
        self._result = out
        return out


def overrides_call(rule: AggregationFunction, base: type[AggregationFunction]) -> bool:
    """True when ``rule``'s class replaces ``base.call`` with its own ``call``."""
    return type(rule).call is not base.call


class WeightedAverage(AggregationFunction):
    """Weighted average of the collaborators' tensors (FedAvg), the default rule.

    Each collaborator's weight is its sample count, normalized to fractions; when every count is
    0 the collaborators count equally. Integer tensors are rounded back to their dtype. Streaming:
    memory stays about one float64 copy of the model whatever the number of collaborators.

    A subclass that overrides only :meth:`call` (OpenFL style) gets that ``call`` run through a
    collecting accumulator instead, and is marked ``needs_all_updates = True``.
    """

    needs_all_updates = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "call" in own and "begin_round" not in own and "needs_all_updates" not in own:
            cls.needs_all_updates = True

    def begin_round(self, round_num: int, global_model: Mapping[str, np.ndarray]) -> Accumulator:
        if overrides_call(self, WeightedAverage):
            return CollectingAccumulator(self, round_num, global_model)
        return StreamingAverageAccumulator()

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Weighted average of ``local_tensors`` (OpenFL's signature), in float64."""
        return weighted_mean(local_tensors)


def weighted_mean(local_tensors: Sequence[LocalTensor]) -> np.ndarray:
    """Weighted mean of ``LocalTensor`` items in the accumulation dtype (weights normalized)."""
    if not local_tensors:
        raise ValueError("cannot aggregate an empty list of tensors")
    fractions = normalized_weights([item.weight for item in local_tensors])
    acc_dtype = accumulation_dtype(np.asarray(local_tensors[0].tensor).dtype)
    total: Any = None
    for item, fraction in zip(local_tensors, fractions, strict=True):
        contribution = np.multiply(item.tensor, fraction, dtype=acc_dtype)
        total = contribution if total is None else total + contribution
    return np.asarray(total)
