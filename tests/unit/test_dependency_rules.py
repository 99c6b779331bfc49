"""DESIGN.md's dependency rules, checked from the imports of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fedrun"

#: package -> fedrun packages it must never import
FORBIDDEN = {
    "federation": (
        "fedrun.transport",
        "fedrun.cli",
        "fedrun.runners",
        "fedrun.plan",
        "fedrun.nodes",
    ),
    "aggregation": (
        "fedrun.federation",
        "fedrun.transport",
        "fedrun.cli",
        "fedrun.runners",
        "fedrun.plan",
    ),
    "compression": (
        "fedrun.federation",
        "fedrun.transport",
        "fedrun.cli",
        "fedrun.runners",
        "fedrun.plan",
    ),
    "protocol": ("fedrun.federation", "fedrun.transport", "fedrun.cli", "fedrun.plan"),
    "storage": ("fedrun.transport", "fedrun.cli", "fedrun.runners"),
    "plan": ("fedrun.cli", "fedrun.transport"),
    "pki": ("fedrun.federation", "fedrun.transport", "fedrun.cli", "fedrun.runners"),
}
#: third-party modules that numpy-only packages must not import
HEAVY = ("torch", "keras", "tensorflow", "jax", "sklearn", "scipy")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_its_dependency_rule(package: str) -> None:
    offending = []
    for path in _modules(package):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                offending.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offending, offending


@pytest.mark.parametrize(
    "package",
    ["aggregation", "compression", "federation", "protocol", "storage", "transport", "plan", "pki"],
)
def test_framework_free_packages_import_no_ml_framework(package: str) -> None:
    offending = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] in HEAVY
    ]
    assert not offending, offending
