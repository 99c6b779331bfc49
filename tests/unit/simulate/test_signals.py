"""fx simulate ends like Ctrl-C on SIGTERM and SIGHUP: the processes it started are stopped
first; a signal the user made it ignore (nohup) stays ignored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedrun.simulate.local import LocalFederation


@pytest.fixture
def federation(tmp_path: Path):
    """A LocalFederation with one real child process standing in for its nodes."""
    fed = LocalFederation(tmp_path / "ws", template="no-op")
    fed.processes["aggregator"] = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"]
    )
    yield fed
    fed.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_started_processes_and_ends_with_128_plus_its_number(
    federation: LocalFederation, signum: signal.Signals
):
    before = signal.getsignal(signum)
    child = federation.processes["aggregator"]

    with pytest.raises(SystemExit) as ended, federation.stopping_on_signals():
        os.kill(os.getpid(), signum)

    assert ended.value.code == 128 + signum
    assert child.poll() is not None  # stopped, not left running
    assert signal.getsignal(signum) is before  # the handler is put back


def test_an_ignored_hang_up_stays_ignored(federation: LocalFederation):
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under `nohup`
    try:
        with federation.stopping_on_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # nothing happens
            assert federation.processes["aggregator"].poll() is None
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_running_out_of_time_stops_the_processes_with_the_simulation_exit_code(
    federation: LocalFederation,
):
    from fedrun.simulate.local import SimulationTimedOut

    with pytest.raises(SimulationTimedOut) as caught:
        federation.wait(timeout=0.3, poll=0.05)

    assert caught.value.code == "FX-SIM-003" and caught.value.exit_code == 9
    assert federation.processes["aggregator"].poll() is not None
