"""Whole federations of real processes on 127.0.0.1: fx simulate and hand-started nodes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fxnodes import Nodes, fx, fx_env, set_plan
from ports import free_port

from fedrun.metrics.records import read_metrics
from fedrun.simulate.local import LocalFederation
from fedrun.storage.model_file import load_model


@pytest.mark.parametrize("count", [2, 5])
def test_simulate_runs_to_the_end(tmp_path: Path, count: int) -> None:
    result = LocalFederation(
        tmp_path / "ws", template="torch/digits", collaborators=count, rounds=2
    ).run(timeout=300)
    assert set(result.exit_codes.values()) == {0}
    assert len(result.exit_codes) == count + 1
    records = list(read_metrics(tmp_path / "ws" / "logs" / "metrics.jsonl"))
    origins = {r.origin for r in records}
    assert origins == {"aggregator", *(f"collaborator{i}" for i in range(1, count + 1))}
    line = json.loads((tmp_path / "ws" / "logs" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(line) == {"round", "origin", "task", "metric", "value", "time"}
    # the cores are shared: each collaborator process trains with cores / N threads (>= 1)
    import os

    threads = max(1, (os.cpu_count() or 1) // count)
    log = (tmp_path / "ws" / "logs" / "collaborator_collaborator1.log").read_text()
    assert f"trains with {threads} thread{'' if threads == 1 else 's'}" in log
    # round 2 is the validation of the final aggregate: last.pbuf is that model
    final = [r for r in records if r.origin == "aggregator" and r.round == 2]
    assert [r.task for r in final] == ["aggregated_model_validation"]
    assert load_model(tmp_path / "ws" / "save" / "last.pbuf").round == 2


def test_readme_command_reaches_090_on_digits(tmp_path: Path) -> None:
    """What the README's run command does: torch/digits, 2 collaborators, 3 rounds."""
    proc = fx(tmp_path, "simulate", "--prefix", str(tmp_path / "ws"), check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "federation finished" in proc.stdout
    assert "final model" in proc.stdout
    records = list(read_metrics(tmp_path / "ws" / "logs" / "metrics.jsonl"))
    final = [r for r in records if r.origin == "aggregator" and r.round == 3]
    assert final and final[0].value >= 0.90, final


def _workspace(tmp_path: Path, nodes_names: list[str], tls: bool = False) -> Path:
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "torch/digits")
    ws = tmp_path / "ws"
    set_plan(ws, agg_port=free_port(), use_tls=tls, agg_addr="127.0.0.1")
    (ws / "plan" / "cols.yaml").write_text(
        "collaborators:\n" + "".join(f"- {n}\n" for n in nodes_names)
    )
    for i, name in enumerate(nodes_names, 1):
        fx(ws, "collaborator", "create", "-n", name, "-d", str(i))
    fx(ws, "plan", "initialize", "--plan-config", "plan/plan.yaml")
    return ws


def test_collaborator_started_first_waits_and_joins(tmp_path: Path, nodes: Nodes) -> None:
    ws = _workspace(tmp_path, ["one", "two"])
    fx(ws, "--log-level", "info", "plan", "validate")
    nodes.start("one", ws, "collaborator", "start", "-n", "one")
    nodes.wait_for_log("one", "not reachable yet")  # information, not an outage's warning
    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.start("two", ws, "collaborator", "start", "-n", "two")
    assert nodes.wait("one") == 0, nodes.log("one")
    assert nodes.wait("two") == 0, nodes.log("two")
    assert nodes.wait("aggregator") == 0, nodes.log("aggregator")
    assert "unreachable" not in nodes.log("one") and "reconnected" not in nodes.log("one")
    assert "connected to 127.0.0.1" in nodes.log("one")
    log = (ws / "logs" / "aggregator.log").read_text()
    assert "collaborator one joined" in log and "collaborator two joined" in log
    assert f"models: {ws / 'save' / 'last.pbuf'} and {ws / 'save' / 'best.pbuf'}" in nodes.log(
        "aggregator"
    )  # where the experiment's result is, at its end
    assert "INSECURE" in nodes.log("aggregator") or "TLS is OFF" in nodes.log("aggregator")
    assert "two processes" not in nodes.log("aggregator")  # a reconnect is the same process


