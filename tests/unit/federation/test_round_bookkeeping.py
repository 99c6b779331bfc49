"""What the aggregator counts in a round: after a restart, a result from a collaborator no
longer in cols.yaml is not counted and a result whose spool file was damaged is dropped (the
collaborator redoes the task); results of another run are refused; a best-model metric no
round reports is warned about; a listed collaborator that never connects is reported; each
round is announced once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from result_uploads import INITIAL, ORDER, header, make, send, trained, validate

from fedrun.errors import ProtocolError, StateError
from fedrun.federation.aggregator import Aggregator
from fedrun.storage.sqlite_state import SqliteStateStore
from fedrun.storage.state_store import InMemoryStateStore


def start(tmp_path: Path, store: InMemoryStateStore, cols: tuple[str, ...]) -> Aggregator:
    """An aggregator on ``store`` and the spool in ``tmp_path``, as `fx aggregator start` makes
    one, with the results saved so far replayed."""
    agg = make(tmp_path, cols=cols, state_store=store)
    agg.resume(store.load().results)
    return agg


def test_a_collaborator_removed_from_cols_yaml_does_not_close_the_round(tmp_path, caplog):
    # Prepare: `b` finished round 0 while `a` was still training; then the aggregator stopped
    store = InMemoryStateStore()
    first = start(tmp_path, store, ("a", "b"))
    send(first, "b", trained(-1.5), 30, 64)
    validate(first, "b")

    # Execute: restarted after `b` was removed from cols.yaml
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        again = start(tmp_path, store, ("a",))

    # Assert: the round waits for `a`, and its model is `a`'s update alone
    assert again.round_num == 0 and not again.round.accepted
    assert "is no longer in plan/cols.yaml" in caplog.text
    send(again, "a", trained(0.25), 10, 64)
    validate(again, "a")
    assert again.round_num == 1
    expected = INITIAL["conv"] + np.float32(0.25)
    assert np.array_equal(again.global_model["conv"], expected)


def test_a_damaged_spool_file_is_dropped_and_the_task_done_again(tmp_path, caplog):
    # Prepare: `a`'s training result was accepted, then its spool file was cut short
    store = InMemoryStateStore()
    first = start(tmp_path, store, ("a", "b"))
    send(first, "a", trained(0.25), 10, 64)
    (saved,) = store.load().results
    os.truncate(saved.spool_path, 100)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        again = start(tmp_path, store, ("a", "b"))

    # Assert: forgotten (in the store too) and its file removed; the round still completes
    assert "cannot be read back" in caplog.text and "do the task again" in caplog.text
    assert store.load().results == [] and not Path(saved.spool_path).exists()
    assert "train" not in again.round.done["a"]
    send(again, "a", trained(0.25), 10, 64)
    send(again, "b", trained(-1.5), 30, 64)
    validate(again, "a")
    validate(again, "b")
    assert again.round_num == 1


def _saved_round(folder: Path) -> None:
    """`a`'s training result of round 0 saved in ``folder`` (state file and spool)."""
    store = SqliteStateStore(folder / "tensor.db")
    store.start("h" * 64, 0)
    send(start(folder, store, ("a", "b")), "a", trained(0.25), 10, 64)
    store.close()


def test_a_moved_workspace_resumes_from_its_own_spool_files(tmp_path, caplog):
    # Prepare: the workspace is moved (or restored elsewhere from a backup) after a stop
    _saved_round(tmp_path / "before")
    (tmp_path / "before").rename(tmp_path / "after")

    # Execute
    store = SqliteStateStore(tmp_path / "after" / "tensor.db")
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        again = start(tmp_path / "after", store, ("a", "b"))

    # Assert: the saved result counts (it was dropped and the task done again)
    assert "cannot be read back" not in caplog.text
    assert again.round.done["a"] == {"train"}
    send(again, "b", trained(-1.5), 30, 64)
    validate(again, "a")
    validate(again, "b")
    expected = (INITIAL["conv"] * 0 + np.float32(0.25)) * 10 / 40 + np.float32(-1.5) * 30 / 40
    assert np.allclose(again.global_model["conv"] - INITIAL["conv"], expected, atol=1e-6)
    store.close()


