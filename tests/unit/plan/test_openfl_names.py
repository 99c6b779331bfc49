"""The OpenFL names fedrun stands in for while it loads workspace code."""

from __future__ import annotations

import importlib
import sys

import pytest

from fedrun.plan.openfl_names import PROVIDED, is_provided, serve_openfl_names


def test_every_provided_name_is_a_fedrun_class():
    serve_openfl_names()
    for module_name, names in PROVIDED.items():
        module = importlib.import_module(module_name)
        for name, (source, attr) in names.items():
            assert getattr(module, name) is getattr(importlib.import_module(source), attr)


@pytest.mark.parametrize(
    "line",
    [
        "from openfl.federated.data.loader import DataLoader",
        "from openfl.federated.task.runner import TaskRunner",
        "from openfl.federated.task.runner_pt import PyTorchTaskRunner",
        "from openfl.federated.data.loader_pt import PyTorchDataLoader",
        "from openfl.utilities.types import Metric",
    ],
)
def test_the_modules_openfl_defines_its_classes_in_serve_them_too(line):
    # OpenFL's no-op and federated-analytics workspaces import from there
    serve_openfl_names()
    exec(line, {})  # noqa: S102 - the workspace's import


def test_a_name_fedrun_does_not_provide_fails_at_import():
    serve_openfl_names()
    with pytest.raises(ImportError) as caught:
        exec("from openfl.utilities import TensorKey", {})  # noqa: S102 - the user's import
    assert caught.value.name == "openfl.utilities"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("openfl.interface.aggregation_functions")


def test_a_real_openfl_imported_before_does_not_serve_workspace_code(monkeypatch):
    # Prepare: an `openfl` module imported in this process before fedrun served its names
    serve_openfl_names()
    monkeypatch.setattr(
        sys, "meta_path", [f for f in sys.meta_path if type(f).__name__ != "_OpenFLNames"]
    )
    fake = type(sys)("openfl")
    monkeypatch.setitem(sys.modules, "openfl", fake)

    # Execute
    serve_openfl_names()

    # Assert
    assert importlib.import_module("openfl") is not fake


def test_is_provided():
    assert is_provided("openfl.federated", "PyTorchTaskRunner")
    assert is_provided("openfl", "federated")
    assert not is_provided("openfl.utilities", "TensorKey")
    assert not is_provided("openfl.interface")
