"""Assigners: who runs which tasks in which round."""

from __future__ import annotations

import pytest

from fedrun.errors import PlanError
from fedrun.federation.assigner import RandomGroupedAssigner, StaticGroupedAssigner

THREE_TASKS = ["aggregated_model_validation", "train", "locally_tuned_model_validation"]
COLS = ["one", "two", "three", "four"]


def two_groups(first: float = 0.5, second: float = 0.5) -> list[dict]:
    return [
        {"name": "train_and_validate", "percentage": first, "tasks": THREE_TASKS},
        {"name": "validate_only", "percentage": second, "tasks": ["aggregated_model_validation"]},
    ]


# ---------------------------------------------------------------------- random grouped
def test_default_group_gives_every_collaborator_all_three_tasks_in_order():
    # Prepare
    groups = [{"name": "train_and_validate", "percentage": 1.0, "tasks": THREE_TASKS}]
    assigner = RandomGroupedAssigner(groups, COLS, rounds_to_train=3)

    # Execute
    rounds = [assigner.assignment(r) for r in range(3)]

    # Assert
    for assignment in rounds:
        assert assignment == {c: THREE_TASKS for c in COLS}
    assert assigner.tasks_for("two", 1) == THREE_TASKS
    assert assigner.tasks_for("stranger", 1) == []
    assert assigner.all_tasks() == THREE_TASKS


def test_two_groups_split_half_and_half_and_reshuffle_across_rounds():
    # Prepare
    assigner = RandomGroupedAssigner(two_groups(), COLS, rounds_to_train=10, seed=11)

    # Execute
    rounds = [assigner.assignment(r) for r in range(10)]

    # Assert
    trainers = []
    for assignment in rounds:
        assert sorted(assignment) == sorted(COLS)
        group = sorted(c for c, tasks in assignment.items() if tasks == THREE_TASKS)
        assert len(group) == 2
        assert all(assignment[c] == ["aggregated_model_validation"] for c in COLS if c not in group)
        trainers.append(tuple(group))
    assert len(set(trainers)) > 1, "the groups never changed across 10 rounds"


def test_random_groups_are_deterministic_per_seed_and_round():
    # Prepare
    a = RandomGroupedAssigner(two_groups(), COLS, seed=5)
    b = RandomGroupedAssigner(two_groups(), list(COLS), seed=5)
    other_seed = RandomGroupedAssigner(two_groups(), COLS, seed=6)

    # Execute
    first = [a.assignment(r) for r in range(8)]
    again = [a.assignment(r) for r in range(8)]
    restarted = [b.assignment(r) for r in range(8)]
    other = [other_seed.assignment(r) for r in range(8)]

    # Assert
    assert first == again == restarted
    assert first != other


@pytest.mark.parametrize(
    ("percentages", "count"),
    [
        ((0.5, 0.5), 3),
        ((0.5, 0.5), 5),
        pytest.param((0.25, 0.75), 2, id="quarter-of-two"),
        pytest.param((0.6, 0.4), 1, id="sixty-forty-of-one"),
    ],
)
def test_percentages_that_cannot_split_the_collaborators(percentages, count):
    # Prepare
    cols = [f"col{i}" for i in range(count)]

    # Execute
    with pytest.raises(PlanError) as caught:
        RandomGroupedAssigner(two_groups(*percentages), cols)

    # Assert
    error = caught.value
    assert error.code == "FX-PLAN-019"
    assert f"cannot split {count} collaborators" in error.message
    assert f"train_and_validate={percentages[0]:g}" in error.message
    assert f"multiples of 1/{count}" in error.fix


def test_percentages_must_add_up_to_one():
    # Execute
    with pytest.raises(PlanError) as caught:
        RandomGroupedAssigner(two_groups(0.5, 0.25), COLS)

    # Assert
    assert caught.value.code == "FX-PLAN-019"
    assert "add up to 0.75, not 1.0" in caught.value.message
    assert caught.value.fix


def test_selected_task_group_gives_every_collaborator_that_group():
    # Prepare
    assigner = RandomGroupedAssigner(
        two_groups(), COLS, selected_task_group="validate_only", seed=3
    )

    # Execute
    assignment = assigner.assignment(0)

    # Assert
    assert assignment == {c: ["aggregated_model_validation"] for c in COLS}
    assert assigner.all_tasks() == ["aggregated_model_validation"]


def test_unknown_selected_task_group_lists_the_groups():
    # Execute
    with pytest.raises(PlanError) as caught:
        RandomGroupedAssigner(two_groups(), COLS, selected_task_group="evaluation")

    # Assert
    assert caught.value.code == "FX-PLAN-019"
    assert "'evaluation'" in caught.value.message
    assert "train_and_validate, validate_only" in caught.value.fix


# ---------------------------------------------------------------------- static grouped
def static_groups(first: list[str], second: list[str]) -> list[dict]:
    return [
        {"name": "trainers", "tasks": THREE_TASKS, "collaborators": first},
        {"name": "validators", "tasks": ["aggregated_model_validation"], "collaborators": second},
    ]


def test_static_groups_are_the_same_every_round():
    # Prepare
    assigner = StaticGroupedAssigner(static_groups(["one", "three"], ["two", "four"]), COLS)

    # Execute
    rounds = [assigner.assignment(r) for r in range(3)]

    # Assert
    expected = {
        "one": THREE_TASKS,
        "three": THREE_TASKS,
        "two": ["aggregated_model_validation"],
        "four": ["aggregated_model_validation"],
    }
    assert rounds == [expected] * 3


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (["one", "two"], ["two", "three", "four"], "'two' appears in more than one"),
        (["one", "two"], ["three"], "not in any group: four"),
        (["one", "two", "mallory"], ["three", "four"], "not in cols.yaml: mallory"),
    ],
)
def test_static_membership_errors(first, second, expected):
    # Execute
    with pytest.raises(PlanError) as caught:
        StaticGroupedAssigner(static_groups(first, second), COLS)

    # Assert
    assert caught.value.code == "FX-PLAN-019"
    assert expected in caught.value.message
    assert caught.value.fix


def test_static_selected_task_group_ignores_membership():
    # Prepare: membership that would be refused does not matter for a selected group
    groups = static_groups(["one"], ["one"])

    # Execute
    assigner = StaticGroupedAssigner(groups, COLS, selected_task_group="validators")

    # Assert
    assert assigner.assignment(2) == {c: ["aggregated_model_validation"] for c in COLS}
