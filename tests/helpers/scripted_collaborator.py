"""A collaborator driven by a scripted aggregator, with a task runner that counts what it was
made to do: for tests of what the collaborator does with the tasks it is given."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from fedrun.federation.collaborator import Collaborator
from fedrun.federation.tasks import TaskAssignment, TaskResult, TaskSpec

TASKS = {
    "aggregated_model_validation": TaskSpec(
        "aggregated_model_validation", "validate_task", {"apply": "global", "metrics": ["acc"]}
    ),
    "train": TaskSpec("train", "train_task", {"metrics": ["loss"], "epochs": 1}),
}
MODEL = {"w": np.ones((2, 3), np.float32)}


class Runner:
    """Counts what it was made to do."""

    def __init__(self) -> None:
        self.trained = 0

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in MODEL.items()}

    def set_tensor_dict(self, tensor_dict, with_opt_vars: bool = False) -> None:
        pass

    def set_optimizer_treatment(self, treatment: str) -> None:
        pass

    def get_train_data_size(self) -> int:
        return 1

    def get_valid_data_size(self) -> int:
        return 1

    def train_task(self, col_name, round_num, input_tensor_dict, **kwargs) -> TaskResult:
        self.trained += 1
        return TaskResult({"loss": 0.0}, dict(input_tensor_dict), 1)

    def validate_task(self, col_name, round_num, input_tensor_dict, **kwargs) -> TaskResult:
        return TaskResult({"acc": 1.0}, {}, 1)


class ScriptedAggregator:
    """Hands out the given assignments in turn, then "quit"."""

    def __init__(self, assignments: list[TaskAssignment]) -> None:
        self.assignments = list(assignments)
        self.asked = 0
        self.submitted: list[tuple[int, str]] = []
        self.expected = None

    def get_tasks(self) -> TaskAssignment:
        self.asked += 1
        if self.assignments:
            return self.assignments.pop(0)
        return TaskAssignment(0, [], quit=True)

    def get_global_model(self, round_num: int, expected=None) -> dict[str, np.ndarray]:
        self.expected = expected
        return {k: v.copy() for k, v in MODEL.items()}

    def submit(
        self,
        round_num: int,
        task: str,
        data_size: int,
        metrics: Mapping[str, float],
        tensors: Mapping[str, np.ndarray],
        deltas: Collection[str],
        result_id: str = "",
    ) -> int:
        self.submitted.append((round_num, task))
        return 0


def collaborator(script: list[TaskAssignment], rounds: int = 2) -> tuple[Collaborator, Runner]:
    runner = Runner()
    built = Collaborator(
        collaborator_name="one",
        connection=ScriptedAggregator(script),
        task_runner=runner,
        tasks=TASKS,
        rounds_to_train=rounds,
    )
    return built, runner
