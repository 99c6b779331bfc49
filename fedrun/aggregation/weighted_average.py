"""Weighted average (FedAvg), the default rule, and the streaming accumulator behind it.

The accumulator keeps, per tensor name, a running sum of ``weight * tensor`` in float64 (complex128
for complex tensors) and the running weight, so its memory is one float64 copy of the names not
yet finished, whatever the number of collaborators. The aggregator adds the tensors of a name in
a fixed order (collaborator names) and finishes each name before the next, so the result does
not depend on the order results arrived in and memory stays near one float64 tensor.
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
    TensorStream,
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

    __slots__ = ("total", "weight", "count", "pending")

    def __init__(self) -> None:
        self.total: Any = None  # ndarray (or numpy scalar for 0-d tensors)
        self.weight = 0.0  # sum of the positive weights folded in
        self.count = 0  # number of tensors folded in
        self.pending = 0.0  # weights of streams still arriving (their slices are in total)

    @property
    def weighted(self) -> bool:
        """True once a positively weighted tensor was folded in, or is being."""
        return self.weight > 0 or self.pending > 0


#: elements per block when a streamed slice is weighted, checked and added (fits in cache)
STREAM_BLOCK = 1 << 17


class _WeightedStream(TensorStream):
    """Folds one positively weighted float tensor into a running sum, slice by slice."""

    def __init__(
        self,
        owner: StreamingAverageAccumulator,
        state: _RunningSum,
        weight: float,
        name: str,
        origin: str,
    ) -> None:
        self.owner = owner
        self.state = state
        self.weight = weight
        self.name = name
        self.origin = origin
        self.flat = state.total.reshape(-1)
        self.scratch = np.empty(min(STREAM_BLOCK, self.flat.size), dtype=self.flat.dtype)
        self.open = True

    def fold(self, start: int, values: np.ndarray) -> None:
        if self.owner._result is not None or not self.open:
            raise RuntimeError(f"tensor {self.name!r}: the sums were already finished")
        src = values.reshape(-1)
        end = start + src.size
        if start < 0 or end > self.flat.size:
            raise ValueError(
                f"slice [{start}, {end}) of tensor {self.name!r} from {self.origin!r} lies "
                f"outside its {self.flat.size} elements"
            )
        for lo in range(0, src.size, STREAM_BLOCK):
            hi = min(lo + STREAM_BLOCK, src.size)
            part = self.scratch[: hi - lo]
            np.multiply(src[lo:hi], self.weight, out=part, dtype=part.dtype)
            # NaN and inf propagate through the sum; float64 sums of float32 inputs cannot overflow
            if not np.isfinite(part.sum()) and not np.isfinite(part).all():
                raise ValueError(
                    f"tensor {self.name!r} from {self.origin!r} holds non-finite value(s) "
                    "(NaN or inf); the update was refused"
                )
            self.flat[start + lo : start + hi] += part

    def close(self) -> None:
        if self.open:
            self.open = False
            self.state.pending -= self.weight
            self.state.weight += self.weight
            self.state.count += 1

    def abort(self) -> None:
        if self.open:
            self.open = False
            self.state.pending -= self.weight


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

    finishes_by_name = True
    elementwise = True

    def __init__(self, summed: Callable[[str], bool] | None = None) -> None:
        self._summed = summed
        self._log = UpdateLog()
        self._sums: dict[str, _RunningSum] = {}
        self._result: dict[str, np.ndarray] | None = None
        self._lent: list[np.ndarray] = []  # pooled sums that result()'s arrays live in

    def open_stream(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, weight: float, origin: str
    ) -> TensorStream | None:
        """Stream positively weighted float tensors (the common case); others come whole."""
        dt = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        if (
            self._result is not None
            or dt.kind != "f"
            or dt.itemsize > 8
            or size == 0
            or len(shape) == 0
            or not (np.isfinite(weight) and weight > 0)
            or (self._summed is not None and self._summed(name))
        ):
            return None
        state = self._sums.get(name)
        if (
            state is not None
            and state.total is not None
            and not isinstance(state.total, np.ndarray)
        ):
            return None
        self._log.check_layout(name, tuple(shape), dt, origin)
        if state is None:
            state = self._sums[name] = _RunningSum()
        if not state.weighted:
            # the first weighted tensor starts the sum (dropping any zero-weight sum so far)
            total = POOL.take_array(tuple(shape), accumulation_dtype(dt))
            total.fill(0)
            state.total = total
        state.pending += float(weight)
        return _WeightedStream(self, state, float(weight), name, origin)

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
            if not state.weighted:
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
        elif not state.weighted:
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

    def finish(self, name: str) -> np.ndarray:
        """The aggregate of ``name`` in its input dtype; the float64 sum is divided in place and
        a float32 result is written into the first half of the sum's own memory, which the
        returned array keeps (give it to the buffer pool once written out)."""
        if self._result is not None:
            raise RuntimeError("the sums were already finished")
        value, _ = self._finish_one(name, self._sums.pop(name))
        self._log.forget(name)
        return value

    def _finish_one(self, name: str, state: _RunningSum) -> tuple[np.ndarray, bool]:
        """The aggregate of one name, and whether it lives in the (pooled) sum's memory."""
        total = state.total
        state.total = None
        owned = isinstance(total, np.ndarray) and total.ndim > 0
        if self._summed is not None and self._summed(name):
            value = total
        else:
            divisor = state.weight if state.weight > 0 else state.count
            value = np.divide(total, divisor, out=total) if owned else np.asarray(total / divisor)
        dtype = np.dtype(self._log.layout[name][1])
        if owned and value is total and total.dtype == np.float64 and dtype == np.float32:
            return _narrow_in_place(total), True
        if owned and value is total and total.dtype == dtype:
            return total, True
        out = finish_like(np.asarray(value), dtype)
        if owned and out is not total:
            POOL.give(total)
        return out, False

    def result(self) -> dict[str, np.ndarray]:
        """The aggregates in the inputs' dtypes (call once; later calls return the same dict),
        of the names not taken by :meth:`finish`.

        The float64 sums are divided in place and float32 results are written into the first
        half of their own sum's memory, so finishing a round allocates nothing model-sized.
        Call :meth:`release` once the results are no longer used, to recycle that memory.
        """
        if self._result is not None:
            return self._result
        out: dict[str, np.ndarray] = {}
        for name, state in self._sums.items():
            out[name], lent = self._finish_one(name, state)
            if lent:
                self._lent.append(out[name])
        self._result = out
        return out

    def release(self) -> None:
        """Give the sums that :meth:`result`'s arrays live in back to the buffer pool."""
        lent, self._lent = self._lent, []
        for buffer in lent:
            POOL.give(buffer)


def _narrow_in_place(total: np.ndarray) -> np.ndarray:
    """Cast a float64 array to float32 into the first half of its own memory, block by block
    (each block's float32 bytes end before the float64 bytes still to be read)."""
    flat = total.reshape(-1)
    narrow = flat.view(np.float32)[: flat.size]
    for lo in range(0, flat.size, FOLD_CHUNK):
        hi = min(lo + FOLD_CHUNK, flat.size)
        # source and target overlap only inside the first block; numpy buffers that one safely
        np.copyto(narrow[lo:hi], flat[lo:hi], casting="same_kind")
    return narrow.reshape(total.shape)


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
