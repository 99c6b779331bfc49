"""OpenFL's import names for workspace code written against OpenFL's TaskRunner API.

An OpenFL workspace's ``src/`` starts with ``from openfl.federated import PyTorchTaskRunner``
(or ``KerasTaskRunner``, ``PyTorchDataLoader``, ``KerasDataLoader``) and
``from openfl.utilities import Metric``. fedrun implements that API under its own names; while
fedrun loads workspace code, these OpenFL module names resolve to fedrun's classes, so such a
workspace runs without edits. Only the names in :data:`PROVIDED` exist: anything else of OpenFL
(``TensorKey``, ``openfl.interface...``) fails at import with the list of what is provided
(``FX-PLAN-030``), and ``fx plan validate`` finds such imports before anything runs.

fedrun never uses OpenFL itself, so in a fedrun process these names take precedence over an
installed ``openfl`` package: workspace classes must subclass fedrun's runners, not OpenFL's.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import types
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("fedrun")

_RUNNERS = {
    "PyTorchTaskRunner": ("fedrun.runners.torch", "PyTorchTaskRunner"),
    "KerasTaskRunner": ("fedrun.runners.keras", "KerasTaskRunner"),
    "TaskRunner": ("fedrun.runners.base", "TaskRunner"),
}
_LOADERS = {
    "PyTorchDataLoader": ("fedrun.data.loader", "PyTorchDataLoader"),
    "KerasDataLoader": ("fedrun.data.loader", "KerasDataLoader"),
    "DataLoader": ("fedrun.data.loader", "DataLoader"),
}

#: OpenFL module -> {name: (fedrun module, attribute)}; packages listed with no names of their own
PROVIDED: dict[str, dict[str, tuple[str, str]]] = {
    "openfl": {},
    "openfl.federated": {**_RUNNERS, **_LOADERS},
    "openfl.federated.task": dict(_RUNNERS),
    "openfl.federated.data": dict(_LOADERS),
    # the modules OpenFL defines them in, which some workspaces import from directly
    "openfl.federated.task.runner": {"TaskRunner": _RUNNERS["TaskRunner"]},
    "openfl.federated.task.runner_pt": {"PyTorchTaskRunner": _RUNNERS["PyTorchTaskRunner"]},
    "openfl.federated.task.runner_keras": {"KerasTaskRunner": _RUNNERS["KerasTaskRunner"]},
    "openfl.federated.data.loader": {"DataLoader": _LOADERS["DataLoader"]},
    "openfl.federated.data.loader_pt": {"PyTorchDataLoader": _LOADERS["PyTorchDataLoader"]},
    "openfl.federated.data.loader_keras": {"KerasDataLoader": _LOADERS["KerasDataLoader"]},
    "openfl.utilities": {
        "Metric": ("fedrun.runners.base", "Metric"),
        "validate_file_hash": ("fedrun.data.file_hash", "validate_file_hash"),
    },
    "openfl.utilities.types": {"Metric": ("fedrun.runners.base", "Metric")},
}


def provided_names() -> str:
    """What is served, for error messages: each module's names once (a submodule holding only
    names its parent has is mentioned, not listed)."""
    parts = []
    for module, names in PROVIDED.items():
        parent = PROVIDED.get(module.rpartition(".")[0], {})
        if names and not set(names) <= set(parent):
            parts.append(f"{module}.{{{', '.join(names)}}}")
    nested = [
        m
        for m, n in PROVIDED.items()
        if n and set(n) <= set(PROVIDED.get(m.rpartition(".")[0], {}))
    ]
    return "; ".join(parts) + (f" (also under {', '.join(nested)})" if nested else "")


def is_provided(module: str, name: str | None = None) -> bool:
    """True when ``module`` (and, if given, ``module.name``) is one fedrun serves."""
    if module not in PROVIDED:
        return False
    return name is None or name in PROVIDED[module] or f"{module}.{name}" in PROVIDED


class _OpenFLNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the modules of :data:`PROVIDED`, each resolving its names on first use."""

    announced = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in PROVIDED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        fullname = module.__name__
        names = PROVIDED[fullname]
        module.__path__ = []
        module.__all__ = sorted(names)  # type: ignore[attr-defined]

        def __getattr__(attr: str) -> Any:  # noqa: N807 - a module's attribute hook
            if attr not in names:
                raise AttributeError(
                    f"fedrun serves OpenFL's {fullname} only for {', '.join(names) or 'submodules'}, "
                    f"not {attr!r}"
                )
            source, real = names[attr]
            value = getattr(importlib.import_module(source), real)
            setattr(module, attr, value)
            return value

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        if fullname != "openfl" and not _OpenFLNames.announced:
            _OpenFLNames.announced = True
            log.info("workspace code imports OpenFL names: fedrun's own classes stand in for them")


_FINDER = _OpenFLNames()


def serve_openfl_names() -> None:
    """Let workspace code import :data:`PROVIDED` (idempotent); must run before its import."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
        for name in [m for m in sys.modules if m == "openfl" or m.startswith("openfl.")]:
            # a real OpenFL imported earlier in this process must not serve workspace code
            del sys.modules[name]