def test_a_copied_workspace_never_reads_or_deletes_the_original_s_files(tmp_path):
    # Prepare: a copy of a stopped workspace; then the original's result file is damaged
    import shutil

    _saved_round(tmp_path / "original")
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    (original_file,) = (tmp_path / "original" / "spool").glob("*.result")
    os.truncate(original_file, 100)

    # Execute: the copy resumes
    store = SqliteStateStore(tmp_path / "copy" / "tensor.db")
    again = start(tmp_path / "copy", store, ("a", "b"))

    # Assert: the copy's own intact file counts; the original's is left as it was
    assert again.round.done["a"] == {"train"}
    assert original_file.stat().st_size == 100
    store.close()


def test_a_resumed_round_is_cut_off_counting_from_the_restart(tmp_path):
    from fedrun.federation.stragglers import CutoffTimePolicy

    # Prepare: `a` finished round 0, `b` never came; the aggregator stopped before the cut-off
    clock = Clock()
    store = InMemoryStateStore()
    policy = dict(straggler_policy=CutoffTimePolicy(straggler_cutoff_time=20, minimum_reporting=1))
    first = make(tmp_path, cols=("a", "b"), state_store=store, clock=clock, **policy)
    first.get_tasks("a", wait=0)
    send(first, "a", trained(0.25), 10, 64)
    validate(first, "a")

    # Execute: restarted; `a` asks for tasks (it has none left in round 0), `b` stays away
    again = make(tmp_path, cols=("a", "b"), state_store=store, clock=clock, **policy)
    again.resume(store.load().results)
    again.get_tasks("a", wait=0)
    clock.now += 19
    again.tick()
    assert again.round_num == 0
    clock.now += 2
    again.tick()

    # Assert: closed 20 s after the restart (it waited forever: nothing started the cut-off)
    assert again.round_num == 1


def test_results_of_another_run_are_refused_and_of_this_run_accepted(tmp_path):
    # Prepare: tasks handed out by this run; a result from a run started over since
    store = InMemoryStateStore()
    agg = start(tmp_path, store, ("a", "b"))
    assignment = agg.get_tasks("a", wait=0)
    assert assignment.run == agg.run_id and assignment.tasks == ORDER

    # Execute / Assert: another run's result is refused, this run's (and an unstamped) accepted
    with pytest.raises(ProtocolError) as caught:
        agg.open_result("a", 0, "validate", 5, {"acc": 0.5}, 0, run="0123456789abcdef")
    assert caught.value.code == "FX-ROUND-006" and "--reset-state" in caught.value.message
    agg.open_result("a", 0, "validate", 5, {"acc": 0.5}, 0, run=agg.run_id).commit()
    agg.open_result("b", 0, "validate", 5, {"acc": 0.5}, 0).commit()
    assert agg.round.done["a"] == {"validate"} and agg.round.done["b"] == {"validate"}


def test_a_resumed_aggregator_is_the_same_run_a_reset_one_a_new_run(tmp_path):
    store = SqliteStateStore(tmp_path / "tensor.db")
    store.start("h" * 64, 0)
    first = start(tmp_path, store, ("a",)).run_id
    store.close()

    resumed = SqliteStateStore(tmp_path / "tensor.db")
    assert start(tmp_path, resumed, ("a",)).run_id == first
    resumed.close()

    (tmp_path / "tensor.db").unlink()  # what --reset-state does to the state file
    reset = SqliteStateStore(tmp_path / "tensor.db")
    reset.start("h" * 64, 0)
    assert start(tmp_path, reset, ("a",)).run_id != first


def test_a_round_is_announced_once_even_when_a_resume_opens_it(tmp_path, caplog):
    # Prepare: `a` finished round 0 while `b` had not; `b` is then dropped from cols.yaml, so
    # the restarted aggregator's resume closes round 0 at once and opens round 1
    store = InMemoryStateStore()
    first = start(tmp_path, store, ("a", "b"))
    send(first, "a", trained(0.25), 10, 64)
    validate(first, "a")

    # Execute: the restart, then the server's start-up announcement
    with caplog.at_level(logging.INFO, logger="fedrun.aggregator"):
        again = start(tmp_path, store, ("a",))
        again.announce_round()

    # Assert
    assert again.round_num == 1
    assert caplog.text.count("round 1 started") == 1


def test_a_best_model_metric_no_round_reports_is_warned_about_once(tmp_path, caplog):
    # Prepare: a metric the tasks never report (a typo of `validate/acc`)
    agg = make(tmp_path, best_model_metric="validate/accuracy")

    # Execute: two rounds
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        for _ in range(2):
            for who in ("a", "b"):
                send(agg, who, trained(0.25), 10, 64)
                validate(agg, who)

    # Assert: one warning naming what the rounds do report; no best model
    assert caplog.text.count("best_model_metric 'validate/accuracy' is not among") == 1
    assert "validate/acc" in caplog.text and agg.best_round is None


