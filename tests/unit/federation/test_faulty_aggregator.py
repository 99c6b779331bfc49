"""A faulty or hostile aggregator cannot make a collaborator work beyond the plan, spin, or
take memory without bound (the collaborator is a hospital's or a bank's machine)."""

from __future__ import annotations

import pytest
from scripted_collaborator import ScriptedAggregator, collaborator

from fedrun.errors import PlanError, ProtocolError, RoundClosed
from fedrun.federation.tasks import TaskAssignment


@pytest.mark.parametrize(
    "assignment",
    [
        TaskAssignment(2, ["train"]),  # the plan has rounds 0 and 1
        TaskAssignment(2**31 - 1, ["train"]),
        TaskAssignment(-5, ["train"]),
        TaskAssignment(2, ["train"], final_validation=True),  # training in the final validation
        TaskAssignment(3, ["aggregated_model_validation"], final_validation=True),
    ],
)
def test_rounds_the_plan_does_not_have_are_refused_before_any_work(assignment):
    # Prepare
    built, runner = collaborator([TaskAssignment(0, ["train"]), assignment])

    # Execute
    with pytest.raises(ProtocolError) as caught:
        built.run()

    # Assert: round 0 was worked, the assignment beyond the plan was not
    assert caught.value.code == "FX-ROUND-011"
    assert runner.trained == 1
    assert built.connection.submitted == [(0, "train")]


def test_the_final_validation_is_worked():
    # Prepare
    script = [TaskAssignment(2, ["aggregated_model_validation"], final_validation=True)]
    built, _ = collaborator(script)

    # Execute
    built.run()

    # Assert
    assert built.connection.submitted == [(2, "aggregated_model_validation")]


def test_a_task_assigned_twice_in_a_round_is_refused():
    # Prepare: the same training 200 000 times in one round
    built, runner = collaborator([TaskAssignment(0, ["train"] * 200_000)])

    # Execute
    with pytest.raises(ProtocolError) as caught:
        built.run()

    # Assert
    assert caught.value.code == "FX-ROUND-012"
    assert runner.trained == 0


def test_an_unknown_task_name_is_shown_escaped_and_cut():
    # Prepare
    hostile = "\x1b[31m\nFAKE LOG LINE" + "A" * 2**20
    built, _ = collaborator([TaskAssignment(0, [hostile])])

    # Execute
    with pytest.raises(PlanError) as caught:
        built.run()

    # Assert
    assert caught.value.code == "FX-PLAN-022"
    assert "\x1b" not in caught.value.message and "\n" not in caught.value.message
    assert len(caught.value.message) < 300


def test_quick_empty_answers_are_paced_not_spun_on():
    # Prepare: 30 empty answers that come at once
    built, _ = collaborator([TaskAssignment(0, []) for _ in range(30)])
    pauses: list[float] = []
    built.sleep = pauses.append

    # Execute
    built.run()

    # Assert: a pause after each, growing to a bound
    assert len(pauses) == 30
    assert pauses[0] <= 0.1 and pauses == sorted(pauses)
    assert 1.0 <= pauses[-1] <= 2.0
    assert sum(pauses) > 30


def test_the_download_is_held_to_this_collaborators_own_model():
    # Prepare
    built, _ = collaborator([TaskAssignment(0, ["train"])])

    # Execute
    built.run()

    # Assert
    expected = built.connection.expected
    assert expected is not None and expected.shapes == {"w": (2, 3)}
    assert expected.model_bytes == 24


class ClosesAtOnce(ScriptedAggregator):
    """Says "round closed" to every request for tasks, 30 times, then "quit"."""

    def __init__(self) -> None:
        super().__init__([])
        self.closed = 30

    def get_tasks(self) -> TaskAssignment:
        if self.closed:
            self.closed -= 1
            raise RoundClosed("FX-ROUND-010", "round closed")
        return super().get_tasks()


def test_rounds_closing_again_and_again_with_no_work_done_are_asked_about_at_a_slowing_pace():
    # Prepare (before: 26 678 requests and as many log lines in 20 s)
    built, _ = collaborator([])
    built.connection = ClosesAtOnce()
    pauses: list[float] = []
    built.sleep = pauses.append

    # Execute
    built.work()

    # Assert: no pause after the first (a round may close under anyone), then growing to 5 s
    assert len(pauses) == 29
    assert pauses[0] == 0.1 and pauses == sorted(pauses)
    assert pauses[-1] == 5.0


def test_a_round_closing_after_work_was_done_asks_again_at_once():
    # Prepare: train in round 0, then the round closes under it, then round 1, quit
    class ClosesAfterWork(ScriptedAggregator):
        def get_tasks(self) -> TaskAssignment:
            if self.asked == 1:
                self.asked += 1
                raise RoundClosed("FX-ROUND-010", "round 0 closed")
            return super().get_tasks()

    built, runner = collaborator([])
    built.connection = ClosesAfterWork([TaskAssignment(0, ["train"]), TaskAssignment(1, ["train"])])
    pauses: list[float] = []
    built.sleep = pauses.append

    # Execute
    built.work()

    # Assert
    assert pauses == []
    assert runner.trained == 2
