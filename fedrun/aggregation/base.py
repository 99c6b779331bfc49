"""The aggregation contract: how a round's tensors for one task become one tensor per name.

The aggregator opens one :class:`Accumulator` per task and round with
:meth:`AggregationFunction.begin_round`. Results are spooled to disk as they arrive; when the
round closes the aggregator reads them back name by name, collaborators in name order, hands each
tensor to :meth:`Accumulator.add` (or slice by slice to a :class:`TensorStream`) and asks for the
aggregate, name by name with :meth:`Accumulator.finish` where the rule can, else all at once with
:meth:`Accumulator.result`. The fixed order makes the aggregate bit-for-bit independent of the
order results arrived in. Streaming rules (weighted average, FedOpt) fold each tensor into a
running sum, so memory stays near one tensor (finishing by name) or one model, whatever the
number of collaborators. Rules that need every update at once (median, Krum...) set
``needs_all_updates = True`` and keep what they need.

A user rule in ``src/`` only has to implement :meth:`AggregationFunction.call`, OpenFL's
signature; the default accumulator collects the tensors and calls it once per name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class LocalTensor:
    """One collaborator's tensor and its aggregation weight (OpenFL's ``LocalTensor``)."""

    col_name: str
    tensor: np.ndarray
    weight: float


class Accumulator(ABC):  # noqa: B024 - methods raise NotImplementedError instead
    """Per-round, per-task state of an aggregation rule."""

    #: True when :meth:`finish` can finish one name as soon as all its tensors were added
    finishes_by_name: ClassVar[bool] = False
    #: True when each element of an aggregate depends only on the same element of every update
    #: (and the weights): a big tensor may then be aggregated in flat slices, each added and
    #: finished under the tensor's name as if it were a whole tensor of that many elements, and
    #: other accumulators from the same ``begin_round`` may take other slices in other threads
    elementwise: ClassVar[bool] = False

    def add(self, name: str, tensor: np.ndarray, weight: float, origin: str) -> None:
        """Fold one collaborator's tensor ``name`` (weight = its sample count) into the state."""
        raise NotImplementedError

    def result(self) -> dict[str, np.ndarray]:
        """Return the aggregate of every name added, in the dtype of the inputs."""
        raise NotImplementedError

    def finish(self, name: str) -> np.ndarray:
        """The aggregate of ``name`` alone, once every tensor of that name was added (only when
        :attr:`finishes_by_name`). The caller owns the array (it may give it to
        :data:`fedrun.buffers.POOL` when done); the accumulator forgets the name, so
        :meth:`result` leaves it out and a later tensor of that name starts afresh."""
        raise NotImplementedError(f"{type(self).__name__} finishes all names together")

    def open_stream(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, weight: float, origin: str
    ) -> TensorStream | None:
        """Fold tensor ``name`` slice by slice, or None when this rule needs the whole tensor
        (then it comes through :meth:`add`). The default needs it whole."""
        return None

    def release(self) -> None:
        """The caller no longer uses :meth:`result`'s arrays; their memory may be reused."""
        return None


class TensorStream(ABC):
    """One tensor being folded slice by slice (see :meth:`Accumulator.open_stream`).

    Slices may come in any order but each element exactly once. :meth:`fold` refuses a slice
    holding NaN or infinity with ``ValueError`` before adding any of that slice; slices folded
    earlier stay in the sums, so the caller must drop or rebuild the accumulator on any error.
    """

    @abstractmethod
    def fold(self, start: int, values: np.ndarray) -> None:
        """Add the flat elements ``values`` at flat offset ``start``."""

    @abstractmethod
    def close(self) -> None:
        """Every element arrived: the tensor counts."""

    @abstractmethod
    def abort(self) -> None:
        """The tensor will not complete."""


