"""Straggler policies and the collaborator's TensorStore retention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrun.errors import PlanError
from fedrun.federation.stragglers import (
    CutoffTimeBasedStragglerHandling,
    CutoffTimePolicy,
    PercentageBasedStragglerHandling,
    PercentagePolicy,
    WaitForAllPolicy,
)
from fedrun.federation.tensor_store import TensorStore


# ---------------------------------------------------------------------- wait for all
@pytest.mark.parametrize(("done", "expected"), [(0, False), (3, False), (4, True)])
def test_wait_for_all(done, expected):
    # Prepare
    policy = WaitForAllPolicy(ignored_setting=1)

    # Execute / Assert
    assert policy.round_may_close(done, 4, started_at=0.0, now=1e9) is expected
    assert policy.deadline(0.0) is None


# ---------------------------------------------------------------------- cut-off time
@pytest.mark.parametrize(
    ("done", "now", "expected"),
    [
        (1, 109.9, False),  # before the cut-off: wait
        (1, 110.0, True),  # at the cut-off with the minimum: close
        (0, 500.0, False),  # after the cut-off, nobody reported: keep waiting
        (4, 100.5, True),  # everyone reported: close at once
    ],
)
def test_cutoff_time_before_and_after_the_cutoff(done, now, expected):
    # Prepare
    policy = CutoffTimePolicy(straggler_cutoff_time=10, minimum_reporting=1)

    # Execute / Assert
    assert policy.round_may_close(done, 4, started_at=100.0, now=now) is expected
    assert policy.deadline(100.0) == 110.0


@pytest.mark.parametrize(("done", "expected"), [(1, False), (2, False), (3, True)])
def test_cutoff_time_waits_for_minimum_reporting(done, expected):
    # Prepare
    policy = CutoffTimePolicy(straggler_cutoff_time=5, minimum_reporting=3)

    # Execute / Assert
    assert policy.round_may_close(done, 4, started_at=0.0, now=60.0) is expected


def test_cutoff_minimum_reporting_above_the_collaborator_count_is_capped():
    # Prepare
    policy = CutoffTimePolicy(straggler_cutoff_time=5, minimum_reporting=10)

    # Execute / Assert
    assert policy.round_may_close(2, 3, started_at=0.0, now=60.0) is False
    assert policy.round_may_close(3, 3, started_at=0.0, now=1.0) is True


def test_cutoff_before_the_round_started_or_infinite_never_fires():
    # Prepare
    finite = CutoffTimePolicy(straggler_cutoff_time=1)
    infinite = CutoffTimePolicy()

    # Execute / Assert
    assert finite.round_may_close(2, 4, started_at=None, now=1e9) is False
    assert finite.deadline(None) is None
    assert infinite.round_may_close(3, 4, started_at=0.0, now=1e12) is False
    assert infinite.deadline(0.0) is None
    assert math.isinf(infinite.cutoff)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"straggler_cutoff_time": 10, "minimum_reporting": 0}, "minimum_reporting is 0"),
        ({"straggler_cutoff_time": 0}, "straggler_cutoff_time is 0"),
        ({"straggler_cutoff_time": -3}, "straggler_cutoff_time is -3"),
    ],
)
def test_cutoff_refuses_bad_settings(kwargs, expected):
    # Execute
    with pytest.raises(PlanError) as caught:
        CutoffTimePolicy(**kwargs)

    # Assert
    assert caught.value.code == "FX-PLAN-020"
    assert expected in caught.value.message
    assert caught.value.fix


# ---------------------------------------------------------------------- percentage
@pytest.mark.parametrize(
    ("percent", "minimum", "total", "needed"),
    [
        (0.5, 1, 4, 2),
        (0.5, 1, 5, 3),
        (0.75, 1, 4, 3),
        (1.0, 1, 4, 4),
        (0.1, 3, 10, 3),  # minimum_reporting wins over a small percentage
        (0.1, 8, 4, 4),  # ... but never more than everyone
        (0.3, 1, 10, 3),  # 0.3 * 10 is 3.0000000000000004 in floating point
    ],
)
def test_percentage_closes_once_enough_reported(percent, minimum, total, needed):
    # Prepare
    policy = PercentagePolicy(percent_collaborators_needed=percent, minimum_reporting=minimum)

    # Execute
    may_close = [policy.round_may_close(d, total, 0.0, 0.0) for d in range(total + 1)]

    # Assert
    assert may_close == [d >= needed for d in range(total + 1)]
    assert policy.deadline(0.0) is None


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"percent_collaborators_needed": 0}, "percent_collaborators_needed is 0"),
        ({"percent_collaborators_needed": 1.5}, "percent_collaborators_needed is 1.5"),
        ({"percent_collaborators_needed": 0.5, "minimum_reporting": 0}, "minimum_reporting is 0"),
    ],
)
def test_percentage_refuses_bad_settings(kwargs, expected):
    # Execute
    with pytest.raises(PlanError) as caught:
        PercentagePolicy(**kwargs)

    # Assert
    assert caught.value.code == "FX-PLAN-020"
    assert expected in caught.value.message


def test_openfl_1_6_policy_names():
    assert CutoffTimeBasedStragglerHandling is CutoffTimePolicy
    assert PercentageBasedStragglerHandling is PercentagePolicy


# ---------------------------------------------------------------------- tensor store
def test_tensor_store_keeps_the_newest_rounds():
    # Prepare
    store = TensorStore(keep_rounds=2)
    for r in range(5):
        store.put(r, "global", {"w": np.full(2, r, dtype=np.float32)})
        store.put(r, "trained", {"w": np.full(2, r + 0.5, dtype=np.float32)})

    # Execute
    store.clean_up()

    # Assert
    assert store.rounds() == [3, 4]
    assert store.get(2, "global") is None
    np.testing.assert_array_equal(store.get(3, "trained")["w"], [3.5, 3.5])
    assert store.nbytes() == 4 * 2 * 4


def test_tensor_store_keeps_at_least_one_round_and_tolerates_gaps():
    # Prepare
    store = TensorStore(keep_rounds=0)
    for r in (1, 7, 4):
        store.put(r, "global", {"w": np.zeros(1)})

    # Execute
    store.clean_up()

    # Assert
    assert store.keep_rounds == 1
    assert store.rounds() == [7]


def test_tensor_store_clean_up_with_few_rounds_keeps_everything():
    # Prepare
    store = TensorStore(keep_rounds=3)
    store.put(0, "global", {"w": np.zeros(1)})
    store.put(1, "global", {"w": np.zeros(1)})

    # Execute
    store.clean_up()

    # Assert
    assert store.rounds() == [0, 1]
