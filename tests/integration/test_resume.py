"""A killed aggregator, restarted with the same command, finishes the same experiment.

The aggregator is SIGKILLed (through a failpoint, at an exact moment) after some results of
round 2 were accepted, again after saving the models at the end of a round, and again halfway
through writing a round's new model. Collaborators
ride through both outages. The final weights must equal an uninterrupted run with the same seed.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
from fxnodes import Nodes, fx

from fedrun.simulate.local import LocalFederation
from fedrun.storage.model_file import load_model, stale_temporaries

ROUNDS = 4
RESULTS_PER_ROUND = 6  # 2 collaborators x 3 tasks


def _prepare(path: Path, rounds: int = ROUNDS) -> LocalFederation:
    """A seeded torch/digits experiment of two collaborators that reconnect fast."""
    fed = LocalFederation(
        path,
        template="torch/digits",
        collaborators=2,
        rounds=rounds,
        seed=7,
        plan_set=["network.client_reconnect_interval=0.5"],
    )
    fed.prepare()
    return fed


def _finished_run(path: Path) -> LocalFederation:
    """A one-round, one-collaborator experiment (no TLS) run to its end."""
    fed = LocalFederation(path, template="torch/digits", collaborators=1, rounds=1, tls=False)
    fed.prepare()
    fed.start()
    assert set(fed.wait(timeout=300).values()) == {0}
    return fed


def _restart_until_killed(nodes: Nodes, ws: Path, failpoint: str) -> None:
    """Start the aggregator again with a failpoint; it must die there (SIGKILL)."""
    agg = nodes.start("aggregator", ws, "aggregator", "start", env={"FEDRUN_FAILPOINT": failpoint})
    assert agg.wait(300) == -signal.SIGKILL, nodes.log("aggregator")[-3000:]


def test_uninterrupted_and_crashed_runs_end_with_identical_weights(
    tmp_path: Path, nodes: Nodes
) -> None:
    reference = _prepare(tmp_path / "reference")
    reference.start()
    assert set(reference.wait(timeout=300).values()) == {0}
    expected = load_model(reference.workspace / "save" / "last.pbuf")

    fed = _prepare(tmp_path / "crash")
    ws = fed.workspace
    kill_in_round_2 = f"result_recorded:{2 * RESULTS_PER_ROUND + 2}"
    agg = nodes.start(
        "aggregator", ws, "aggregator", "start", env={"FEDRUN_FAILPOINT": kill_in_round_2}
    )
    for name in fed.names:
        nodes.start(name, ws, "collaborator", "start", "-n", name)
    assert agg.wait(300) == -signal.SIGKILL, nodes.log("aggregator")[-3000:]
    nodes.wait_for_log("collaborator1", "unreachable")

    # restart; die again right after a round's models were written, before the round commits
    _restart_until_killed(nodes, ws, "round_end_models_saved:1")
    log = nodes.log("aggregator")
    assert "resuming experiment" in log and "at round 2 (2 accepted results restored)" in log, log[
        -3000:
    ]

    # and once more halfway through writing a round's new model into last.pbuf
    _restart_until_killed(nodes, ws, "round_end_model_partly_written:1")
    assert load_model(ws / "save" / "last.pbuf").round >= 2  # the committed model is whole
    assert stale_temporaries(ws / "save" / "last.pbuf")  # the half-written file, left by SIGKILL

    agg = nodes.start("aggregator", ws, "aggregator", "start")
    assert nodes.wait("aggregator") == 0, nodes.log("aggregator")[-3000:]
    for name in fed.names:
        assert nodes.wait(name) == 0, nodes.log(name)[-3000:]
        assert "reconnected" in nodes.log(name)

    final = load_model(ws / "save" / "last.pbuf")
    assert not stale_temporaries(ws / "save" / "last.pbuf")  # the restart removed it
    assert final.round == expected.round == ROUNDS
    assert set(final.tensors) == set(expected.tensors)
    for name, value in expected.tensors.items():
        assert np.array_equal(final.tensors[name], value), name
    best_ref = load_model(reference.workspace / "save" / "best.pbuf")
    best = load_model(ws / "save" / "best.pbuf")
    assert best.round == best_ref.round and best.metrics == best_ref.metrics

    # no accepted result counted twice: one aggregated value per (round, task, metric)
    from fedrun.metrics.records import read_metrics

    keys = [
        (r.round, r.task, r.metric)
        for r in read_metrics(ws / "logs" / "metrics.jsonl")
        if r.origin == "aggregator"
    ]
    assert len(keys) == len(set(keys))
    ref_keys = [
        (r.round, r.task, r.metric)
        for r in read_metrics(reference.workspace / "logs" / "metrics.jsonl")
        if r.origin == "aggregator"
    ]
    assert sorted(keys) == sorted(ref_keys)


def test_an_aggregator_killed_at_the_very_end_lets_the_waiting_collaborator_finish(
    tmp_path: Path, nodes: Nodes
) -> None:
    # Prepare: round 0 trains, round 1 validates the final model; the aggregator dies right
    # after committing the end of round 1, before acknowledging the result that closed it
    fed = LocalFederation(
        tmp_path / "end",
        template="torch/digits",
        collaborators=2,
        rounds=1,
        seed=7,
        plan_set=[
            "network.client_reconnect_interval=0.5",
            "network.client_reconnect_timeout=120",
        ],
    )
    fed.prepare()
    ws = fed.workspace
    agg = nodes.start(
        "aggregator", ws, "aggregator", "start", env={"FEDRUN_FAILPOINT": "round_end_committed:2"}
    )
    for name in fed.names:
        nodes.start(name, ws, "collaborator", "start", "-n", name)
    assert agg.wait(300) == -signal.SIGKILL, nodes.log("aggregator")[-3000:]
    final = load_model(ws / "save" / "last.pbuf")
    written = (ws / "save" / "last.pbuf").stat().st_mtime_ns

    # Execute: the same start command again
    restarted = time.monotonic()
    nodes.start("aggregator", ws, "aggregator", "start")

    # Assert: the collaborator still resending its result hears the end and exits 0 (before: it
    # retried for client_reconnect_timeout and exited 5); the aggregator says the experiment
    # had finished, writes nothing, and stops soon after
    for name in fed.names:
        assert nodes.wait(name, timeout=200) == 0, nodes.log(name)[-3000:]
    assert nodes.wait("aggregator") == 0, nodes.log("aggregator")[-3000:]
    assert time.monotonic() - restarted < 60
    log = nodes.log("aggregator")
    assert "told 1 collaborator to stop" in log and "FX-STATE-021" in log, log[-3000:]
    assert "WARNING  refused" not in log  # the resent result is expected, not a problem
    assert load_model(ws / "save" / "last.pbuf").round == final.round == 1
    assert (ws / "save" / "last.pbuf").stat().st_mtime_ns == written

    # and a start after that clean stop says it at once
    started = time.monotonic()
    again = fx(ws, "aggregator", "start", check=False)
    assert again.returncode == 0 and "FX-STATE-021" in again.stderr
    assert time.monotonic() - started < 30 and "told" not in again.stderr


def test_state_from_another_plan_and_corrupt_state_are_refused(tmp_path: Path) -> None:
    fed = _finished_run(tmp_path / "ws")
    ws = fed.workspace
    again = fx(ws, "aggregator", "start", check=False)
    assert (
        again.returncode == 0
        and "FX-STATE-021" in again.stderr
        and "already finished" in again.stderr
    )

    plan = ws / "plan" / "plan.yaml"
    plan.write_text(plan.read_text().replace("rounds_to_train: 1", "rounds_to_train: 2"))
    other = fx(ws, "aggregator", "start", check=False)
    assert (
        other.returncode == 8 and "FX-STATE-020" in other.stderr and "--reset-state" in other.stderr
    )
    assert "Traceback" not in other.stderr

    (ws / "local_state" / "tensor.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (ws / "local_state" / f"tensor.db{suffix}").unlink(missing_ok=True)
    corrupt = fx(ws, "aggregator", "start", check=False)
    assert corrupt.returncode == 8 and "FX-STATE-011" in corrupt.stderr, corrupt.stderr
    assert "Traceback" not in corrupt.stderr


def test_errors_of_a_tls_aggregator_reach_the_terminal(tmp_path: Path) -> None:
    """With TLS, the aggregator routes its stderr through a pipe to log gRPC's handshake
    refusals; a message printed just before it exits must still arrive (it once got lost)."""
    from fxnodes import fx

    fed = LocalFederation(tmp_path / "ws", template="torch/digits", collaborators=1, rounds=1)
    fed.prepare()
    fed.start()
    assert set(fed.wait(timeout=300).values()) == {0}
    for _ in range(3):  # the loss depended on timing: ask more than once
        again = fx(fed.workspace, "aggregator", "start", check=False)
        assert again.returncode == 0
        assert "FX-STATE-021" in again.stderr and "--reset-state" in again.stderr


def test_a_second_aggregator_in_the_workspace_is_refused_and_touches_nothing(
    tmp_path: Path, nodes: Nodes
) -> None:
    """Even with --reset-state: it once deleted the running aggregator's saved state before
    failing to bind the port."""
    from fxnodes import fx

    fed = _prepare(tmp_path / "ws")
    ws = fed.workspace
    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.wait_for_log("aggregator", "round 0 started")
    state = sorted(p.name for p in (ws / "local_state").iterdir())
    assert "tensor.db" in state

    for args in (("--reset-state",), ()):
        second = fx(ws, "aggregator", "start", *args, check=False)
        assert second.returncode == 8, second.stderr
        assert "FX-STATE-015" in second.stderr and "another aggregator" in second.stderr
        assert f"pid {nodes.procs['aggregator'].pid}" in second.stderr, second.stderr
        assert "state reset" not in second.stderr and "Traceback" not in second.stderr
        assert sorted(p.name for p in (ws / "local_state").iterdir()) == state

    # the first one is unharmed: its collaborators finish the experiment
    for name in fed.names:
        nodes.start(name, ws, "collaborator", "start", "-n", name)
    assert nodes.wait("aggregator") == 0, nodes.log("aggregator")[-3000:]
    assert load_model(ws / "save" / "last.pbuf").round == ROUNDS


def test_reset_state_runs_again_and_keeps_the_finished_runs_models(
    tmp_path: Path, nodes: Nodes
) -> None:
    fed = _finished_run(tmp_path / "ws")
    ws = fed.workspace
    first = {name: (ws / "save" / name).read_bytes() for name in ("best.pbuf", "last.pbuf")}

    nodes.start("aggregator", ws, "aggregator", "start", "--reset-state")
    nodes.start(fed.names[0], ws, "collaborator", "start", "-n", fed.names[0])
    assert nodes.wait("aggregator") == 0, nodes.log("aggregator")[-3000:]
    assert nodes.wait(fed.names[0]) == 0, nodes.log(fed.names[0])[-3000:]

    [kept] = sorted((ws / "save").glob("previous-*"))
    for name, data in first.items():
        assert (kept / name).read_bytes() == data, name
    assert "were moved to" in nodes.log("aggregator")
    assert load_model(ws / "save" / "last.pbuf").round == 1  # the new run's


def test_a_killed_collaborator_sends_the_training_it_finished_when_started_again(
    tmp_path: Path, nodes: Nodes
) -> None:
    # Prepare: the same seeded experiment, uninterrupted and with collaborator1 SIGKILLed in
    # round 1 after its training result was kept on its disk, before it was sent
    keep_all = {"FEDRUN_KEEP_RESULTS_AFTER_SECONDS": "0"}
    reference = _prepare(tmp_path / "reference", rounds=2)
    reference.start()
    assert set(reference.wait(timeout=300).values()) == {0}
    expected = load_model(reference.workspace / "save" / "last.pbuf")
    fed = _prepare(tmp_path / "crash", rounds=2)
    ws = fed.workspace
    nodes.start("aggregator", ws, "aggregator", "start")
    first, second = fed.names
    # kept results of collaborator1: round 0's three tasks, then round 1's validation and train
    killed = nodes.start(
        first,
        ws,
        "collaborator",
        "start",
        "-n",
        first,
        env={**keep_all, "FEDRUN_FAILPOINT": "collaborator_result_kept:5"},
    )
    nodes.start(second, ws, "collaborator", "start", "-n", second, env=keep_all)
    assert killed.wait(300) == -signal.SIGKILL, nodes.log(first)[-3000:]
    kept = ws / "local_state" / "collaborators" / first
    assert sorted(p.name for p in kept.iterdir()) == [
        "r1_aggregated_model_validation.json",
        "r1_train.json",
        "r1_train.pbuf",
    ]

    # Execute: started again with the same command
    nodes.start(first, ws, "collaborator", "start", "-n", first, env=keep_all)

    # Assert: it sent what it had finished, trained nothing again, and the experiment ends
    # with the uninterrupted run's weights
    for name in ("aggregator", first, second):
        assert nodes.wait(name) == 0, nodes.log(name)[-3000:]
    log = nodes.log(first)
    assert "round 1: train was finished before this collaborator restarted" in log, log[-3000:]
    assert "round 1: aggregated_model_validation was finished" not in log  # it was accepted
    final = load_model(ws / "save" / "last.pbuf")
    assert final.round == expected.round
    for name, value in expected.tensors.items():
        assert np.array_equal(final.tensors[name], value), name
    assert not kept.exists() or not list(kept.iterdir())  # forgotten once it left


def test_an_aggregator_stopped_while_it_ends_a_round_lets_that_end_finish(
    tmp_path: Path, nodes: Nodes
) -> None:
    # Prepare: saving round 0's models takes 4 s more (as for a model of gigabytes); Ctrl-C
    # comes meanwhile. It once closed its state under the round's end (a false disk error) and
    # told the collaborator whose result closed the round that it failed (it gave up)
    fed = _prepare(tmp_path / "stop", rounds=2)
    ws = fed.workspace
    agg = nodes.start(
        "aggregator",
        ws,
        "aggregator",
        "start",
        env={"FEDRUN_PAUSEPOINT": "round_end_models_saved:4"},
    )
    for name in fed.names:
        nodes.start(name, ws, "collaborator", "start", "-n", name)
    nodes.wait_for_log("aggregator", "pausing 4 s at round_end_models_saved", timeout=120)

    # Execute
    agg.send_signal(signal.SIGINT)

    # Assert: the round's end finished first, then the aggregator stopped as asked
    assert agg.wait(60) == 130
    log = nodes.log("aggregator")
    assert "saving the end of round 0 before stopping" in log, log[-3000:]
    assert "round 0 finished" in log
    assert "FX-STATE-005" not in log and "Traceback" not in log, log[-3000:]
    assert "run the same command again to resume it from its last round" in log
    nodes.start("aggregator", ws, "aggregator", "start")
    for name in ("aggregator", *fed.names):
        assert nodes.wait(name) == 0, nodes.log(name)[-3000:]
    assert "resuming experiment" in nodes.log("aggregator")
    assert load_model(ws / "save" / "last.pbuf").round == 2