def test_a_second_process_with_a_collaborators_name_is_refused(
    tmp_path: Path, nodes: Nodes
) -> None:
    """Started twice, a collaborator's newer process stops with FX-AUTH-006 once both are seen
    alive; the older one and the federation finish (it once left the newer one retrying a
    finished aggregator until its reconnect timeout)."""
    ws = _workspace(tmp_path, ["one", "two"])
    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.start("one", ws, "collaborator", "start", "-n", "one")
    nodes.start("one-again", ws, "collaborator", "start", "-n", "one")
    nodes.start("two", ws, "collaborator", "start", "-n", "two")
    codes = {name: nodes.wait(name) for name in ("one", "one-again", "two", "aggregator")}
    assert codes["two"] == codes["aggregator"] == 0, codes
    assert sorted([codes["one"], codes["one-again"]])[0] == 0, codes
    refused = [name for name in ("one", "one-again") if codes[name] != 0]
    assert len(refused) == 1, codes
    log = nodes.log(refused[0])
    assert "FX-AUTH-006" in log and "another process is already working as collaborator" in log
    assert "Traceback" not in log
    assert "another process is already working as collaborator" in nodes.log("aggregator")
    assert load_model(ws / "save" / "last.pbuf").round == 3


def test_aggregator_process_imports_no_ml_framework(tmp_path: Path, nodes: Nodes) -> None:
    ws = _workspace(tmp_path, ["one", "two"])
    # the aggregator leaves through os._exit once finished: report the modules right there
    probe = (
        "import os, sys\n"
        "real_exit = os._exit\n"
        "def report(code):\n"
        "    heavy = sorted(m for m in ('torch', 'keras', 'tensorflow', 'jax', 'sklearn') if m in sys.modules)\n"
        "    print('HEAVY_MODULES', heavy, flush=True)\n"
        "    real_exit(code)\n"
        "os._exit = report\n"
        "from fedrun.cli.main import main\n"
        "main(['aggregator', 'start'])\n"
    )
    out = open(tmp_path / "agg.out", "w")  # noqa: SIM115 - handed to the child process
    agg = subprocess.Popen(
        [sys.executable, "-c", probe],
        cwd=ws,
        env=fx_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        nodes.start("one", ws, "collaborator", "start", "-n", "one")
        nodes.start("two", ws, "collaborator", "start", "-n", "two")
        assert nodes.wait("one") == 0
        assert nodes.wait("two") == 0
        agg.wait(60)
    finally:
        if agg.poll() is None:
            agg.kill()
        out.close()
    text = (tmp_path / "agg.out").read_text()
    assert "HEAVY_MODULES []" in text, text[-2000:]


def test_commands_that_train_nothing_import_no_ml_framework(tmp_path: Path) -> None:
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "torch/mnist")
    probe = (
        "import sys\nfrom fedrun.cli.main import main\n"
        "for args in (['--help'], ['plan', 'validate'], ['plan', 'show'], ['workspace', 'certify'],\n"
        "             ['aggregator', 'generate-cert-request', '--fqdn', 'localhost']):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'keras', 'tensorflow', 'sklearn') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path / "ws",
        env=fx_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_port_in_use_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    # an earlier experiment's model is in save/: --reset-state would move it aside, but a start
    # that cannot listen must leave the workspace as it was
    ws = _workspace(tmp_path, ["one"])
    (ws / "save" / "last.pbuf").write_bytes(b"an earlier experiment's model")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        set_plan(ws, agg_port=sock.getsockname()[1])
        proc = fx(ws, "aggregator", "start", "--reset-state", check=False, timeout=60)
    assert proc.returncode == 5
    assert "FX-NET-001" in proc.stderr and "is in use by another process" in proc.stderr
    assert "Failed to" not in proc.stderr  # named by fedrun before gRPC's C core tries
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (ws / "save" / "last.pbuf").read_bytes() == b"an earlier experiment's model"
    assert not list((ws / "save").glob("previous-*"))


def test_fx_simulate_seed_gives_identical_final_weights(tmp_path: Path) -> None:
    import numpy as np

    for name in ("a", "b"):
        proc = fx(
            tmp_path,
            "simulate",
            "--prefix",
            name,
            "--seed",
            "5",
            "-r",
            "2",
            check=False,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    a = load_model(tmp_path / "a" / "save" / "last.pbuf").tensors
    b = load_model(tmp_path / "b" / "save" / "last.pbuf").tensors
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_collaborator_gives_up_after_the_reconnect_timeout(tmp_path: Path) -> None:
    import time

    ws = _workspace(tmp_path, ["one"])
    set_plan(ws, client_reconnect_timeout=3, client_reconnect_interval=0.5)
    fx(ws, "plan", "initialize")
    started = time.monotonic()
    proc = fx(ws, "collaborator", "start", "-n", "one", check=False, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 5
    assert "FX-NET-011" in proc.stderr and "client_reconnect_timeout" in proc.stderr
    assert elapsed < 30


def _fedrun_processes_in(folder: Path) -> list[int]:
    """PIDs of the fedrun processes running in ``folder`` (a zombie has no folder any more)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (
                Path(os.readlink(entry / "cwd")) == folder
                and b"fedrun.cli.main" in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_fx_simulate_stops_its_whole_federation(
    tmp_path: Path, signum: signal.Signals
) -> None:
    ws = tmp_path / "ws"
    command = ["simulate", "--template", "no-op", "--rounds", "100000", "--no-tls"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedrun.cli.main", *command, "--prefix", str(ws)],
        cwd=tmp_path,
        env=fx_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Prepare: the federation runs (a round finished)
        log = ws / "logs" / "aggregator.log"
        deadline = time.monotonic() + 120
        while not (log.is_file() and "round 1 finished" in log.read_text()):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no round finished within 120 s"
            time.sleep(0.2)
        assert len(_fedrun_processes_in(ws.resolve())) == 3  # aggregator + 2 collaborators

        # Execute
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)

        # Assert: it stopped its processes before it ended, as Ctrl-C does
        assert proc.returncode == 128 + signum, output
        assert _fedrun_processes_in(ws.resolve()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _fedrun_processes_in(ws.resolve()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_aggregator_exits_with_the_shells_code_for_its_signal(
    tmp_path: Path, nodes: Nodes, signum: signal.Signals, code: int
) -> None:
    ws = _workspace(tmp_path, ["one"])
    agg = nodes.start("aggregator", ws, "aggregator", "start")
    nodes.wait_for_log("aggregator", "listening on")

    os.killpg(agg.pid, signum)  # what Ctrl-C (SIGINT) or `kill` does to its process group

    assert nodes.wait("aggregator", timeout=60) == code, nodes.log("aggregator")
    assert "run the same command again to resume" in nodes.log("aggregator")


def test_a_stopped_or_refused_collaborator_says_why_in_its_log_file(
    tmp_path: Path, nodes: Nodes
) -> None:
    ws = _workspace(tmp_path, ["one"])
    (ws / "plan" / "data.yaml").write_text("one,1\nmallory,2\n")  # mallory: not in cols.yaml
    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.wait_for_log("aggregator", "listening on")
    one = nodes.start("one", ws, "collaborator", "start", "-n", "one")
    nodes.wait_for_log("one", "connected to")

    # Execute: `one` is stopped as systemctl or docker stop it; mallory is refused
    os.kill(one.pid, signal.SIGTERM)
    nodes.start("mallory", ws, "collaborator", "start", "-n", "mallory")

    # Assert: both reasons are in the nodes' log files, not only on their consoles
    assert nodes.wait("one", timeout=60) == 143, nodes.log("one")
    one_log = (ws / "logs" / "collaborator_one.log").read_text()
    assert "WARNING fedrun: received SIGTERM: stopping collaborator one" in one_log
    assert nodes.wait("mallory", timeout=60) == 5, nodes.log("mallory")
    mallory_log = (ws / "logs" / "collaborator_mallory.log").read_text()
    assert "ERROR fedrun: FX-AUTH-010: the aggregator at 127.0.0.1" in mallory_log
    (line,) = [line for line in mallory_log.splitlines() if "FX-AUTH-010" in line]
    assert "FX-AUTH-003" in line and "; fix: " in line  # the aggregator's reason, on one line


def test_fx_simulate_shows_why_no_best_model_was_saved(tmp_path: Path) -> None:
    metric = (
        "aggregated_model_validation/acc"  # the template's plan lists `acc`; runs report accuracy
    )
    proc = fx(
        tmp_path,
        *("simulate", "--template", "no-op", "--rounds", "1", "--no-tls", "--prefix", "ws"),
        *("--plan-set", f"aggregator.best_model_metric={metric}"),
        check=False,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "ws" / "save" / "best.pbuf").exists()
    out = " ".join(proc.stdout.split())  # rich wraps long lines
    assert f"best_model_metric '{metric}' is not among the round's metrics" in out
    assert "aggregated_model_validation/accuracy" in out


def test_fx_simulate_passes_its_log_level_to_the_nodes(tmp_path: Path) -> None:
    proc = fx(
        tmp_path,
        *("--log-level", "debug", "simulate", "--template", "no-op", "--rounds", "1"),
        *("--no-tls", "--prefix", "ws"),
        check=False,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = tmp_path / "ws" / "logs"
    for node in ("aggregator", "collaborator_collaborator1"):
        assert " DEBUG " in (logs / f"{node}.log").read_text(), node
    assert "global model downloaded" in (logs / "collaborator_collaborator1.log").read_text()
