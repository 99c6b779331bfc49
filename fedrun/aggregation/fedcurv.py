"""FedCurv's aggregation: Fisher terms are summed, every other tensor is weighted-averaged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedrun.aggregation.base import Accumulator, CollectingAccumulator, LocalTensor
from fedrun.aggregation.weighted_average import (
    StreamingAverageAccumulator,
    WeightedAverage,
    accumulation_dtype,
    overrides_call,
    weighted_mean,
)

#: Name endings of the tensors FedCurv sums instead of averaging (its Fisher-information terms).
FISHER_SUFFIXES: tuple[str, ...] = ("_u", "_v", "_w")


def is_fisher_term(name: str) -> bool:
    """True for the tensor names FedCurv sums (ending in ``_u``, ``_v`` or ``_w``)."""
    return name.endswith(FISHER_SUFFIXES)


class FedCurvWeightedAverage(WeightedAverage):
    """Aggregation for FedCurv (Shoham et al. 2019): sum the Fisher terms, average the rest.

    Tensors whose names end in ``_u``, ``_v`` or ``_w`` are summed over the collaborators,
    unweighted; every other tensor is weighted-averaged like :class:`WeightedAverage`. Streaming:
    memory stays about one float64 copy of the model.
    """

    needs_all_updates = False

    def begin_round(self, round_num: int, global_model: Mapping[str, np.ndarray]) -> Accumulator:
        if overrides_call(self, FedCurvWeightedAverage):
            return CollectingAccumulator(self, round_num, global_model)
        return StreamingAverageAccumulator(summed=is_fisher_term)

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Sum (Fisher terms) or weighted average of ``local_tensors`` (OpenFL's signature)."""
        if not is_fisher_term(tensor_name):
            return weighted_mean(local_tensors)
        if not local_tensors:
            raise ValueError("cannot aggregate an empty list of tensors")
        acc_dtype = accumulation_dtype(np.asarray(local_tensors[0].tensor).dtype)
        total = np.zeros(np.shape(local_tensors[0].tensor), dtype=acc_dtype)
        for item in local_tensors:
            total = total + np.asarray(item.tensor, dtype=acc_dtype)
        return total
