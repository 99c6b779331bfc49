"""KerasTaskRunner: train and validate a Keras 3 model as federated tasks, on any Keras backend.

The backend is the one Keras 3 itself reads from ``KERAS_BACKEND`` (``torch``, ``jax`` or
``tensorflow``). Keras fixes its backend the moment it is first imported, so fedrun chooses it
before that: :func:`select_backend` checks that the backend's package is installed (and says which
one to install when it is not) and only then imports Keras. Templates call it from
``src/__init__.py``, which Python runs before ``src/taskrunner.py`` does ``import keras``.

Subclass :class:`KerasTaskRunner`, build and compile ``self.model`` in ``__init__`` (give the
model and its layers fixed names: weights travel under their Keras variable paths, e.g.
``mnist_cnn/conv1/kernel``, and every process must agree on them). ``train_task`` /
``validate_task`` run ``model.fit`` / ``model.evaluate`` on the data loader's batches.

Optimizer state travels as tensors named ``__opt_<variable name>`` (the aggregator accepts such
names only under ``opt_treatment: CONTINUE_GLOBAL``):

* ``RESET``: before every training task the optimizer's variables (moments, iteration count...)
  are set to the values a freshly built optimizer of the same configuration has;
* ``CONTINUE_LOCAL``: the optimizer state stays local and carries over between rounds;
* ``CONTINUE_GLOBAL``: the optimizer state is sent with the weights, averaged like them, and
  loaded back at the start of the next round.

The learning rate is a hyper-parameter, not state: it is neither sent nor reset.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedrun.errors import DataError, PlanError
from fedrun.federation.tasks import TaskResult
from fedrun.runners.base import Metric, TaskRunner, metric_values
from fedrun.storage.model_file import FILE_MODE

log = logging.getLogger("fedrun.runners.keras")

#: optimizer tensors are named ``__opt_<optimizer variable name>``
OPT_PREFIX = "__opt_"

#: backends that can train, and the pip package each one needs
BACKEND_PACKAGES: dict[str, str] = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}

#: when KERAS_BACKEND is unset: Keras's own default first, then the others
AUTO_BACKEND_ORDER = ("tensorflow", "torch", "jax")

#: plan metric names accepted as another name for a Keras metric
METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "acc": ("accuracy",),
    "accuracy": ("acc",),
}

BACKEND_MISSING_CODE = "FX-MODEL-020"
BACKEND_UNKNOWN_CODE = "FX-MODEL-021"
KERAS_MISSING_CODE = "FX-MODEL-022"
BACKEND_CONFLICT_CODE = "FX-MODEL-023"
METRIC_CODE = "FX-MODEL-024"
NO_MODEL_CODE = "FX-MODEL-025"
NAMES_CODE = "FX-MODEL-026"

# messages Keras or numpy print on every fit() over a Python generator; they say nothing useful
_NOISE = (
    r".*ran out of data.*",
    r".*__array__ implementation doesn't accept a copy keyword.*",
    r".*`shuffle=True` was passed, but will be ignored.*",
)


# ---------------------------------------------------------------------- backend selection
def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _keras_json_backend() -> str | None:
    """The backend named in ``~/.keras/keras.json`` (or ``$KERAS_HOME``), if any."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(home, "keras.json")
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _install_hint(backend: str) -> str:
    package = BACKEND_PACKAGES[backend]
    hint = f"pip install {package}"
    if backend == "jax":
        hint += " (it is part of pip install 'fedrun[all]')"
    if backend == "torch":
        hint += (
            " (the CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
        )
    others = [b for b in BACKEND_PACKAGES if b != backend and _installed(BACKEND_PACKAGES[b])]
    if others:
        hint += f", or use an installed backend: export KERAS_BACKEND={others[0]}"
    return hint


def _check_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKEND_PACKAGES:
        raise PlanError(
            BACKEND_UNKNOWN_CODE,
            f"{source} names the Keras backend {name!r}, which cannot train models",
            f"set KERAS_BACKEND to one of {', '.join(BACKEND_PACKAGES)}",
        )
    return name


def _loaded_backend() -> str | None:
    module = sys.modules.get("keras")
    if module is None:
        return None
    try:
        return str(module.backend.backend())
    except AttributeError:  # a half-imported or foreign module named keras
        return None


