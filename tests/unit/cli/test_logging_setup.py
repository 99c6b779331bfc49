"""The node's log file: a folder it cannot be written in is a clear state error at start, and a
write that fails later (disk full) is one warning, not a traceback per log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fedrun.cli.common import setup_logging
from fedrun.errors import StateError


def test_a_log_folder_that_cannot_exist_is_a_state_error(tmp_path: Path):
    (tmp_path / "logs").write_text("a file where the logs folder should be\n")

    with pytest.raises(StateError) as caught:
        setup_logging("info", tmp_path / "logs" / "aggregator.log")

    assert caught.value.code == "FX-STATE-004"
    assert "logs/aggregator.log" in caught.value.message


def test_a_failing_log_write_warns_once_and_the_console_keeps_logging(tmp_path, capfd):
    setup_logging("info", tmp_path / "node.log")
    log = logging.getLogger("fedrun")
    handler = next(h for h in log.handlers if isinstance(h, logging.FileHandler))
    handler.stream.close()  # every later write to the file fails, as on a full disk

    log.info("round 1 started")
    log.info("round 1 finished")

    err = capfd.readouterr().err
    assert err.count("cannot write the log file") == 1
    assert "Traceback" not in err and "Logging error" not in err
    assert "round 1 finished" in err  # the console still has every line
    logging.getLogger("fedrun").handlers.clear()
