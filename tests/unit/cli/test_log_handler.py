"""The console log handler: one plain line per record, colour only where it belongs."""

from __future__ import annotations

import io
import logging
import re

import pytest

from fedrun.cli.common import ConsoleLogHandler, setup_logging


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger("fedrun.test-console-handler")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def _reset_fedrun_logger() -> None:
    """Undo setup_logging: close and drop its handlers."""
    root = logging.getLogger("fedrun")
    for h in root.handlers:
        h.close()
    root.handlers.clear()
    root.propagate = True


def test_one_line_with_time_level_and_message() -> None:
    out = io.StringIO()
    _logger(ConsoleLogHandler(out)).info("round %d started", 3)
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] INFO     round 3 started\n", out.getvalue())


def test_no_escape_codes_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    out = io.StringIO()
    _logger(ConsoleLogHandler(out)).warning("disk almost full")
    assert "\x1b" not in out.getvalue()


def test_colour_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    tty = _Tty()
    _logger(ConsoleLogHandler(tty)).error("refused")
    assert "\x1b[31mERROR" in tty.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Tty()
    _logger(ConsoleLogHandler(tty)).error("refused")
    assert "\x1b" not in tty.getvalue()


def test_a_broken_record_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[logging.LogRecord] = []
    handler = ConsoleLogHandler(io.StringIO())
    monkeypatch.setattr(handler, "handleError", seen.append)
    _logger(handler).info("%d collaborators", "not a number")
    assert len(seen) == 1


def test_setup_logging_writes_console_and_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    setup_logging("info", tmp_path / "logs" / "node.log")
    try:
        logging.getLogger("fedrun.aggregator").info("model saved")
        logging.getLogger("fedrun.aggregator").debug("not shown at info")
        err = capsys.readouterr().err
        assert "model saved" in err and "not shown" not in err
        text = (tmp_path / "logs" / "node.log").read_text()
        assert "INFO fedrun.aggregator: model saved" in text
    finally:
        _reset_fedrun_logger()


def test_a_log_file_moved_away_by_logrotate_is_reopened_at_its_path(tmp_path) -> None:
    from fedrun.cli.common import LogFileHandler

    path = tmp_path / "aggregator.log"
    handler = LogFileHandler(path)
    log = _logger(handler)
    try:
        log.info("round 1 started")
        path.rename(tmp_path / "aggregator.log.1")  # what logrotate does without copytruncate
        log.info("round 2 started")
    finally:
        handler.close()

    assert "round 2" in path.read_text() and "round 1" not in path.read_text()
    assert "round 2" not in (tmp_path / "aggregator.log.1").read_text()


def test_log_file_lines_carry_their_utc_offset_and_the_benchmarks_read_them(
    tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # nodes in different time zones (or TZ settings) wrote local times with no offset
    import time

    from benchmarks.fedrun_runner import peer_waits

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    setup_logging("info", tmp_path / "node.log")
    try:
        logging.getLogger("fedrun.aggregator").info("round 0: one finished its tasks")
        logging.getLogger("fedrun.aggregator").info("round 0: two finished its tasks")
        text = (tmp_path / "node.log").read_text()
    finally:
        _reset_fedrun_logger()
        monkeypatch.delenv("TZ")
        time.tzset()

    first = text.splitlines()[0]
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} -0[45]00 INFO fedrun.aggregator: ", first
    )
    waits = peer_waits(text, time.time() - 60)
    assert set(waits) == {"one", "two"}
    assert all(0 <= end - start < 5 for spans in waits.values() for start, end in spans)
