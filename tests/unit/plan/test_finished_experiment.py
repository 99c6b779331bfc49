"""An aggregator stopped after committing the experiment's end but before every collaborator
heard it (killed between the two): restarted soon enough, it tells the collaborators still
waiting to stop instead of leaving them to retry until client_reconnect_timeout. A clean stop,
or a restart after that timeout, says FX-STATE-021 at once as before."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from fedrun.errors import ExperimentFinished, ProtocolError
from fedrun.federation.aggregator import Aggregator
from fedrun.plan.components import build_aggregator
from fedrun.plan.loader import Plan
from fedrun.storage.sqlite_state import SqliteStateStore


def _finished(workspace: Path, *, ended: bool = False, age: float = 0.0) -> Plan:
    """The workspace's state as an aggregator leaves it at the experiment's end."""
    (workspace / "plan" / "cols.yaml").write_text("collaborators: [one, two]\n")
    plan = Plan.load(workspace / "plan" / "plan.yaml", workspace=workspace)
    db = workspace / "local_state" / "tensor.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStateStore(db)
    store.start(plan.hash, 0)
    store.finish_round(plan.rounds_to_train, 0.9, 1, experiment_done=True)
    if ended:
        store.record_ended()
    store.close()
    if age:
        with sqlite3.connect(db) as con:
            con.execute(
                "UPDATE meta SET value = ? WHERE key = 'finished_at'", (repr(time.time() - age),)
            )
    return plan


def _farewell(plan: Plan) -> Aggregator:
    agg = build_aggregator(plan)
    assert agg.farewell_of is not None and agg.farewell_of.code == "FX-STATE-021"
    return agg


def test_collaborators_still_waiting_are_told_to_stop_and_their_resent_result_refused(
    workspace: Path,
) -> None:
    plan = _finished(workspace)
    models = sorted((workspace / "save").iterdir()) if (workspace / "save").exists() else []

    agg = _farewell(plan)
    first, second = plan.cols

    # a resent result of the last round is refused as of a closed round: the collaborator asks
    # for tasks next, and hears that the experiment is over
    with pytest.raises(ProtocolError) as refused:
        agg.open_result(first, plan.rounds_to_train, "train", 10, {}, 0)
    assert refused.value.code == "FX-ROUND-002" and "experiment finished" in refused.value.message
    assert agg.get_tasks(first).quit
    assert not agg.finished_event.is_set()
    assert agg.get_tasks(second).quit
    assert agg.finished_event.is_set()  # everybody told: the farewell ends at once
    assert agg.quit_sent == {first, second}
    after = sorted((workspace / "save").iterdir()) if (workspace / "save").exists() else []
    assert after == models  # nothing written: no model, no metrics
    agg.state_store.close()


def test_the_farewell_ends_when_nobody_called_for_a_while(workspace: Path) -> None:
    plan = _finished(workspace)
    agg = _farewell(plan)
    quiet, _ = agg._farewell or (0.0, 0.0)
    now = [agg.clock()]
    agg.clock = lambda: now[0]

    agg.get_tasks(plan.cols[0])
    now[0] += quiet - 1
    agg.tick()
    assert not agg.finished_event.is_set()  # the other one may still be between retries
    now[0] += 2
    agg.tick()
    assert agg.finished_event.is_set()
    agg.state_store.close()


def test_a_clean_stop_or_an_old_end_is_already_finished_at_once(workspace: Path) -> None:
    with pytest.raises(ExperimentFinished) as ended:
        build_aggregator(_finished(workspace, ended=True))
    assert ended.value.code == "FX-STATE-021"

    (workspace / "local_state" / "tensor.db").unlink()
    # nobody retries longer than client_reconnect_timeout (600 s by default)
    with pytest.raises(ExperimentFinished):
        build_aggregator(_finished(workspace, age=601.0))