class AggregationFunction:
    """Base class of every aggregation rule.

    Subclasses either override :meth:`begin_round` to return a streaming :class:`Accumulator`, or
    implement :meth:`call` (the OpenFL signature) and inherit a collecting accumulator.
    """

    #: True when the rule needs all updates of a round at once (memory grows with N).
    needs_all_updates: ClassVar[bool] = True

    def check_federation(self, collaborators: int) -> None:
        """Raise ``ValueError`` (why) when this rule can never aggregate the updates of a
        federation of ``collaborators`` members; checked before the aggregator starts."""

    def begin_round(self, round_num: int, global_model: Mapping[str, np.ndarray]) -> Accumulator:
        """Open the accumulator for one task in round ``round_num``.

        ``global_model`` is the model the collaborators started the round from.
        """
        return CollectingAccumulator(self, round_num, global_model)

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Aggregate one tensor name from every collaborator (OpenFL's signature)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither call nor begin_round")

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.call(*args, **kwargs)


class CollectingAccumulator(Accumulator):
    """Keeps every tensor until the round closes, then calls ``function.call`` once per name.

    ``add`` refuses what :class:`UpdateLog` refuses (NaN/inf, negative weights, a shape or dtype
    change, a second tensor of a name from one origin). ``call`` receives OpenFL's weights: the
    sample counts of the collaborators that sent the name, divided by their sum (equal weights
    when every count is 0). Tensors are kept by reference, not copied.
    """

    def __init__(
        self, function: AggregationFunction, round_num: int, global_model: Mapping[str, np.ndarray]
    ) -> None:
        self.function = function
        self.round_num = round_num
        self.global_model = global_model
        self.tensors: dict[str, list[LocalTensor]] = {}
        self._log = UpdateLog()

    def add(self, name: str, tensor: np.ndarray, weight: float, origin: str) -> None:
        tensor, weight = self._log.check(name, tensor, weight, origin)
        self.tensors.setdefault(name, []).append(LocalTensor(origin, tensor, weight))

    def result(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, raw_items in self.tensors.items():
            # OpenFL hands ``call`` weights that sum to 1 (equal ones when every count is 0).
            fractions = normalized_weights([item.weight for item in raw_items])
            items = [
                LocalTensor(item.col_name, item.tensor, float(fraction))
                for item, fraction in zip(raw_items, fractions, strict=True)
            ]
            dtype = items[0].tensor.dtype
            value = np.asarray(self.function.call(items, None, name, self.round_num, ("trained",)))
            out[name] = finish_like(value, dtype)
        return out


def cast_like(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast an aggregate back to the inputs' dtype; integers are rounded, not truncated."""
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
        value = np.rint(value)
    return np.asarray(value, dtype=dtype)


#: elements per slice when folding or scanning big tensors (bounded temporary memory)
FOLD_CHUNK = 1 << 20


def all_finite(array: np.ndarray) -> bool:
    """True when no element is NaN or infinite; scans in slices, allocating no full-size temp."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return True
    flat = arr.reshape(-1)
    # NaN and inf propagate through a sum; only a (rare) overflowing sum needs the exact check
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, flat.size, FOLD_CHUNK):
            part = flat[start : start + FOLD_CHUNK]
            if not np.isfinite(part.sum()) and not np.isfinite(part).all():
                return False
    return True


def check_update(
    name: str, tensor: np.ndarray, weight: float, origin: str
) -> tuple[np.ndarray, float]:
    """Validate one collaborator's tensor and weight on their own.

    Returns ``(np.asarray(tensor), float(weight))``.

    Raises
    ------
    ValueError
        When ``weight`` is negative or not a finite number, when the tensor is not numeric, or
        when a floating-point tensor holds NaN or infinity.
    """
    try:
        weight_value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(
            f"aggregation weight of tensor {name!r} from {origin!r} is not a number: {weight!r}"
        ) from None
    if not np.isfinite(weight_value) or weight_value < 0:
        raise ValueError(
            f"aggregation weight of tensor {name!r} from {origin!r} must be a finite number >= 0 "
            f"(the sample count), got {weight_value!r}"
        )
    array = np.asarray(tensor)
    if array.dtype.kind not in "biufc":
        raise ValueError(
            f"tensor {name!r} from {origin!r} has non-numeric dtype {array.dtype}; "
            "only bool, integer, float and complex tensors can be aggregated"
        )
    if array.dtype.kind in "fc" and not all_finite(array):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"tensor {name!r} from {origin!r} holds {bad} non-finite value(s) (NaN or inf); "
            "the update was refused"
        )
    return array, weight_value


class UpdateLog:
    """What an accumulator has accepted so far, to refuse inconsistent updates.

    :meth:`check` runs :func:`check_update`, then refuses a tensor whose shape or dtype differs
    from an earlier tensor of the same name, and a second tensor of the same name from the same
    origin (a double submission would silently count twice). It keeps only shapes, dtypes and
    origin names, never tensors.
    """

    def __init__(self) -> None:
        self.layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.origins: dict[str, set[str]] = {}

    def check(
        self, name: str, tensor: np.ndarray, weight: float, origin: str
    ) -> tuple[np.ndarray, float]:
        """Validate and record one update; return ``(tensor as ndarray, weight as float)``."""
        array, weight_value = check_update(name, tensor, weight, origin)
        self.check_layout(name, array.shape, array.dtype, origin)
        return array, weight_value

    def forget(self, name: str) -> None:
        """Drop what was recorded of ``name`` (it was finished; a later tensor starts afresh)."""
        self.layout.pop(name, None)
        self.origins.pop(name, None)

    def check_layout(self, name: str, shape: tuple[int, ...], dtype: np.dtype, origin: str) -> None:
        """Record one update's shape and dtype before its values are seen (a streamed tensor)."""
        seen = self.layout.get(name)
        if seen is not None:
            ref_shape, ref_dtype = seen
            if tuple(shape) != ref_shape:
                raise ValueError(
                    f"tensor {name!r} from {origin!r} has shape {tuple(shape)}, but earlier "
                    f"updates of {name!r} have shape {ref_shape}"
                )
            if np.dtype(dtype) != ref_dtype:
                raise ValueError(
                    f"tensor {name!r} from {origin!r} has dtype {np.dtype(dtype)}, but earlier "
                    f"updates of {name!r} have dtype {ref_dtype}"
                )
        origins = self.origins.setdefault(name, set())
        if origin in origins:
            raise ValueError(f"{origin!r} already sent tensor {name!r} in this round")
        if seen is None:
            self.layout[name] = (tuple(shape), np.dtype(dtype))
        origins.add(origin)


def normalized_weights(weights: Sequence[float]) -> np.ndarray:
    """Turn sample counts into fractions summing to 1; equal fractions when they are all 0."""
    values = np.asarray(weights, dtype=np.float64)
    if values.size == 0:
        return values
    total = float(values.sum())
    if total > 0:
        return values / total
    return np.full(values.shape, 1.0 / values.size)


def finish_like(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """:func:`cast_like`, except that a bool result is rounded too (0.6 -> True, 0.4 -> False)."""
    if np.dtype(dtype) == np.bool_ and np.asarray(value).dtype != np.bool_:
        value = np.rint(np.real(value)) != 0
    return cast_like(np.asarray(value), dtype)
