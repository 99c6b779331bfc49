"""Fixtures for multi-process tests (helpers live in fxnodes.py)."""

from __future__ import annotations

from fxnodes import mnist_dir, nodes

__all__ = ["mnist_dir", "nodes"]
