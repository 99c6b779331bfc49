"""Helpers shared by the aggregation tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest

from fedrun.aggregation.base import AggregationFunction

#: One collaborator's update: (origin, weight, {name: tensor}).
Update = tuple[str, float, Mapping[str, np.ndarray]]


def run_round(
    rule: AggregationFunction,
    updates: Sequence[Update],
    global_model: Mapping[str, np.ndarray] | None = None,
    round_num: int = 0,
) -> dict[str, np.ndarray]:
    """Feed every update to a fresh accumulator, one tensor at a time, and return the result."""
    accumulator = rule.begin_round(round_num, global_model or {})
    for origin, weight, tensors in updates:
        for name, tensor in tensors.items():
            accumulator.add(name, tensor, weight, origin)
    return accumulator.result()


@pytest.fixture
def aggregate() -> Callable[..., dict[str, np.ndarray]]:
    """``aggregate(rule, updates, global_model=None, round_num=0) -> result``."""
    return run_round


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
