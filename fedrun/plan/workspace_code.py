"""The workspace's own code (``src/``) as the plan loader meets it: what its source says without
running it (the classes it defines, the names it imports, a task runner's methods, imports of
OpenFL parts fedrun does not stand in for), and the errors that point the user at their line."""

from __future__ import annotations

import ast
import importlib
import traceback
from pathlib import Path

from fedrun.errors import PlanError
from fedrun.plan.openfl_names import is_provided, provided_names


def openfl_import_error(
    where: str, module_name: str, location: str | None, detail: str = ""
) -> PlanError:
    """The error for workspace code that imports a part of OpenFL fedrun does not stand in for."""
    at = f" ({location})" if location else ""
    why = f": {detail}" if detail else ""
    return PlanError(
        "FX-PLAN-030",
        f"{where}: {module_name!r} imports a part of OpenFL that fedrun does not provide{at}{why}",
        f"fedrun stands in for {provided_names()}; port the rest of that code to fedrun's API "
        "(or drop the import if it is unused)",
    )


def user_code_error(
    where: str, template: str, exc: BaseException, workspace: Path, doing: str = "building"
) -> PlanError:
    """A PlanError for an exception raised while importing or building a workspace class: the
    exception, and the innermost lines of the workspace's own code it passed through (the
    user's to fix)."""
    frames = [
        f"{Path(f.filename).relative_to(workspace)}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
        for f in traceback.extract_tb(exc.__traceback__)
        if Path(f.filename).is_relative_to(workspace)
    ][-3:]
    where_in_code = ("\n  " + "\n  ".join(frames)) if frames else ""
    if _network_failure(exc):
        return PlanError(
            "FX-DATA-036",
            f"{where}: {doing} {template} failed: the workspace code tried to download "
            f"something and the network failed: {type(exc).__name__}: {exc}{where_in_code}",
            "put the data where the workspace code reads it (see its data loader; it downloads "
            "only what is missing), or run this where that address is reachable",
        )
    return PlanError(
        "FX-PLAN-032",
        f"{where}: {doing} {template} failed: {type(exc).__name__}: {exc}{where_in_code}",
        "fix the workspace code at the line shown (run it with a debugger or print calls to see "
        "more); code written for OpenFL may use attributes fedrun's runners do not have",
    )


#: words of a failed download in messages that wrap its cause in another exception (Keras'
#: get_file raises a plain Exception "URL fetch failure on ...")
_NETWORK_WORDS = ("url fetch failure", "name or service not known", "temporary failure in name")


def _network_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed connection or name lookup."""
    import socket
    import urllib.error

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, (socket.gaierror, ConnectionError, TimeoutError, urllib.error.URLError)
        ):
            return True
        if any(word in str(current).lower() for word in _NETWORK_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def unprovided_openfl_import(tree: ast.Module) -> tuple[int, str] | None:
    """Line and name of the first import of an OpenFL module or name fedrun does not serve."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = node.module
            if module != "openfl" and not module.startswith("openfl."):
                continue
            for alias in node.names:
                if not is_provided(module, alias.name):
                    return node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name
                if (top == "openfl" or top.startswith("openfl.")) and not is_provided(top):
                    return node.lineno, top
    return None


#: frames a failing import passes through that are not the user's: the import machinery and
#: the plan loader, which imports the workspace's modules
_IMPORT_MACHINERY = (
    str(Path(importlib.__file__).parent),
    str(Path(__file__).with_name("loader.py")),
)


def failing_import(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of ``exc`` outside the import machinery (and the
    plan loader); None when the plan itself names the missing module."""
    location = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith("<frozen") and not filename.startswith(_IMPORT_MACHINERY):
            location = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return location


def leaves_keras_backend_unchosen(folder: Path) -> bool:
    """Whether the Python code under ``folder`` (a workspace's src/) imports Keras 3 without
    choosing its backend first (``import keras``, ``from keras...``; not ``tensorflow.keras``,
    which needs TensorFlow; code that calls fedrun's ``select_backend``, as fedrun's Keras
    templates do, chooses its own)."""
    trees = []
    for path in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
        try:
            trees.append(ast.parse(path.read_text(encoding="utf-8", errors="replace")))
        except SyntaxError:
            continue
    chooses = any(
        isinstance(node, ast.Name | ast.Attribute)
        and (node.id if isinstance(node, ast.Name) else node.attr) == "select_backend"
        for tree in trees
        for node in ast.walk(tree)
    )
    if chooses:
        return False
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(name == "keras" or name.startswith("keras.") for name in names):
                return True
    return False


def class_defs(tree: ast.Module) -> list[str]:
    return [n.name for n in tree.body if isinstance(n, ast.ClassDef)]


def imports_name(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[-1]) == name:
                    return True
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    return True
    return False


#: base classes whose task methods are known without importing them
_KNOWN_RUNNER_BASES = {
    "TaskRunner",
    "PyTorchTaskRunner",
    "KerasTaskRunner",
}


def methods_of(tree: ast.Module, class_name: str, seen: set[str]) -> set[str] | None:
    if class_name in seen:
        return set()
    seen.add(class_name)
    node = next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None
    )
    if node is None:
        return None
    methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for base in node.bases:
        base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
        if base_name is None:
            return None
        if base_name in _KNOWN_RUNNER_BASES:
            from fedrun.runners.base import TaskRunner

            methods |= {n for n in dir(TaskRunner) if not n.startswith("__")}
            continue
        if base_name in ("object", "nn", "Module"):
            continue
        inherited = methods_of(tree, base_name, seen)
        if inherited is None:
            return None
        methods |= inherited
    return methods
