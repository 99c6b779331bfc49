"""A collaborator started again in the middle of a round sends the results it finished before
it stopped instead of computing them again, and validates its locally trained model from them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scripted_collaborator import MODEL, Runner, ScriptedAggregator

from fedrun.federation.collaborator import Collaborator
from fedrun.federation.tasks import TaskAssignment, TaskResult, TaskSpec
from fedrun.storage import finished_results
from fedrun.storage.finished_results import FinishedResults

TASKS = {
    "train": TaskSpec("train", "train_task", {"epochs": 1}),
    "locally_tuned_model_validation": TaskSpec(
        "locally_tuned_model_validation", "validate_task", {"apply": "local"}
    ),
}
ROUND = [TaskAssignment(1, list(TASKS), run="run1")]


class Trainer(Runner):
    """Trains to MODEL + 1 + (how many times it trained); validates by the model's mean."""

    def train_task(self, col_name, round_num, input_tensor_dict, **kwargs) -> TaskResult:
        self.trained += 1
        tensors = {k: v + 1.0 + self.trained for k, v in input_tensor_dict.items()}
        return TaskResult({"loss": float(self.trained)}, tensors, 7)

    def validate_task(self, col_name, round_num, input_tensor_dict, **kwargs) -> TaskResult:
        return TaskResult({"acc": float(np.mean(input_tensor_dict["w"]))}, {}, 3)


class Recording(ScriptedAggregator):
    """Records what was sent; with ``crash_on``, the process "dies" sending that task."""

    def __init__(self, assignments, crash_on: str | None = None) -> None:
        super().__init__(assignments)
        self.crash_on = crash_on
        self.results: dict[str, tuple[int, dict, dict]] = {}

    def submit(self, round_num, task, data_size, metrics, tensors, deltas, result_id="") -> int:
        if task == self.crash_on:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or a crash, mid-upload
        self.results[task] = (data_size, dict(metrics), {k: v.copy() for k, v in tensors.items()})
        return 0


def start(tmp_path, connection, runner=None) -> tuple[Collaborator, Trainer]:
    runner = runner or Trainer()
    return (
        Collaborator(
            collaborator_name="one",
            connection=connection,
            task_runner=runner,
            tasks=TASKS,
            rounds_to_train=3,
            finished=FinishedResults(tmp_path / "kept", "h" * 64),
        ),
        runner,
    )


@pytest.fixture
def keep_every_result(monkeypatch):
    monkeypatch.setattr(finished_results, "KEEP_MIN_SECONDS", 0.0)


def test_a_restarted_collaborator_sends_its_finished_training_and_validates_it(
    tmp_path, keep_every_result, caplog
):
    # Prepare: the first process trains and stops while sending its result
    caplog.set_level(logging.INFO, logger="fedrun")
    first, first_runner = start(tmp_path, Recording(ROUND, crash_on="train"))
    with pytest.raises(KeyboardInterrupt):
        first.work()
    assert first_runner.trained == 1

    # Execute: started again, it is given the round's tasks again
    aggregator = Recording(ROUND)
    second, second_runner = start(tmp_path, aggregator)
    second.work()

    # Assert: not trained again; the first training's result sent and validated locally
    assert second_runner.trained == 0
    data_size, metrics, tensors = aggregator.results["train"]
    assert (data_size, metrics) == (7, {"loss": 1.0})
    np.testing.assert_array_equal(tensors["w"], MODEL["w"] + 2.0)
    assert aggregator.results["locally_tuned_model_validation"][1] == {"acc": 3.0}
    assert "train was finished before this collaborator restarted" in caplog.text
    assert list((tmp_path / "kept").iterdir()) == []  # the experiment is over: forgotten


def test_a_collaborator_restarted_after_its_training_was_accepted_validates_that_model(
    tmp_path, keep_every_result
):
    # the aggregator counted the training; the process stopped before the local validation
    first, _ = start(tmp_path, Recording(ROUND, crash_on="locally_tuned_model_validation"))
    with pytest.raises(KeyboardInterrupt):
        first.work()

    aggregator = Recording([TaskAssignment(1, ["locally_tuned_model_validation"], run="run1")])
    second, second_runner = start(tmp_path, aggregator)
    second.work()

    assert second_runner.trained == 0
    assert aggregator.results["locally_tuned_model_validation"][1] == {"acc": 3.0}


def test_a_result_of_another_run_is_computed_again(tmp_path, keep_every_result):
    # the aggregator was started over (--reset-state) between the two processes
    first, _ = start(tmp_path, Recording(ROUND, crash_on="train"))
    with pytest.raises(KeyboardInterrupt):
        first.work()

    aggregator = Recording([TaskAssignment(1, list(TASKS), run="run2")])
    second, second_runner = start(tmp_path, aggregator)
    second.work()

    assert second_runner.trained == 1
    assert aggregator.results["train"][1] == {"loss": 1.0}  # this process's first training


def test_fast_results_are_not_written(tmp_path):
    # below KEEP_MIN_SECONDS of compute, computing again is cheaper than writing
    first, _ = start(tmp_path, Recording(ROUND, crash_on="train"))
    with pytest.raises(KeyboardInterrupt):
        first.work()

    assert not (tmp_path / "kept").exists() or list((tmp_path / "kept").iterdir()) == []
