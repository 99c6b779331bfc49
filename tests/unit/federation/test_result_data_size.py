"""A task result's data_size weighs it in every average: one that is no number of samples is a
coded error on the collaborator, before anything is sent (it was clamped to 0 and the update
silently left out of the average)."""

from __future__ import annotations

import numpy as np
import pytest
from scripted_collaborator import Runner, collaborator

from fedrun.errors import DataError
from fedrun.federation.tasks import TaskAssignment, TaskResult


@pytest.mark.parametrize("data_size", [-5, 2.5, "12", None, True])
def test_a_result_whose_data_size_is_no_sample_count_is_not_sent(monkeypatch, data_size):
    def train_task(self, col_name, round_num, input_tensor_dict, **kwargs) -> TaskResult:
        return TaskResult({"loss": 0.0}, dict(input_tensor_dict), data_size)

    monkeypatch.setattr(Runner, "train_task", train_task)
    built, _ = collaborator([TaskAssignment(0, ["train"])])

    with pytest.raises(DataError) as caught:
        built.run()

    assert caught.value.code == "FX-DATA-011"
    assert "'train_task' reported data_size" in caught.value.message
    assert built.connection.submitted == []


@pytest.mark.parametrize("data_size", [0, 7, np.int64(7)])
def test_a_whole_number_of_samples_is_sent(monkeypatch, data_size):
    def train_task(self, col_name, round_num, input_tensor_dict, **kwargs) -> TaskResult:
        return TaskResult({"loss": 0.0}, dict(input_tensor_dict), data_size)

    monkeypatch.setattr(Runner, "train_task", train_task)
    built, _ = collaborator([TaskAssignment(0, ["train"])])

    built.run()

    assert built.connection.submitted == [(0, "train")]
