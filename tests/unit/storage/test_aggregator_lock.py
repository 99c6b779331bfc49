"""One aggregator per workspace: the second is refused, naming the first; a dead holder (even
SIGKILLed) leaves nothing stale behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedrun.errors import StateError
from fedrun.storage.aggregator_lock import LOCK_FILE, AggregatorLock

HOLD = textwrap.dedent(
    """
    import sys, time
    from fedrun.storage.aggregator_lock import AggregatorLock
    AggregatorLock.for_workspace(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


def _holder(workspace: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workspace)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_lock_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    with AggregatorLock.for_workspace(tmp_path) as first:
        assert first.held and (tmp_path / LOCK_FILE).is_file()
        with pytest.raises(StateError) as err:
            AggregatorLock.for_workspace(tmp_path).acquire()
    assert err.value.code == "FX-STATE-015"
    assert f"pid {os.getpid()}" in err.value.message
    assert "stop that aggregator" in err.value.fix


def test_released_lock_can_be_taken_again(tmp_path: Path) -> None:
    lock = AggregatorLock.for_workspace(tmp_path).acquire()
    lock.release()
    lock.release()  # twice is harmless
    assert not lock.held
    with AggregatorLock.for_workspace(tmp_path) as again:
        assert again.held


def test_another_process_holding_it_refuses_us_until_it_is_killed(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(StateError, match=f"pid {proc.pid}"):
            AggregatorLock.for_workspace(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with AggregatorLock.for_workspace(tmp_path) as lock:  # the kernel dropped the dead one's
        assert lock.held


def test_an_unwritable_folder_is_a_state_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "local_state"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StateError) as err:
        AggregatorLock.for_workspace(tmp_path).acquire()
    assert err.value.code == "FX-STATE-001" and "aggregator.lock" in err.value.message


def test_a_file_system_without_locks_warns_and_runs_unguarded(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # e.g. NFSv3 without a lock daemon
    with (
        caplog.at_level("WARNING", logger="fedrun.aggregator"),
        AggregatorLock.for_workspace(tmp_path) as lock,
    ):
        assert not lock.held
    assert "No locks available" in caplog.text and "second aggregator" in caplog.text
