"""fedrun: federated learning with an aggregator, collaborators and one YAML FL plan.

The public API is listed in ``__all__``. Framework-specific classes (``PyTorchTaskRunner``,
``KerasTaskRunner``) are imported on first use, so ``import fedrun`` loads no ML framework.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "DataLoader",
    "KerasDataLoader",
    "KerasTaskRunner",
    "Metric",
    "PyTorchDataLoader",
    "PyTorchTaskRunner",
    "TaskResult",
    "TaskRunner",
    "__version__",
    "get_model",
]

_LAZY = {
    "DataLoader": ("fedrun.data.loader", "DataLoader"),
    "PyTorchDataLoader": ("fedrun.data.loader", "PyTorchDataLoader"),
    "KerasDataLoader": ("fedrun.data.loader", "KerasDataLoader"),
    "Metric": ("fedrun.runners.base", "Metric"),
    "TaskRunner": ("fedrun.runners.base", "TaskRunner"),
    "TaskResult": ("fedrun.federation.tasks", "TaskResult"),
    "PyTorchTaskRunner": ("fedrun.runners.torch", "PyTorchTaskRunner"),
    "KerasTaskRunner": ("fedrun.runners.keras", "KerasTaskRunner"),
    "get_model": ("fedrun.model", "get_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedrun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
