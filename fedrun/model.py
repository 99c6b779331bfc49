"""Load a saved model into its task runner: ``fedrun.get_model`` and ``fx model save``."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedrun.constants import OPTIMIZER_PREFIX
from fedrun.errors import WorkspaceError
from fedrun.plan.components import build_task_runner
from fedrun.plan.loader import Plan
from fedrun.storage.model_file import FILE_MODE, load_model


def get_model(
    plan_config: str | os.PathLike[str] = "plan/plan.yaml",
    cols_config: str | os.PathLike[str] | None = None,
    data_config: str | os.PathLike[str] | None = None,
    model_protobuf_path: str | os.PathLike[str] = "save/best.pbuf",
) -> Any:
    """Return the plan's TaskRunner loaded with the weights in ``model_protobuf_path``.

    No collaborator data is needed: the runner is built in model-initialisation mode.
    """
    plan = Plan.load(plan_config, cols_config, data_config)
    keras = sys.modules.get("keras")
    if keras is not None:
        # Keras numbers unnamed models and layers per process (dense, dense_1...): a model built
        # again in this process would take new names, which the model file (written by fresh
        # processes) does not have. Reset the numbering; models built before keep working.
        keras.backend.clear_session()
    runner = build_task_runner(plan, None)
    path = Path(model_protobuf_path)
    if not path.is_absolute() and not path.exists():
        path = plan.workspace / path
    snapshot = load_model(path)
    # a model of a CONTINUE_GLOBAL federation carries the aggregated optimizer state: load it
    # too, so that an export (fx model save) holds it
    federated_optimizer = any(n.startswith(OPTIMIZER_PREFIX) for n in snapshot.tensors)
    runner.set_tensor_dict(snapshot.tensors, with_opt_vars=federated_optimizer)
    return runner


def native_model_path(runner: Any, output: str | os.PathLike[str]) -> Path:
    """Where :func:`save_native` writes ``output``: for an existing folder ``model<suffix>``
    inside it (the framework's usual suffix: ``.pt``, ``.keras``...); else the file itself, as
    OpenFL's ``fx model save`` writes it (torch: ``output_model``), with the suffix added when
    the format needs one to be read back (Keras reads only ``.keras`` files: ``output_model.keras``)."""
    out = Path(output)
    suffix = getattr(runner, "NATIVE_SUFFIX", ".bin")
    if out.is_dir():
        return out / f"model{suffix}"
    if not out.suffix and getattr(runner, "NATIVE_SUFFIX_REQUIRED", False):
        return out.with_name(out.name + suffix)
    return out


def save_native(runner: Any, output: str | os.PathLike[str]) -> Path:
    """Write the runner's model in its framework's format (see :func:`native_model_path`)."""
    out = native_model_path(runner, output)
    if not hasattr(runner, "save_native"):
        raise WorkspaceError(
            "FX-MODEL-010",
            f"{type(runner).__name__} cannot save a native model",
            "implement save_native(path) in the task runner",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target under a hidden name with the same suffix (a framework may
    # insist on it) and renamed once whole: a full disk leaves no truncated model.pt, and an
    # earlier file of that name stays as it was
    existed = out.exists()
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    partial = Path(name)
    os.chmod(partial, FILE_MODE)  # mkstemp made it private; a model is not a secret
    try:
        runner.save_native(partial)
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.filename is None or exc.filename == str(partial):
            exc.filename = os.path.abspath(out)
        raise
    except RuntimeError as exc:
        # torch reports a write that failed (a full disk) as "[enforce fail at
        # inline_container.cc...] unexpected pos"
        partial.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = Path(os.path.abspath(out))
        raise WorkspaceError(
            "FX-MODEL-011",
            f"cannot write {where}: the file could not be written whole (a full disk?): {reason}",
            f"check that {where.parent} has free space and is writable, then run the command "
            "again "
            + (f"({out.name} was left as it was)" if existed else "(nothing was left behind)"),
        ) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out