class Clock:
    """A settable clock for the aggregator's timeouts."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_listed_collaborator_that_never_connects_is_reported_once(tmp_path, caplog):
    # Prepare: `b` is in cols.yaml but never calls (a stale entry, a node that never started)
    clock = Clock()
    agg = make(tmp_path, clock=clock, collaborator_timeout=60.0)
    agg.get_tasks("a", wait=0)

    # Execute: before and after the timeout, and once more
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        clock.now += 30
        agg.tick()
        assert "has not connected" not in caplog.text
        clock.now += 40
        agg.get_tasks("a", wait=0)  # `a` keeps calling
        agg.tick()
        agg.tick()

    # Assert
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("collaborator b has not connected in the 70 s" in w for w in warnings) == 1
    assert not any("collaborator a " in w for w in warnings)


def test_a_collaborator_is_said_to_join_at_its_first_call_whatever_the_call(tmp_path, caplog):
    # Prepare: `fx collaborator start` pings before it asks for tasks; `b` is late
    clock = Clock()
    agg = make(tmp_path, clock=clock, collaborator_timeout=60.0)

    # Execute
    with caplog.at_level(logging.INFO, logger="fedrun.aggregator"):
        agg.touch("a")  # a Ping
        agg.get_tasks("a", wait=0)
        clock.now += 70
        agg.tick()  # b has not connected
        agg.touch("b")
        agg.get_tasks("b", wait=0)

    # Assert: one "joined" each, at the first call; b was never there, so it is not "back"
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "joined" in line or "is back" in line] == [
        "collaborator a joined (round 0)",
        "collaborator b joined (round 0)",
    ]


def test_a_collaborator_whose_upload_keeps_moving_is_not_reported_gone(tmp_path, caplog):
    # Prepare: `a` streams a large result over a slow link for longer than the timeout, making
    # no other request meanwhile
    clock = Clock()
    agg = make(tmp_path, clock=clock, collaborator_timeout=60.0)
    agg.get_tasks("b", wait=0)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    conv = trained(0.25)["conv"]
    incoming = upload.open_tensor(header("conv", conv), conv.dtype)
    assert incoming is not None
    payload = memoryview(conv.tobytes())

    # Execute: data arrives every 50 s for 150 s
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        for step in range(3):
            clock.now += 50
            incoming.write(payload[16 * step : 16 * (step + 1)])
            agg.get_tasks("b", wait=0)
            agg.tick()
        # then it stops sending: gone after the timeout, like its upload
        clock.now += 61
        agg.get_tasks("b", wait=0)
        agg.tick()
    upload.abort()

    # Assert
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [w for w in warnings if "collaborator a is gone" in w] == [
        "collaborator a is gone: nothing heard from it for 61 s (round 0 waits for it unless the "
        "straggler policy closes the round)"
    ]
    assert any("dropped a's upload of train: no data for 61 s" in w for w in warnings)


class CommitFailsOnce(InMemoryStateStore):
    """A state store whose first round-end commit fails, as on a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def finish_round(self, finished_round: int, *args, **kwargs) -> None:
        if not self.failed:
            self.failed = True
            raise StateError(
                "FX-STATE-005",
                f"cannot record the end of round {finished_round} in tensor.db: disk full",
                "free space, then start the aggregator again with the same command",
            )
        super().finish_round(finished_round, *args, **kwargs)


def test_a_round_end_that_failed_stops_the_aggregator_and_a_restart_closes_it_once(tmp_path):
    reference = make(tmp_path / "reference")
    for who, offset, size in (("a", 0.25, 10), ("b", -1.5, 30)):
        send(reference, who, trained(offset), size, 64)
        validate(reference, who)
    assert reference.round_num == 1

    store = CommitFailsOnce()
    agg = start(tmp_path, store, ("a", "b"))
    send(agg, "a", trained(0.25), 10, 64)
    send(agg, "b", trained(-1.5), 30, 64)
    validate(agg, "a")
    with pytest.raises(StateError):
        validate(agg, "b")  # the last result closes the round; its commit fails

    # the round is not closed again in this process: its new model already replaced the one it
    # started from, and a second close would aggregate onto it. The serving loop's tick stops
    with pytest.raises(StateError) as stopped:
        agg.tick()
    assert stopped.value is agg.broken and stopped.value.code == "FX-STATE-005"
    assert agg.round_num == 0 and not agg.round_history

    # started again (space is back): the round closes from its saved results, as uninterrupted
    again = start(tmp_path, store, ("a", "b"))
    assert again.round_num == 1 and len(again.round_history) == 1
    for name in INITIAL:
        assert again.global_model[name].tobytes() == reference.global_model[name].tobytes()


