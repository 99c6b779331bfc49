"""The DataLoader base refuses batch sizes that would train on nothing or be cut silently."""

from __future__ import annotations

import numpy as np
import pytest

from fedrun.data.loader import DataLoader
from fedrun.errors import PlanError


def loader(batch_size=4):
    data = DataLoader(batch_size=batch_size, random_seed=0)
    data.X_train = np.arange(10).reshape(10, 1)
    data.y_train = np.arange(10)
    data.X_valid, data.y_valid = data.X_train[:3], data.y_train[:3]
    return data


@pytest.mark.parametrize("bad", [0, -3, 2.5, "32", None, True, float("nan")])
def test_a_bad_batch_size_in_the_plan_is_refused_with_its_key(bad):
    with pytest.raises(PlanError) as caught:
        loader(bad)
    assert caught.value.code == "FX-PLAN-028"
    assert "data_loader.settings.batch_size" in caught.value.message
    assert repr(bad) in caught.value.message


def test_a_bad_batch_size_from_a_task_is_refused():
    data = loader()
    with pytest.raises(PlanError, match="task's batch_size"):
        list(data.get_train_loader(batch_size=-1))
    with pytest.raises(PlanError, match="task's batch_size"):
        list(data.get_valid_loader(batch_size=0))


def test_whole_numbers_serve_every_sample_once_per_pass():
    data = loader(4.0)  # YAML may give 4.0
    assert data.batch_size == 4
    sizes = [len(x) for x, _ in data.get_train_loader()]
    assert sizes == [4, 4, 2]
    assert sorted(int(v) for x, _ in data.get_train_loader() for v in x[:, 0]) == list(range(10))
    assert [len(x) for x, _ in data.get_valid_loader(batch_size=np.int64(2))] == [2, 1]
