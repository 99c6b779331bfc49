"""A seeded run reseeds every generator per round and task, so a collaborator restarted
mid-experiment draws what one that ran through draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrun.data.loader import DataLoader
from fedrun.seeding import seed_task, set_seed


@pytest.fixture(autouse=True)
def unseeded_after():
    yield
    set_seed(None)  # the process seed is global: other tests run unseeded


def draws(loader: DataLoader) -> tuple[float, float, list[int]]:
    return (
        float(np.random.rand()),
        float(torch.rand(1)),
        [int(i) for i in loader._rng.permutation(10)],
    )


def test_a_fresh_process_draws_what_a_long_running_one_draws_in_round_3():
    # Prepare: one "process" that ran rounds 0-2 first, one that starts at round 3 (restarted)
    set_seed(7)
    ran_through = DataLoader()
    for round_num in range(3):
        seed_task(round_num, "train", ran_through)
        draws(ran_through)
    seed_task(3, "train", ran_through)
    expected = draws(ran_through)

    set_seed(7)
    restarted = DataLoader()
    np.random.rand(5)  # whatever it did while starting

    # Execute
    seed_task(3, "train", restarted)

    # Assert
    assert draws(restarted) == expected


def test_rounds_and_tasks_draw_differently_and_unseeded_runs_are_left_alone():
    set_seed(7)
    loader = DataLoader()
    seed_task(1, "train", loader)
    first = draws(loader)
    seed_task(2, "train", loader)
    assert draws(loader) != first
    set_seed(None)
    before = np.random.get_state()[1][:4].copy()
    seed_task(1, "train", loader)
    assert (np.random.get_state()[1][:4] == before).all()
