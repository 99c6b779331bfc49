"""mypy checks the whole fedrun package (DESIGN.md: typed and checked)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: the whole package: CLI, data loaders, runners and the workspace templates included
CORE = ["fedrun"]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (dev extra)"
)
def test_core_packages_type_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *CORE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
