"""Checks shared by the CLI tests."""

from __future__ import annotations

from typing import Any


def assert_clean_failure(result: Any, exit_code: int, code: str) -> None:
    """A user-facing failure: documented exit code, error code, a fix, never a traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit)
    assert code in result.output
    assert "fix:" in result.output
    assert "Traceback" not in result.output
