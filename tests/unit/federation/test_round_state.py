"""RoundState keeps who finished the round as results land (no recount per result)."""

from __future__ import annotations

from fedrun.federation.round_state import RoundState


def _state() -> RoundState:
    return RoundState(
        number=0,
        assigned={"one": ["validate", "train"], "two": ["validate", "train"], "idle": []},
    )


def test_a_collaborator_finishes_with_its_last_assigned_task():
    state = _state()
    assert not state.mark_done("one", "validate")
    assert not state.finished("one") and state.finished_count == 0
    assert state.mark_done("one", "train")
    assert state.finished("one") and state.finished_count == 1


def test_finishing_is_reported_once():
    state = _state()
    state.mark_done("two", "validate")
    assert state.mark_done("two", "train")
    assert not state.mark_done("two", "train")
    assert state.finished_count == 1


def test_a_collaborator_without_tasks_counts_as_finished_but_not_as_participant():
    state = _state()
    assert state.finished("idle")
    assert state.participants == ["one", "two"]
    assert state.finished_count == 0