def test_a_long_experiment_holds_a_bounded_history_and_metric_memory(tmp_path, monkeypatch):
    # Prepare: keep one round summary; a hub that records what reaches metrics.jsonl
    from fedrun.federation import aggregator as aggregator_module
    from fedrun.metrics.records import MetricHub

    monkeypatch.setattr(aggregator_module, "ROUND_HISTORY_KEPT", 1)
    logged = []
    hub = MetricHub([logged.append])
    agg = make(tmp_path, metrics=hub)

    # Execute: two rounds (the second is the last)
    for _ in range(2):
        for who, offset in (("a", 0.25), ("b", -1.5)):
            send(agg, who, trained(offset), 10, 64)
            validate(agg, who)

    # Assert: the table keeps the last round; the hub remembers only the
    # records of rounds that can still be logged (none before the round in progress)
    assert [s.number for s in agg.round_history] == [1]
    assert {r.round for r in logged} == {0, 1}
    assert not hub._seen  # every round is committed: nothing can be logged twice any more


def test_a_round_resumed_after_a_restart_says_so_and_counts_its_time_from_the_restart(
    tmp_path, caplog
):
    # "round 3 finished in 1.38 s" of a round that ran 19 s, 18 of them before a kill
    from rich.console import Console

    from fedrun.metrics.summary import round_table

    store = InMemoryStateStore()
    store.start("h" * 64, 0)
    first = start(tmp_path, store, ("a", "b"))
    send(first, "a", trained(0.25), 10, 64)
    validate(first, "a")

    with caplog.at_level(logging.INFO, logger="fedrun.aggregator"):
        again = start(tmp_path, store, ("a", "b"))
        again.announce_round()
        send(again, "b", trained(-1.5), 30, 64)
        validate(again, "b")
        again.announce_round()

    lines = [r.getMessage() for r in caplog.records]
    assert "round 0 resumed (it began before the restart)" in lines
    assert any(
        line.startswith("round 0 finished in ") and " s since the restart (" in line
        for line in lines
    )
    assert "round 1 started" in lines
    console = Console(width=200, record=True)
    console.print(round_table(again.round_history))
    text = console.export_text()
    assert "* since the aggregator restarted" in text


def test_a_result_file_that_cannot_be_read_back_stops_the_aggregator_with_a_state_error(
    tmp_path, monkeypatch
):
    # an I/O error reading a saved result at the round's end went out as a traceback ("failed
    # at the aggregator") and a file error of fx aggregator start (FX-WS-040, no resume advice)
    import errno

    from fedrun.federation import round_aggregation

    agg = make(tmp_path)
    for who, offset in (("a", 0.25), ("b", -1.5)):
        send(agg, who, trained(offset), 10, 64)
    validate(agg, "a")

    def failing_disk(path, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(round_aggregation, "TensorFileReader", failing_disk)
    with pytest.raises(StateError) as caught:
        validate(agg, "b")

    assert caught.value.code == "FX-STATE-005"
    assert "Input/output error" in caught.value.message and "finish round 0" in caught.value.message
    assert "resumes the round from its saved results" in caught.value.fix
    assert agg.broken is caught.value
    with pytest.raises(StateError):
        agg.tick()  # the serving loop stops on it


def test_a_round_waiting_for_a_gone_collaborator_says_so_again_every_ten_minutes(tmp_path, caplog):
    # Prepare: a is gone for good under the wait-for-all policy (before: one line, then a
    # silent log for as long as the aggregator ran)
    clock = Clock()
    agg = make(tmp_path, clock=clock, collaborator_timeout=60.0)
    agg.get_tasks("a", wait=0)
    agg.get_tasks("b", wait=0)

    # Execute: b keeps asking; 25 minutes pass
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        for _ in range(25):
            clock.now += 60.5
            agg.get_tasks("b", wait=0)
            agg.tick()

    # Assert: gone once, then a reminder every 10 minutes naming the way out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "collaborator a is gone" in w]) == 1
    reminders = [w for w in warnings if "still waits for" in w]
    assert len(reminders) == 2, warnings
    assert reminders[0].startswith("round 0 still waits for a (open for 1")
    assert "straggler_handling_policy" in reminders[0]