def select_backend(default: str | None = None) -> str:
    """Choose the Keras backend, check it is installed, import Keras; return the backend name.

    Parameters
    ----------
    default:
        The backend a template is made for (e.g. ``"jax"``), used when ``KERAS_BACKEND`` is not
        set. ``KERAS_BACKEND`` always wins; a different value only logs a warning.

    The choice, in order: ``KERAS_BACKEND``; ``default``; the backend in ``~/.keras/keras.json``
    when its package is installed; the first installed of tensorflow, torch, jax.

    Raises
    ------
    PlanError
        ``FX-MODEL-020`` when the chosen backend's package is not installed (the message names
        the package to install), ``FX-MODEL-021`` for a backend name that cannot train,
        ``FX-MODEL-022`` when Keras 3 is not installed, ``FX-MODEL-023`` when Keras was already
        imported in this process with another backend.
    """
    env = os.environ.get("KERAS_BACKEND", "").strip()
    if env:
        wanted: str | None = _check_name(env, "KERAS_BACKEND")
        source = f"KERAS_BACKEND={env}"
        if default and wanted != default:
            log.warning(
                "this template is made for the %s backend; using %s because KERAS_BACKEND=%s",
                default,
                wanted,
                env,
            )
    elif default:
        wanted = _check_name(default, "the template")
        source = f"the template (default backend {default})"
    else:
        wanted, source = None, ""

    loaded = _loaded_backend()
    if loaded is not None:
        if wanted is not None and wanted != loaded:
            raise PlanError(
                BACKEND_CONFLICT_CODE,
                f"Keras is already imported in this process with the {loaded} backend, but "
                f"{source} asks for {wanted}; Keras cannot switch backends after import",
                f"run in a fresh process with KERAS_BACKEND={wanted} set before anything "
                "imports keras",
            )
        return loaded

    if wanted is None:
        configured = _keras_json_backend()
        if configured in BACKEND_PACKAGES and _installed(BACKEND_PACKAGES[configured]):
            wanted, source = configured, "~/.keras/keras.json"
        else:
            for name in AUTO_BACKEND_ORDER:
                if _installed(BACKEND_PACKAGES[name]):
                    wanted, source = name, "the first installed backend (KERAS_BACKEND is unset)"
                    break
        if wanted is None:
            raise PlanError(
                BACKEND_MISSING_CODE,
                "no Keras backend is installed: Keras 3 needs one of torch, jax or tensorflow",
                "pip install torch (or jax, or tensorflow) and set KERAS_BACKEND to it",
            )

    package = BACKEND_PACKAGES[wanted]
    if not _installed(package):
        raise PlanError(
            BACKEND_MISSING_CODE,
            f"the Keras backend {wanted!r} (chosen by {source}) needs the Python package "
            f"{package!r}, which is not installed",
            _install_hint(wanted),
        )
    if not _installed("keras"):
        raise PlanError(
            KERAS_MISSING_CODE,
            "this task runner needs Keras 3, which is not installed",
            "pip install 'fedrun[keras]' (or pip install 'keras>=3.5')",
        )
    os.environ["KERAS_BACKEND"] = wanted
    try:
        keras = importlib.import_module("keras")
    except ImportError as exc:
        raise PlanError(
            BACKEND_MISSING_CODE,
            f"importing Keras with the {wanted} backend failed: {exc}",
            _install_hint(wanted),
        ) from exc
    version = str(getattr(keras, "__version__", "0"))
    if not version[:1].isdigit() or int(version.split(".")[0]) < 3:
        raise PlanError(
            KERAS_MISSING_CODE,
            f"Keras {version} is installed; fedrun's KerasTaskRunner needs Keras 3",
            "pip install 'keras>=3.5'",
        )
    actual = str(keras.backend.backend())
    if actual != wanted:
        raise PlanError(
            BACKEND_CONFLICT_CODE,
            f"Keras started with the {actual} backend although {wanted} was requested",
            f"set KERAS_BACKEND={wanted} before anything imports keras",
        )
    log.info("Keras %s, backend %s (chosen by %s)", version, actual, source)
    return actual


def load_keras(default: str | None = None) -> Any:
    """:func:`select_backend`, then return the ``keras`` module."""
    select_backend(default)
    return sys.modules["keras"]


def _limit_threads(backend: str) -> None:
    """Honour FEDRUN_NUM_THREADS (set by ``fx simulate`` so collaborators share the cores)."""
    text = os.environ.get("FEDRUN_NUM_THREADS", "").strip()
    if not text.isdigit():
        return
    threads = max(1, int(text))
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif backend == "tensorflow":
        tf = importlib.import_module("tensorflow")
        with contextlib.suppress(RuntimeError):  # only possible before TF's runtime starts
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)


