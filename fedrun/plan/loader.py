"""Read an FL plan, merge its defaults, resolve templates, validate it and hash it.

``Plan.load`` is the only way a plan enters fedrun. It fails before anything starts, with the
file, the key path and the fix, for: an unknown section or key (with a did-you-mean), a wrong
type, a missing file, an unknown template, or a task naming a function the task runner lacks.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedrun.constants import AUTO_PORT_MAX, AUTO_PORT_MIN
from fedrun.errors import FedrunError, PlanError
from fedrun.federation.tasks import TaskSpec
from fedrun.plan import schema
from fedrun.plan.aliases import ALIASES, SHORT_NAMES, resolve_template
from fedrun.plan.openfl_names import serve_openfl_names
from fedrun.plan.schema import CLASS_SCHEMAS, SECTIONS, TASK_KEYS, USER_SECTIONS, Setting
from fedrun.plan.workspace_code import (
    class_defs,
    failing_import,
    imports_name,
    leaves_keras_backend_unchosen,
    methods_of,
    openfl_import_error,
    unprovided_openfl_import,
    user_code_error,
)

PACKAGED_DEFAULTS = Path(__file__).resolve().parent / "defaults"

#: sections filled from the packaged defaults when a plan leaves them out
DEFAULTED_SECTIONS = (
    "aggregator",
    "collaborator",
    "network",
    "assigner",
    "compression_pipeline",
    "straggler_handling_policy",
)
#: keys excluded from the plan hash: they say where the aggregator is, not what runs
UNHASHED_NETWORK_KEYS = ("agg_addr", "agg_port", "listen_addr")


def install_hint(package: str) -> str:
    """How to install a package workspace code imports. Not the workspace's requirements.txt:
    OpenFL's pin torch and TensorFlow versions that would replace the installed ones. The
    torch add-ons must be the build made for the installed torch: a plain ``pip install
    torchvision`` replaces a CPU torch with another (CUDA) build."""
    companions = {"torchvision": 15, "torchaudio": 0}
    if package in companions:
        try:
            torch = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            torch = ""
        major, _, rest = torch.partition(".")
        minor = rest.split(".")[0]
        if major == "2" and minor.isdigit():
            version = (
                f"0.{int(minor) + companions[package]}"
                if package == "torchvision"
                else f"2.{minor}"
            )
            index = " --index-url https://download.pytorch.org/whl/cpu" if "+cpu" in torch else ""
            return (
                f"install the {package} made for the installed torch {torch}: pip install "
                f"'{package}=={version}.*'{index} (a plain `pip install {package}`, or the "
                "workspace's requirements.txt, replaces torch with another build)"
            )
    return (
        f"pip install {package} (check the workspace's requirements.txt for its version; "
        "installing that file whole may replace fedrun's torch or numpy)"
    )


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when a close match exists, else ``""``."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def read_text_file(path: Path, what: str) -> str:
    """The text of a plan-side file (plan, defaults, cols.yaml, data.yaml), or a PlanError
    naming the file and the reason: missing, a folder, unreadable, not UTF-8 text."""
    if path.is_dir():
        raise PlanError(
            "FX-PLAN-001",
            f"{what} {path} is a folder, not a file",
            "move the folder away and put the file there, or pass the file's path",
        )
    if not path.is_file():
        raise PlanError(
            "FX-PLAN-001",
            f"{what} {path} does not exist",
            "run the command inside a workspace (made by `fx workspace create`) or pass the path",
        )
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError as exc:
        raise PlanError(
            "FX-PLAN-035",
            f"cannot read {what} {path}: permission denied",
            "give the user running fx read access to it (chmod / chown)",
        ) from exc
    except UnicodeDecodeError as exc:
        raise PlanError(
            "FX-PLAN-003",
            f"{what} {path} is not a text file (byte {exc.start} is not UTF-8)",
            "restore the file: it must be UTF-8 YAML text",
        ) from exc
    except OSError as exc:
        raise PlanError(
            "FX-PLAN-035", f"cannot read {what} {path}: {exc.strerror}", "check the file and disk"
        ) from exc


def load_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file, turning every failure into a PlanError naming the file."""
    text = read_text_file(path, what)
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PlanError(
            "FX-PLAN-003",
            f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
            "fix the indentation or quoting at that position",
        ) from exc


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` onto ``base``: dicts merge recursively, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_cols(path: Path, required: bool = False) -> list[str]:
    """Authorized collaborators from cols.yaml (a missing file, unless ``required``: none)."""
    if not required and not path.exists():
        return []
    data = load_yaml(path, "collaborator list")
    if not isinstance(data, Mapping):
        raise PlanError(
            "FX-PLAN-004", f"{path} must hold `collaborators: [names]`", "see plan/cols.yaml"
        )
    cols = data.get("collaborators") or []
    if not isinstance(cols, list) or not all(isinstance(c, str | int) for c in cols):
        raise PlanError(
            "FX-PLAN-004",
            f"{path}: `collaborators` must be a list of names",
            "write one `- name` line per collaborator",
        )
    names = [str(c) for c in cols]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(
            "FX-PLAN-004", f"{path} lists {', '.join(dupes)} more than once", "remove duplicates"
        )
    return names


def read_data_paths(path: Path, required: bool = False) -> dict[str, str]:
    """``name,path`` lines of data.yaml (comments and blank lines skipped; a missing file,
    unless ``required``: none)."""
    out: dict[str, str] = {}
    if not required and not path.exists():
        return out
    for number, line in enumerate(read_text_file(path, "data file").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if "," not in text:
            raise PlanError(
                "FX-PLAN-005",
                f"{path} line {number}: {text!r} is not `name,data_path`",
                "write one `collaborator_name,data_path` line per collaborator",
            )
        name, value = (part.strip() for part in text.split(",", 1))
        if not value:
            raise PlanError(
                "FX-PLAN-005",
                f"{path} line {number}: collaborator {name!r} has an empty data path",
                f"run `fx collaborator create -n {name} -d <data path or shard>`",
            )
        out[name] = value
    return out


def write_data_path(path: Path, name: str, data_path: str) -> None:
    """Set ``name``'s data path in data.yaml, keeping every other line (comments too)."""
    if not data_path.strip() or "\n" in data_path or "\r" in data_path:
        raise PlanError(
            "FX-PLAN-005",
            f"data path {data_path!r} for collaborator {name!r} is empty or spans lines",
            "pass the folder (or, for the MNIST templates, the shard number) with -d",
        )
    lines = read_text_file(path, "data file").splitlines() if path.exists() else []
    if lines:
        read_data_paths(path)  # a damaged file is said, not appended to
    entry = f"{name},{data_path}"
    for i, line in enumerate(lines):
        text = line.strip()
        if text and not text.startswith("#") and text.split(",", 1)[0].strip() == name:
            lines[i] = entry
            break
    else:
        lines.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (``settings`` is implied) into a key path and YAML value."""
    if "=" not in item:
        raise PlanError(
            "FX-PLAN-006",
            f"override {item!r} has no `=`",
            "write it as section.key=value, e.g. aggregator.rounds_to_train=3",
        )
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise PlanError(
            "FX-PLAN-006",
            f"override {item!r} names no key inside a section",
            "write it as section.key=value, e.g. aggregator.rounds_to_train=3",
        )
    if parts[0] != "tasks" and parts[1] not in ("settings", "template", "defaults"):
        parts.insert(1, "settings")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return parts, value


def canonical_json(config: Mapping[str, Any]) -> str:
    """Canonical text of a plan: sorted keys, no whitespace, address and port left out."""
    stripped = copy.deepcopy(dict(config))
    net = stripped.get("network", {}).get("settings", {})
    for key in UNHASHED_NETWORK_KEYS:
        net.pop(key, None)
    return json.dumps(stripped, sort_keys=True, separators=(",", ":"), default=str)


def plan_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical plan."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def diff_plans(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Key paths whose values differ between two plans (for a mismatch message)."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.extend(diff_plans(va, vb, path + "."))
        elif va != vb:
            out.append(path)
    return out


@dataclass
class Plan:
    """A loaded, merged, validated FL plan and the files that come with it.

    Attributes
    ----------
    config:
        The merged plan: every section with ``template`` and ``settings`` (tasks: task entries).
    path, cols_path, data_path:
        Where the plan, the authorized-collaborator list and the data paths came from.
    workspace:
        The workspace folder (parent of ``plan/``); ``src.*`` templates are imported from it.
    cols:
        Authorized collaborator names (cols.yaml).
    data_paths:
        Collaborator name -> data path (data.yaml).
    """

    config: dict[str, Any]
    path: Path
    workspace: Path
    cols_path: Path
    data_path: Path
    cols: list[str] = field(default_factory=list)
    data_paths: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        plan_path: str | os.PathLike[str] = "plan/plan.yaml",
        cols_path: str | os.PathLike[str] | None = None,
        data_path: str | os.PathLike[str] | None = None,
        *,
        workspace: str | os.PathLike[str] | None = None,
        overrides: Iterable[str] = (),
    ) -> Plan:
        """Load and validate a plan; see the module docstring for what is checked."""
        path = Path(plan_path).resolve()
        ws = Path(workspace).resolve() if workspace else _workspace_of(path)
        raw = load_yaml(path, "plan file")
        if not isinstance(raw, Mapping):
            raise PlanError(
                "FX-PLAN-003", f"{path} must be a mapping of sections", "see plan/plan.yaml"
            )
        config = merge_defaults(raw, path, ws)
        for item in overrides:
            keys, value = parse_override(item)
            if len(keys) == 3 and keys[1] == "settings":
                # an OpenFL 1.6 name in an override sets the current name, so it wins
                layer = {keys[2]: value}
                normalize_settings(keys[0], layer)
                ((keys[2], value),) = layer.items()
            set_by_path(config, keys, value)
        normalize(config)
        plan = cls(
            config=config,
            path=path,
            workspace=ws,
            cols_path=Path(cols_path).resolve() if cols_path else ws / "plan" / "cols.yaml",
            data_path=Path(data_path).resolve() if data_path else ws / "plan" / "data.yaml",
        )
        # a file the user names must exist; the workspace's own may not be there yet
        plan.cols = read_cols(plan.cols_path, required=cols_path is not None)
        plan.data_paths = read_data_paths(plan.data_path, required=data_path is not None)
        plan.validate()
        return plan

    # ------------------------------------------------------------------ identity
    @property
    def hash(self) -> str:
        """SHA-256 of the canonical plan (address and port excluded)."""
        return plan_hash(self.config)

    @property
    def federation_id(self) -> str:
        """Short id of the experiment, derived from the plan hash. A plan frozen by
        ``fx plan freeze`` (``plan_<hash>.yaml``) has its original's id, so nodes running the
        frozen file and the original are one federation."""
        name = self.path.stem
        head, _, tail = name.rpartition("_")
        if head and len(tail) >= 8 and self.hash.startswith(tail):
            name = head
        return f"{name}_{self.hash[:12]}"

    @property
    def canonical(self) -> str:
        return canonical_json(self.config)

    # ------------------------------------------------------------------ access
    def section(self, name: str) -> dict[str, Any]:
        return self.config.get(name, {})

    def template(self, name: str) -> str:
        """Resolved dotted class path of a section's template."""
        return resolve_template(str(self.section(name).get("template", "")))

    def settings(self, name: str) -> dict[str, Any]:
        """A section's settings with schema defaults filled in for fedrun's own classes."""
        given = dict(self.section(name).get("settings") or {})
        known = CLASS_SCHEMAS.get(self.template(name))
        if known:
            for key, setting in known.items():
                given.setdefault(key, setting.default)
        return given

    def ignored_settings(self) -> list[str]:
        """Settings fedrun accepts from OpenFL plans but does not act on, set here to something
        other than their default: one line each, for a note where the plan is used."""
        notes = []
        for name in self.config:
            known = CLASS_SCHEMAS.get(self.template(name))
            if not known:
                continue
            for key, value in (self.section(name).get("settings") or {}).items():
                setting = known.get(key)
                if setting is not None and setting.ignored and value != setting.default:
                    why = setting.help.removeprefix("ignored").lstrip(": ").strip("() ")
                    notes.append(
                        f"{name}.settings.{key}: {value!r} has no effect in fedrun"
                        + (f" ({why})" if why else "")
                    )
        return notes

    @property
    def rounds_to_train(self) -> int:
        return int(self.settings("aggregator")["rounds_to_train"])

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        out: dict[str, TaskSpec] = {}
        for name, entry in self.config.get("tasks", {}).items():
            out[name] = TaskSpec(
                name=name,
                function=str(entry["function"]),
                kwargs=dict(entry.get("kwargs") or {}),
                aggregation_type=entry.get("aggregation_type"),
            )
        return out

    @property
    def network(self) -> dict[str, Any]:
        return self.settings("network")

    @property
    def agg_addr(self) -> str:
        addr = str(self.network.get("agg_addr") or "auto")
        if addr != "auto":
            return addr
        from fedrun.pki.names import default_fqdn  # one definition of the FQDN default

        return default_fqdn()

    @property
    def agg_port_is_auto(self) -> bool:
        """``agg_port: auto``: the port is derived from the plan hash (another plan, another port)."""
        return self.network.get("agg_port", "auto") in (None, "auto")

    @property
    def agg_port(self) -> int:
        if self.agg_port_is_auto:
            return int(self.hash[:8], 16) % (AUTO_PORT_MAX - AUTO_PORT_MIN) + AUTO_PORT_MIN
        return int(self.network["agg_port"])

    @property
    def listen_addr(self) -> str:
        return str(self.network.get("listen_addr") or self.agg_addr)

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """Workspace-relative paths in settings become absolute."""
        p = Path(value)
        return p if p.is_absolute() else self.workspace / p

    # ------------------------------------------------------------------ templates
    def import_template(self, template: str, where: str) -> Any:
        """Import a class or function named in the plan; ``src.*`` from the workspace."""
        dotted = resolve_template(template)
        module_name, _, attr = dotted.rpartition(".")
        if not module_name:
            raise PlanError(
                "FX-PLAN-007",
                f"{where}: template {template!r} is not a dotted `module.Class` name, nor one of "
                f"fedrun's short names{did_you_mean(template, SHORT_NAMES)}",
                "write e.g. src.taskrunner.MyRunner, or a short name such as Median or "
                "WeightedAverage",
            )
        if dotted.startswith("openfl."):
            _check_openfl_name(dotted, where)
        self._use_workspace_modules(module_name.split(".")[0])
        self._choose_keras_backend(module_name.split(".")[0])
        serve_openfl_names()
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name and (exc.name == "openfl" or exc.name.startswith("openfl.")):
                raise openfl_import_error(
                    where, module_name, failing_import(exc), str(exc)
                ) from exc
            if not isinstance(exc, ModuleNotFoundError):
                raise
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise PlanError(
                    "FX-PLAN-007",
                    f"{where}: template {template!r}: module {module_name!r} not found",
                    f"check the name; workspace modules live in {self.workspace / 'src'}",
                ) from exc
            raise PlanError(
                "FX-PLAN-008",
                f"{where}: importing {module_name!r} needs the package {exc.name!r}, "
                "which is not installed",
                install_hint(exc.name or ""),
            ) from exc
        except FedrunError:
            raise  # fedrun's own error from inside workspace code says what to do already
        except Exception as exc:  # the workspace's module raised while being imported
            if not (self.workspace / module_name.split(".")[0]).exists():
                raise
            raise user_code_error(
                where, f"module {module_name!r}", exc, self.workspace, "importing"
            ) from exc
        try:
            return getattr(module, attr)
        except AttributeError as exc:
            names = [n for n in dir(module) if not n.startswith("_")]
            raise PlanError(
                "FX-PLAN-007",
                f"{where}: {module_name!r} has no {attr!r}{did_you_mean(attr, names)}",
                f"check the template name in {self.path.name}",
            ) from exc

    def _choose_keras_backend(self, top: str) -> None:
        """Before workspace code that imports Keras runs: with KERAS_BACKEND unset, Keras 3
        would start on TensorFlow (its default, and ~/.keras/keras.json's), which fedrun does
        not need and which is often not installed (OpenFL's Keras workspaces expect the user to
        export KERAS_BACKEND first). An installed backend is chosen, as fedrun's own Keras
        templates do, and said in the log."""
        if "keras" in sys.modules or os.environ.get("KERAS_BACKEND", "").strip():
            return
        folder = self.workspace / top
        if not folder.is_dir() or not leaves_keras_backend_unchosen(folder):
            return
        from fedrun.runners.keras import select_backend

        select_backend()

    def _use_workspace_modules(self, top: str) -> None:
        """Make ``top`` (e.g. ``src``) import from this workspace, not another one seen before."""
        ws = str(self.workspace)
        local = (self.workspace / top).is_dir() or (self.workspace / f"{top}.py").is_file()
        if not local:
            if ws not in sys.path:
                sys.path.append(ws)
            return
        if ws in sys.path:
            sys.path.remove(ws)
        sys.path.insert(0, ws)
        loaded = sys.modules.get(top)
        origin = getattr(loaded, "__file__", None) or next(
            iter(getattr(loaded, "__path__", []) or []), None
        )
        if loaded is not None and (
            origin is None or not Path(origin).resolve().is_relative_to(self.workspace)
        ):
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
            importlib.invalidate_caches()

    def build(self, section: str, **inject: Any) -> Any:
        """Construct a section's class with its settings plus injected arguments."""
        cls_ = self.import_template(self.template(section), f"{section}.template")
        settings = dict(self.section(section).get("settings") or {})
        check_signature(cls_, settings, f"{self.path.name}: {section}.settings", set(inject))
        if section not in USER_SECTIONS:
            return cls_(**settings, **inject)
        try:
            return cls_(**settings, **inject)
        except (FedrunError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise user_code_error(
                f"{self.path.name}: {section}", self.template(section), exc, self.workspace
            ) from exc

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check sections, keys, types, templates, tasks and groups; raise PlanError."""
        where = self.path.name
        for name, section in self.config.items():
            if name in UNSUPPORTED_SECTIONS:
                raise PlanError(
                    "FX-PLAN-036",
                    f"{where}: section {name!r}: {UNSUPPORTED_SECTIONS[name]}",
                    "fedrun runs task-runner workspaces; remove the section, or run this "
                    "workspace with OpenFL",
                )
            if name not in SECTIONS:
                raise PlanError(
                    "FX-PLAN-009",
                    f"{where}: unknown section {name!r}{did_you_mean(name, SECTIONS)}",
                    f"sections are: {', '.join(SECTIONS)}",
                )
            if name == "tasks":
                continue
            for key in section:
                if key not in ("template", "settings"):
                    raise PlanError(
                        "FX-PLAN-010",
                        f"{where}: unknown key {name}.{key}"
                        f"{did_you_mean(key, ('template', 'settings', 'defaults'))}",
                        "a section holds `template`, `settings` and `defaults` only",
                    )
            if not isinstance(section.get("settings", {}), Mapping):
                raise PlanError(
                    "FX-PLAN-011",
                    f"{where}: {name}.settings must be a mapping, not "
                    f"{type(section['settings']).__name__}",
                    "write settings as `key: value` lines under `settings:`",
                )
        for name in ("data_loader", "task_runner", "tasks"):
            if not self.config.get(name):
                openfl_no_op = name == "tasks" and not (
                    (self.section("aggregator").get("settings") or {}).get("rounds_to_train", 1)
                )
                raise PlanError(
                    "FX-PLAN-013",
                    f"{where}: the plan has no {name!r} section"
                    + (
                        " (OpenFL's no-op template: 0 rounds and no tasks, a certificate and "
                        "connection test fedrun does not run this way)"
                        if openfl_no_op
                        else ""
                    ),
                    "use fedrun's no-op template instead (`fx workspace create --template "
                    "no-op`: certificates and connections with tasks that compute nothing); "
                    "`fx collaborator ping -n NAME` checks one collaborator's connection"
                    if openfl_no_op
                    else "add it (a workspace template's plan shows the shape)",
                )
        for name in self.config:
            if name != "tasks":
                self._validate_section(name)
        self._validate_port()
        loader_settings = self.section("data_loader").get("settings") or {}
        if "batch_size" in loader_settings:
            schema.checked_batch_size(
                loader_settings["batch_size"], f"{where}: data_loader.settings.batch_size"
            )
        self._validate_tasks()
        self._validate_groups()

    def _validate_port(self) -> None:
        port = (self.section("network").get("settings") or {}).get("agg_port", "auto")
        if port in (None, "auto"):
            return
        try:
            number = int(port)
        except (TypeError, ValueError):
            number = 0
        if not 1 <= number <= 65535:
            raise PlanError(
                "FX-PLAN-011",
                f"{self.path.name}: network.settings.agg_port is {port!r}",
                "use `auto` (derived from the plan hash) or a port number from 1 to 65535",
            )

    def _validate_section(self, name: str) -> None:
        where = f"{self.path.name}: {name}"
        section = self.config[name]
        template = section.get("template")
        if not isinstance(template, str) or not template:
            raise PlanError(
                "FX-PLAN-007",
                f"{where}.template is missing",
                "name the class, e.g. template: src.taskrunner.MyRunner",
            )
        dotted = resolve_template(template)
        settings = section.get("settings") or {}
        known = CLASS_SCHEMAS.get(dotted)
        if known is not None:
            check_settings(known, settings, f"{where}.settings")
            return
        if name in USER_SECTIONS:
            self._check_template_exists(dotted, f"{where}.template")
            return
        cls_ = self.import_template(dotted, f"{where}.template")
        check_signature(cls_, settings, f"{where}.settings", set())

    def _check_template_exists(self, dotted: str, where: str) -> None:
        """Find a user class without importing it (its module may import torch or keras)."""
        module_name, _, attr = dotted.rpartition(".")
        source = self._module_source(module_name)
        if source is None:
            try:
                found = importlib.util.find_spec(module_name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise PlanError(
                    "FX-PLAN-007",
                    f"{where}: module {module_name!r} not found",
                    f"check the name; workspace modules live in {self.workspace / 'src'}",
                )
            return
        unprovided = unprovided_openfl_import(source)
        if unprovided is not None:
            line, what = unprovided
            rel = Path(*module_name.split(".")).with_suffix(".py")
            raise openfl_import_error(where, module_name, f"{rel}:{line}", f"it imports {what}")
        classes = class_defs(source)
        if attr not in classes and not imports_name(source, attr):
            raise PlanError(
                "FX-PLAN-007",
                f"{where}: {module_name}.py defines no {attr!r}{did_you_mean(attr, classes)}",
                f"check the class name in {self.path.name}",
            )

    def _module_source(self, module_name: str) -> ast.Module | None:
        rel = Path(*module_name.split("."))
        for candidate in (
            self.workspace / rel.with_suffix(".py"),
            self.workspace / rel / "__init__.py",
        ):
            if candidate.is_file():
                try:
                    return ast.parse(candidate.read_text(), str(candidate))
                except SyntaxError as exc:
                    raise PlanError(
                        "FX-PLAN-014",
                        f"{candidate} line {exc.lineno}: syntax error: {exc.msg}",
                        "fix the Python file",
                    ) from exc
        return None

    def runner_functions(self) -> set[str] | None:
        """Method names of the task runner class, found statically; None if unknowable."""
        dotted = self.template("task_runner")
        module_name, _, attr = dotted.rpartition(".")
        source = self._module_source(module_name)
        if source is None:
            return None
        return methods_of(source, attr, set())

    def _validate_tasks(self) -> None:
        where = f"{self.path.name}: tasks"
        tasks = self.config["tasks"]
        if not isinstance(tasks, Mapping):
            raise PlanError("FX-PLAN-011", f"{where} must be a mapping of task names")
        functions = self.runner_functions()
        for task_name, entry in tasks.items():
            if not isinstance(entry, Mapping):
                raise PlanError(
                    "FX-PLAN-011",
                    f"{where}.{task_name} must be a mapping with `function` and `kwargs`",
                )
            for key in entry:
                if key not in TASK_KEYS:
                    raise PlanError(
                        "FX-PLAN-010",
                        f"{where}.{task_name}: unknown key {key!r}{did_you_mean(key, TASK_KEYS)}",
                        f"a task holds {', '.join(TASK_KEYS)}",
                    )
            function = entry.get("function")
            if not isinstance(function, str) or not function:
                raise PlanError(
                    "FX-PLAN-015",
                    f"{where}.{task_name}.function is missing",
                    "name the task runner method, e.g. function: train_task",
                )
            if functions is not None and function not in functions:
                raise PlanError(
                    "FX-PLAN-016",
                    f"{where}.{task_name}.function: the task runner "
                    f"{self.template('task_runner')} has no method {function!r}"
                    f"{did_you_mean(function, functions)}",
                    "name a method the task runner defines (train_task, validate_task, ...)",
                )
            if not isinstance(entry.get("kwargs", {}) or {}, Mapping):
                raise PlanError("FX-PLAN-011", f"{where}.{task_name}.kwargs must be a mapping")
            kwargs = entry.get("kwargs") or {}
            if kwargs.get("batch_size") is not None:
                schema.checked_batch_size(
                    kwargs["batch_size"], f"{where}.{task_name}.kwargs.batch_size"
                )
            apply = kwargs.get("apply")
            if apply is not None and apply not in ("global", "local"):
                raise PlanError(
                    "FX-PLAN-017",
                    f"{where}.{task_name}.kwargs.apply is {apply!r}",
                    "use `global` (validate the received model) or `local` (the trained one)",
                )
            agg = entry.get("aggregation_type")
            if agg is not None:
                if isinstance(agg, str):
                    agg = {"template": agg}
                    tasks[task_name]["aggregation_type"] = agg
                if not isinstance(agg, Mapping) or "template" not in agg:
                    raise PlanError(
                        "FX-PLAN-011",
                        f"{where}.{task_name}.aggregation_type needs a `template`",
                        "e.g. aggregation_type: {template: Median}",
                    )
                fn = self.import_template(
                    str(agg["template"]), f"{where}.{task_name}.aggregation_type"
                )
                check_signature(
                    fn,
                    agg.get("settings") or {},
                    f"{where}.{task_name}.aggregation_type.settings",
                    set(),
                )

    def _validate_groups(self) -> None:
        where = f"{self.path.name}: assigner.settings.task_groups"
        groups = self.settings("assigner").get("task_groups") or []
        tasks = set(self.config["tasks"])
        for group in groups:
            if not isinstance(group, Mapping) or "tasks" not in group:
                raise PlanError(
                    "FX-PLAN-018",
                    f"{where}: each group needs `name` and `tasks`",
                    "see plan/defaults/assigner.yaml",
                )
            for task in group.get("tasks") or []:
                if task not in tasks:
                    raise PlanError(
                        "FX-PLAN-018",
                        f"{where}: group {group.get('name')!r} lists task {task!r}, which the "
                        f"tasks section does not define{did_you_mean(task, tasks)}",
                        "define the task under `tasks:` or remove it from the group",
                    )


#: plan sections of OpenFL features fedrun does not implement, and what they are
UNSUPPORTED_SECTIONS = {
    "connector": "OpenFL's connector runs a Flower app inside OpenFL (Flower interoperability), "
    "which fedrun does not implement",
}

#: OpenFL classes fedrun knows of but does not implement: what they are, and what to use
#: OpenFL 1.9's plan/defaults files for parts fedrun lacks, and what they are for
OPENFL_DEFAULTS_NOT_SHIPPED = {
    "tasks_xgb.yaml": "XGBoost tasks",
    "connector_flower.yaml": "running a Flower app through its connector",
}

UNSUPPORTED_OPENFL = {
    "EdenPipeline": "OpenFL's EDEN compression, which fedrun does not implement; use "
    "NoCompressionPipeline, STCPipeline, SKCPipeline, KCPipeline or RandomShiftPipeline",
    "SecureWeightedAverage": "OpenFL's secure aggregation, which fedrun does not implement; "
    "use WeightedAverage (updates are protected in transit by mutual TLS, not from the "
    "aggregator)",
}


def _check_openfl_name(name: str, where: str) -> None:
    """An OpenFL class fedrun knows it lacks (EDEN) is FX-PLAN-036 saying so; a name close to
    one it maps (a typo such as ``...aggregation_functions.Medain``) is FX-PLAN-007 with the
    name meant; importing either would only fail as a missing part of OpenFL."""
    module, _, attr = name.rpartition(".")
    if attr in UNSUPPORTED_OPENFL:
        raise PlanError(
            "FX-PLAN-036",
            f"{where}: {name!r} is {UNSUPPORTED_OPENFL[attr]}",
            "change the template in the plan",
        )
    known = {key.rpartition(".")[2] for key in ALIASES if key.rpartition(".")[0] == module}
    hint = did_you_mean(attr, known | set(SHORT_NAMES))
    if hint:
        raise PlanError(
            "FX-PLAN-007",
            f"{where}: {name!r} is not an OpenFL class fedrun provides{hint}",
            "check the class name in the plan",
        )


# ---------------------------------------------------------------------- helpers
def _workspace_of(plan_path: Path) -> Path:
    return plan_path.parent.parent if plan_path.parent.name == "plan" else plan_path.parent


def _defaults_file(ref: str, plan_path: Path, workspace: Path) -> Path:
    rel = Path(ref)
    for candidate in (workspace / rel, plan_path.parent / rel.name):
        if candidate.is_file() and candidate.resolve() != plan_path:
            return candidate
    packaged = PACKAGED_DEFAULTS / rel.name
    if packaged.is_file():
        return packaged
    if rel.name in OPENFL_DEFAULTS_NOT_SHIPPED:
        raise PlanError(
            "FX-PLAN-036",
            f"{plan_path.name}: defaults file {ref!r} is OpenFL's for "
            f"{OPENFL_DEFAULTS_NOT_SHIPPED[rel.name]}, which fedrun does not support",
            "this workspace needs OpenFL itself; fedrun runs TaskRunner workspaces (PyTorch, "
            "Keras, or your own runner)",
        )
    raise PlanError(
        "FX-PLAN-002",
        f"{plan_path.name}: defaults file {ref!r} not found in the workspace ({workspace / rel}) "
        "or among fedrun's packaged defaults",
        f"create it, or use one of: {', '.join(sorted(p.name for p in PACKAGED_DEFAULTS.glob('*.yaml')))}",
    )


def merge_defaults(raw: Mapping[str, Any], plan_path: Path, workspace: Path) -> dict[str, Any]:
    """Apply every section's ``defaults`` file underneath it (the plan wins, dicts merge)."""
    config: dict[str, Any] = {}
    for name, section in raw.items():
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise PlanError(
                "FX-PLAN-011",
                f"{plan_path.name}: section {name!r} must be a mapping, not {type(section).__name__}",
                "indent its template/settings under it",
            )
        section = dict(section)
        _normalize_layer(str(name), section)
        ref = section.pop("defaults", None)
        if ref:
            defaults_path = _defaults_file(str(ref), plan_path, workspace)
            base = load_yaml(defaults_path, f"defaults for {name}")
            if not isinstance(base, Mapping):
                raise PlanError("FX-PLAN-003", f"defaults file {ref!r} must be a mapping")
            base = dict(base)
            base.pop("defaults", None)
            # each layer is normalized on its own, so the plan's `tls: false` beats the
            # defaults file's `use_tls: true` instead of losing to it after the merge
            _normalize_layer(str(name), base)
            _check_defaults_keys(str(name), base, section, defaults_path, workspace)
            section = deep_merge(base, section)
        if name == "tasks":
            section.pop("settings", None)
        config[str(name)] = section
    for name in DEFAULTED_SECTIONS:
        if name not in config:
            config[name] = dict(load_yaml(PACKAGED_DEFAULTS / f"{name}.yaml", "packaged defaults"))
    for name, section in config.items():
        if name != "tasks":
            section.setdefault("settings", {})
            if section["settings"] is None:
                section["settings"] = {}
    return config


def _check_defaults_keys(
    name: str, base: Mapping[str, Any], section: Mapping[str, Any], path: Path, workspace: Path
) -> None:
    """An unknown setting in a defaults file is reported in that file (after the merge it would
    be reported as if plan.yaml held it)."""
    template = section.get("template") or base.get("template")
    known = CLASS_SCHEMAS.get(resolve_template(template)) if isinstance(template, str) else None
    settings = base.get("settings")
    if known is None or not isinstance(settings, Mapping):
        return
    shown = path.relative_to(workspace) if path.is_relative_to(workspace) else path
    for key in settings:
        if key not in known:
            raise unknown_setting(key, known, f"{shown}: {name}.settings")


def normalize_settings(section: str, settings: dict[str, Any]) -> None:
    """Map OpenFL 1.6 names in one layer's settings to current names; a layer that sets both
    names of one setting to different values is refused (FX-PLAN-034)."""
    if section == "network":
        _rename(settings, section, "tls", "use_tls", lambda v: v)
        _rename(settings, section, "disable_client_auth", "require_client_auth", lambda v: not v)
    elif section == "collaborator":
        _rename(settings, section, "delta_updates", "use_delta_updates", lambda v: v)


def _rename(
    settings: dict[str, Any], section: str, old: str, new: str, convert: Callable[[Any], Any]
) -> None:
    if old not in settings:
        return
    value = convert(settings.pop(old))
    if new in settings and settings[new] != value:
        raise PlanError(
            "FX-PLAN-034",
            f"{section}.settings sets both {new}: {settings[new]!r} and its OpenFL 1.6 name "
            f"{old}, which means {new}: {value!r}",
            f"keep one of the two ({new} is the current name)",
        )
    settings.setdefault(new, value)


def _normalize_layer(name: str, section: dict[str, Any]) -> None:
    settings = section.get("settings")
    if isinstance(settings, Mapping):
        section["settings"] = dict(settings)
        normalize_settings(name, section["settings"])


def normalize(config: dict[str, Any]) -> None:
    """Map OpenFL 1.6 setting names to their current names."""
    for name, section in config.items():
        if isinstance(section, dict) and isinstance(section.get("settings"), dict):
            normalize_settings(name, section["settings"])


def set_by_path(config: dict[str, Any], keys: list[str], value: Any) -> None:
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise PlanError("FX-PLAN-006", f"override path {'.'.join(keys)} crosses a non-mapping")
    node[keys[-1]] = value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def unknown_setting(key: str, known: Mapping[str, Setting], where: str) -> PlanError:
    """``FX-PLAN-010`` for a setting the schema does not know, with the name probably meant."""
    return PlanError(
        "FX-PLAN-010",
        f"{where}: unknown key {key!r}{did_you_mean(key, known)}",
        f"known keys: {', '.join(sorted(known))}",
    )


def check_settings(known: Mapping[str, Setting], settings: Mapping[str, Any], where: str) -> None:
    """Check keys, types and choices of settings against a schema."""
    for key, value in settings.items():
        if key not in known:
            raise unknown_setting(key, known, where)
        spec = known[key]
        if value is None and (spec.nullable or spec.default is None):
            continue
        if spec.unsupported:
            raise PlanError(
                "FX-PLAN-036",
                f"{where}.{key} is set: {spec.help}",
                f"remove {where}.{key} from the plan",
            )
        ok = isinstance(value, spec.types) and not (
            isinstance(value, bool) and bool not in spec.types
        )
        if not ok:
            expected = " or ".join(t.__name__ for t in spec.types)
            raise PlanError(
                "FX-PLAN-011",
                f"{where}.{key} is {value!r} ({type(value).__name__}); expected {expected}",
                f"{key}: {spec.help}",
            )
        if spec.choices and value not in spec.choices:
            raise PlanError(
                "FX-PLAN-012",
                f"{where}.{key} is {value!r}",
                f"use one of {', '.join(map(str, spec.choices))} ({key}: {spec.help})",
            )
        low, high = spec.minimum, spec.maximum
        if isinstance(value, int | float) and (
            (low is not None and value < low) or (high is not None and value > high)
        ):
            bounds = " and ".join(
                text
                for text in (
                    f"at least {_number(low)}" if low is not None else "",
                    f"at most {_number(high)}" if high is not None else "",
                )
                if text
            )
            raise PlanError(
                "FX-PLAN-027",
                f"{where}.{key} is {value!r}, out of range",
                f"{key} must be {bounds} ({spec.help})",
            )


def check_signature(
    target: Any, settings: Mapping[str, Any], where: str, injected: set[str]
) -> None:
    """Refuse settings a constructor would not accept, before calling it."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in settings:
        if key not in accepted:
            options = [a for a in accepted if a not in injected]
            raise PlanError(
                "FX-PLAN-010",
                f"{where}: unknown key {key!r}{did_you_mean(key, options)}",
                f"{getattr(target, '__name__', target)} accepts: {', '.join(options) or 'nothing'}",
            )


__all__ = [
    "Plan",
    "PlanError",
    "canonical_json",
    "deep_merge",
    "did_you_mean",
    "diff_plans",
    "load_yaml",
    "parse_override",
    "plan_hash",
    "read_cols",
    "read_data_paths",
    "schema",
    "write_data_path",
]
