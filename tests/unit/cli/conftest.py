"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


@pytest.fixture
def runner() -> CliRunner:
    """Runs `fx` commands in this process (click's test runner)."""
    return CliRunner()