# ---------------------------------------------------------------------- the runner
class KerasTaskRunner(TaskRunner):
    """Task runner for Keras 3 models (OpenFL's ``KerasTaskRunner`` method names).

    The subclass builds and compiles ``self.model`` in ``__init__``. Task keyword arguments from
    the plan: ``epochs``, ``batch_size`` (overrides the data loader's) and ``metrics`` (names of
    the values to report: ``loss`` or any metric given to ``model.compile``; ``acc`` and
    ``accuracy`` are interchangeable).

    Parameters
    ----------
    data_loader:
        The collaborator's DataLoader (injected by fedrun).
    backend:
        Optional backend the model is meant for, used when ``KERAS_BACKEND`` is unset (see
        :func:`select_backend`). Keras may already be imported by then; templates therefore
        choose the backend in ``src/__init__.py``.
    """

    #: file extension of save_native's output (Keras 3 loads only ``.keras`` files)
    NATIVE_SUFFIX = ".keras"
    #: Keras reads back only `.keras` files: a name without suffix gets it
    NATIVE_SUFFIX_REQUIRED = True

    def __init__(self, data_loader: Any = None, backend: str | None = None, **kwargs: Any) -> None:
        TaskRunner.__init__(self, data_loader=data_loader, **kwargs)
        self.backend = select_backend(backend)
        self.keras = sys.modules["keras"]
        self.logger = log
        self.model: Any = None
        _limit_threads(self.backend)

    # ------------------------------------------------------------------ OpenFL compatibility
    def initialize_tensorkeys_for_functions(self, with_opt_vars: bool = False) -> None:
        """Kept for OpenFL task runners that call it; fedrun needs no tensor-key bookkeeping."""
        self._require_model()

    # ------------------------------------------------------------------ model plumbing
    def _require_model(self) -> Any:
        model = self.model
        if model is None:
            raise PlanError(
                NO_MODEL_CODE,
                f"{type(self).__name__} has no model",
                "build and compile self.model in the task runner's __init__",
            )
        if not model.built:
            raise PlanError(
                NO_MODEL_CODE,
                f"the model of {type(self).__name__} is not built, so its weights do not exist",
                "give the model its input shape (keras.Input(shape=...)) when you build it",
            )
        return model

    def _weights(self) -> list[tuple[str, Any]]:
        model = self._require_model()
        pairs = [(str(v.path), v) for v in model.weights]
        _check_unique([name for name, _ in pairs], "model weights")
        return pairs

    def _optimizer(self) -> Any:
        """The compiled optimizer, built (its state variables created) if it was not yet."""
        model = self._require_model()
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            return None
        if not getattr(optimizer, "built", True):
            optimizer.build(model.trainable_variables)
        return optimizer

    def _optimizer_state(self, optimizer: Any = None) -> list[tuple[str, Any]]:
        """(tensor name, variable) of the optimizer's state, learning rate left out."""
        optimizer = optimizer if optimizer is not None else self._optimizer()
        if optimizer is None:
            return []
        hyper = getattr(optimizer, "_learning_rate", None)
        pairs = [
            (OPT_PREFIX + str(v.name), v)
            for v in optimizer.variables
            if v is not hyper and str(v.name) != "learning_rate"
        ]
        _check_unique([name for name, _ in pairs], "optimizer variables")
        return pairs

    def _to_numpy(self, variable: Any) -> np.ndarray:
        return np.array(self.keras.ops.convert_to_numpy(variable), copy=True)

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        """Model weights by variable path (and optimizer state when asked), as numpy copies."""
        with _quiet():
            out = {name: self._to_numpy(v) for name, v in self._weights()}
            if with_opt_vars:
                out.update({name: self._to_numpy(v) for name, v in self._optimizer_state()})
        return out

    def set_tensor_dict(
        self, tensor_dict: Mapping[str, np.ndarray], with_opt_vars: bool = False
    ) -> None:
        """Load model weights (and optimizer state present in ``tensor_dict`` when asked)."""
        weights = self._weights()
        missing = [name for name, _ in weights if name not in tensor_dict]
        if missing:
            raise PlanError(
                "FX-MODEL-001",
                f"the model being loaded lacks {len(missing)} tensors of {type(self).__name__}, "
                f"e.g. {missing[0]!r}",
                "every node must run the same task runner code (src/); build the Keras model "
                "with fixed model and layer names so that weight names agree between processes",
            )
        for name, variable in weights:
            _assign(variable, tensor_dict[name], name)
        if with_opt_vars:
            state = [(n, v) for n, v in self._optimizer_state() if n in tensor_dict]
            misfit = [
                n
                for n, v in state
                if tuple(np.shape(tensor_dict[n])) != tuple(int(d) for d in v.shape)
            ]
            if misfit:
                self._reset_misfit_optimizer_state(misfit, log)
                return
            for name, variable in state:
                _assign(variable, tensor_dict[name], name)

    def reset_opt_vars(self) -> None:
        """Give the optimizer a fresh state: the variables of a newly built optimizer.

        A new optimizer is made from the current one's configuration and built on the model;
        its initial values (zero moments and iteration count for Adam, the initial accumulator
        for Adagrad...) are copied into the existing variables, so compiled train functions
        stay valid.
        """
        optimizer = self._optimizer()
        if optimizer is None:
            return
        with _quiet():
            fresh = type(optimizer).from_config(optimizer.get_config())
            fresh.build(self.model.trainable_variables)
            initial = {name: self._to_numpy(v) for name, v in self._optimizer_state(fresh)}
            for name, variable in self._optimizer_state(optimizer):
                value = initial.get(name)
                if value is None:
                    value = np.zeros(tuple(variable.shape), dtype=_np_dtype(variable))
                _assign(variable, value, name)

    # ------------------------------------------------------------------ tasks
    def _loader(self) -> Any:
        if self.data_loader is None:
            raise DataError(
                "FX-DATA-001",
                f"{type(self).__name__} has no data loader, so it cannot train or validate",
                "give the collaborator a data path in plan/data.yaml",
            )
        return self.data_loader

    def train_task(
        self,
        col_name: str,
        round_num: int,
        input_tensor_dict: Mapping[str, np.ndarray],
        epochs: int = 1,
        batch_size: int | None = None,
        metrics: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> TaskResult:
        """Load the global model, train ``epochs`` epochs, return metrics and trained weights."""
        global_opt = self.load_for_training(input_tensor_dict)
        self._loader()  # FX-DATA-001 when there is none
        wanted = _names(metrics)
        values: dict[str, float] = {}
        if self.get_train_data_size() > 0:
            for _ in range(max(1, int(epochs))):
                batches = self.batches("train", batch_size)
                values = metric_values(
                    self.train_(batches, metrics=wanted, batch_size=batch_size),
                    f"{type(self).__name__}.train_",
                )
        else:
            log.warning("%s has no training data; sending the received model unchanged", col_name)
            # weighed by 0 samples, these count in no average
            values = {name: 0.0 for name in (wanted or ["loss"])}
        return TaskResult(
            metrics=_select(values, wanted, "train"),
            tensors=self.get_tensor_dict(with_opt_vars=global_opt),
            data_size=self.get_train_data_size(),
        )

    def validate_task(
        self,
        col_name: str,
        round_num: int,
        input_tensor_dict: Mapping[str, np.ndarray],
        apply: str = "global",
        batch_size: int | None = None,
        metrics: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> TaskResult:
        """Evaluate the given model (global or locally trained) on the validation shard."""
        self.set_tensor_dict(input_tensor_dict, with_opt_vars=False)
        self._loader()  # FX-DATA-001 when there is none
        wanted = _names(metrics)
        if self.get_valid_data_size() > 0:
            batches = self.batches("valid", batch_size)
            values = metric_values(
                self.validate_(batches, metrics=wanted, batch_size=batch_size),
                f"{type(self).__name__}.validate_",
            )
        else:
            # weighed by 0 samples, these count in no average (NaN would be refused)
            values = {name: 0.0 for name in (wanted or ["loss"])}
        return TaskResult(
            metrics=_select(values, wanted, "validation"),
            tensors={},
            data_size=self.get_valid_data_size(),
        )

    # OpenFL 1.6 plans name the Keras tasks `train` and `validate`
    def train(self, *args: Any, **kwargs: Any) -> TaskResult:
        """Alias of :meth:`train_task` (the OpenFL 1.6 task name)."""
        return self.train_task(*args, **kwargs)

    def validate(self, *args: Any, **kwargs: Any) -> TaskResult:
        """Alias of :meth:`validate_task` (the OpenFL 1.6 task name)."""
        return self.validate_task(*args, **kwargs)

    # ------------------------------------------------------------------ user hooks
    def train_(
        self, batch_generator: Iterator[Any], metrics: list[str] | None = None, **kwargs: Any
    ) -> list[Metric] | Metric | Mapping[str, float]:
        """One epoch of ``model.fit`` over ``batch_generator``; returns every logged value."""
        model = self._require_model()
        with _quiet():
            history = model.fit(batch_generator, epochs=1, verbose=0)
        return {name: float(series[-1]) for name, series in history.history.items() if series}

    def validate_(
        self, batch_generator: Iterator[Any], metrics: list[str] | None = None, **kwargs: Any
    ) -> list[Metric] | Metric | Mapping[str, float]:
        """``model.evaluate`` over ``batch_generator``; returns every metric."""
        model = self._require_model()
        with _quiet():
            result = model.evaluate(batch_generator, verbose=0, return_dict=True)
        return dict(result)

    # ------------------------------------------------------------------ native format
    def save_native(self, filepath: str | os.PathLike[str], **kwargs: Any) -> None:
        """Write the model (architecture, weights, optimizer state) in the ``.keras`` format.

        Keras insists on the ``.keras`` suffix; any other name gets the same content through a
        temporary ``.keras`` file next to it.
        """
        model = self._require_model()
        self._optimizer()  # built, so the file always holds the whole optimizer state
        path = Path(filepath)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".keras":
            with _quiet():
                model.save(path)
            return
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".keras", dir=path.parent)
        os.close(fd)
        try:
            with _quiet():
                model.save(tmp_name)
            os.chmod(tmp_name, FILE_MODE)  # mkstemp made it private (0600)
            os.replace(tmp_name, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def load_native(self, filepath: str | os.PathLike[str], **kwargs: Any) -> None:
        """Load a ``.keras`` file written by :meth:`save_native` (or ``model.save``).

        The weights (and the optimizer state the file holds) go into the existing model, so
        weight names stay those of this runner; without a model, the file's model is loaded.
        """
        path = Path(filepath)
        if not path.is_file():
            raise DataError("FX-DATA-001", f"native model {path} does not exist", "check the path")
        with _keras_named(path) as keras_path, _quiet():
            if self.model is None:
                self.model = self.keras.models.load_model(keras_path)
                return
            self._optimizer()  # create optimizer variables so the file's state has a home
            self.model.load_weights(keras_path)


# ---------------------------------------------------------------------- helpers
def _check_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PlanError(
                NAMES_CODE,
                f"two {what} share the name {name!r}; tensors would overwrite each other",
                "give every layer (and the model) a unique, fixed name",
            )
        seen.add(name)


def _np_dtype(variable: Any) -> np.dtype:
    try:
        return np.dtype(str(variable.dtype))
    except TypeError:
        return np.dtype(np.float32)


def _assign(variable: Any, value: Any, name: str) -> None:
    array = np.asarray(value)
    expected = tuple(int(d) for d in variable.shape)
    if tuple(array.shape) != expected:
        raise PlanError(
            "FX-MODEL-002",
            f"tensor {name!r} has shape {array.shape}, the model expects {expected}",
            "every node must run the same task runner code (src/)",
        )
    variable.assign(array.astype(_np_dtype(variable), copy=False))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        yield


@contextlib.contextmanager
def _keras_named(path: Path) -> Iterator[Path]:
    """``path`` itself when it ends in ``.keras``, else a temporary ``.keras`` copy."""
    if path.suffix == ".keras":
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="fedrun-keras-"))
    try:
        copy = tmp / "model.keras"
        shutil.copyfile(path, copy)
        yield copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _names(metrics: Iterable[str] | str | None) -> list[str]:
    if metrics is None:
        return []
    if isinstance(metrics, str):
        return [metrics]
    return [str(m) for m in metrics]


def _select(values: Mapping[str, float], wanted: list[str], stage: str) -> dict[str, float]:
    """The requested metrics, reported under the names the plan used."""
    if not wanted:
        return dict(values)
    out: dict[str, float] = {}
    for name in wanted:
        for candidate in (name, *METRIC_ALIASES.get(name, ())):
            if candidate in values:
                out[name] = values[candidate]
                break
        else:
            available = ", ".join(sorted(values)) or "none"
            raise PlanError(
                METRIC_CODE,
                f"the plan asks for the {stage} metric {name!r}, which the Keras model does not "
                f"compute (it reports: {available})",
                "list only those names in the task's metrics, or add the metric to "
                "model.compile(metrics=[...]) in the task runner",
            )
    return out
