"""mypy checks the core packages (DESIGN.md: typed and checked)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = [
    "fedrun/federation",
    "fedrun/protocol/codec.py",
    "fedrun/plan",
    "fedrun/storage",
    "fedrun/transport",
    "fedrun/aggregation",
    "fedrun/compression",
    "fedrun/pki",
    "fedrun/buffers.py",
]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (dev extra)"
)
def test_core_packages_type_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *CORE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
