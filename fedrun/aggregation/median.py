"""Element-wise median of the collaborators' tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedrun.aggregation.base import AggregationFunction, LocalTensor


def stack_tensors(local_tensors: Sequence[LocalTensor]) -> np.ndarray:
    """Stack the tensors along a new first axis (bool becomes uint8 so it can be ordered)."""
    if not local_tensors:
        raise ValueError("cannot aggregate an empty list of tensors")
    stacked = np.stack([np.asarray(item.tensor) for item in local_tensors])
    if stacked.dtype == np.bool_:
        stacked = stacked.astype(np.uint8)
    return stacked


class Median(AggregationFunction):
    """Element-wise median over the collaborators, unweighted (weights are ignored).

    With an even number of collaborators an element is the mean of the two middle values.
    Integer tensors are rounded back to their dtype. Needs every update of the round at once:
    memory grows with the number of collaborators.
    """

    needs_all_updates = True

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Element-wise median of ``local_tensors`` (OpenFL's signature)."""
        return np.asarray(np.median(stack_tensors(local_tensors), axis=0))
