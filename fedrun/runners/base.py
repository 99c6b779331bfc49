"""The framework-neutral TaskRunner base class that users' runners build on."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from fedrun.errors import PlanError
from fedrun.federation.tasks import OPT_TREATMENTS, TaskResult, brief, sample_count


class Metric(NamedTuple):
    """A named metric value, as returned by ``train_`` and ``validate_``."""

    name: str
    value: Any


class TaskRunner:
    """Base class of every task runner: holds the data loader and the optimizer treatment.

    Subclasses provide ``get_tensor_dict`` / ``set_tensor_dict`` for their framework and the task
    methods named in the plan (``train_task`` and ``validate_task`` by default). A task method is
    called as ``method(col_name, round_num, input_tensor_dict, **kwargs)`` and returns a
    :class:`~fedrun.federation.tasks.TaskResult`.
    """

    #: Task methods every runner offers; the plan validator accepts these without importing
    #: the runner's framework.
    TASK_FUNCTIONS: tuple[str, ...] = ("train_task", "validate_task")

    def __init__(self, data_loader: Any = None, **kwargs: Any) -> None:
        self.data_loader = data_loader
        self.opt_treatment = "RESET"
        self.settings = dict(kwargs)

    # ------------------------------------------------------------------ OpenFL compatibility
    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (OpenFL sets it on every runner), from the data loader
        unless a subclass set it; known even in model-initialisation mode (no data)."""
        shape = self.__dict__.get("_feature_shape")
        if shape is not None:
            return tuple(shape)
        if self.data_loader is None or not hasattr(self.data_loader, "get_feature_shape"):
            raise PlanError(
                "FX-PLAN-031",
                f"{type(self).__name__}.feature_shape: its data loader "
                f"({type(self.data_loader).__name__}) has no get_feature_shape()",
                "give the data loader a get_feature_shape() method (the shape of one sample), "
                "or set self.feature_shape in the task runner",
            )
        return tuple(int(d) for d in self.data_loader.get_feature_shape())

    @feature_shape.setter
    def feature_shape(self, value: Any) -> None:
        self._feature_shape = tuple(int(d) for d in value)

    def initialize_tensorkeys_for_functions(self, with_opt_vars: bool = False) -> None:
        """Kept for OpenFL task runners that call it; fedrun needs no tensor-key bookkeeping."""

    def set_optimizer_treatment(self, treatment: str) -> None:
        """Set RESET, CONTINUE_LOCAL or CONTINUE_GLOBAL (see the plan's ``opt_treatment``)."""
        if treatment not in OPT_TREATMENTS:
            raise PlanError(
                "FX-PLAN-012",
                f"collaborator.settings.opt_treatment is {treatment!r}",
                f"use one of {', '.join(OPT_TREATMENTS)}",
            )
        self.opt_treatment = treatment

    def load_for_training(self, input_tensor_dict: Mapping[str, np.ndarray]) -> bool:
        """Load the round's global model as ``opt_treatment`` says; True when optimizer state
        is federated (CONTINUE_GLOBAL: loaded now and sent back after training)."""
        global_opt = self.opt_treatment == "CONTINUE_GLOBAL"
        self.set_tensor_dict(input_tensor_dict, with_opt_vars=global_opt)
        if self.opt_treatment == "RESET":
            self.reset_opt_vars()
        return global_opt

    def reset_opt_vars(self) -> None:
        """Give the optimizer a fresh state (RESET); runners override this."""

    def _reset_misfit_optimizer_state(self, misfit: list[str], log: logging.Logger) -> None:
        """The global optimizer state came from other optimizers (another optimizer class or
        model code on some node): loading it would fail at the first step, so this round
        starts from a fresh optimizer state, with a warning on the runner's ``log``."""
        log.warning(
            "the global optimizer state does not fit this optimizer (%d tensors, e.g. %r): "
            "this round starts from a fresh optimizer state",
            len(misfit),
            misfit[0],
        )
        self.reset_opt_vars()

    def get_train_data_size(self) -> int:
        """Number of training samples in this collaborator's shard."""
        if not self.data_loader:
            return 0
        return sample_count(
            self.data_loader.get_train_data_size(),
            f"{type(self.data_loader).__name__}.get_train_data_size() returned",
        )

    def get_valid_data_size(self) -> int:
        """Number of validation samples in this collaborator's shard."""
        if not self.data_loader:
            return 0
        return sample_count(
            self.data_loader.get_valid_data_size(),
            f"{type(self.data_loader).__name__}.get_valid_data_size() returned",
        )

    def batches(self, stage: str, batch_size: int | None) -> Iterator[Any]:
        """The data loader's training (``stage`` "train") or validation ("valid") batches.
        ``batch_size`` is passed when the loader's method takes it: OpenFL's runners call
        ``get_train_loader()`` without it, so loaders written for OpenFL often do not."""
        method = getattr(self.data_loader, f"get_{stage}_loader")
        if batch_size is not None and _accepts(method, "batch_size"):
            return method(batch_size=batch_size)
        return method()

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def set_tensor_dict(
        self, tensor_dict: Mapping[str, np.ndarray], with_opt_vars: bool = False
    ) -> None:
        raise NotImplementedError

    def train_task(
        self,
        col_name: str,
        round_num: int,
        input_tensor_dict: Mapping[str, np.ndarray],
        **kwargs: Any,
    ) -> TaskResult:
        raise NotImplementedError

    def validate_task(
        self,
        col_name: str,
        round_num: int,
        input_tensor_dict: Mapping[str, np.ndarray],
        **kwargs: Any,
    ) -> TaskResult:
        raise NotImplementedError

    def save_native(self, filepath: str | os.PathLike[str], **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement save_native")

    def load_native(self, filepath: str | os.PathLike[str], **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement load_native")


def _accepts(method: Any, keyword: str) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin or C method: try the keyword
        return True
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def metric_values(result: Any, where: str) -> dict[str, float]:
    """What a ``train_``/``validate_`` hook returned (a :class:`Metric`, a mapping of name to
    value, or a list of Metric or ``(name, value)`` pairs) as ``{name: float}``; anything else
    is ``FX-MODEL-005`` naming the hook (``where``) and what it returned."""

    def wrong(what: str) -> PlanError:
        return PlanError(
            "FX-MODEL-005",
            f"{where} returned {what}",
            "return fedrun.Metric(name, value) (a name and one number), a dict of name -> "
            "number, or a list of Metric; e.g. `return Metric('accuracy', correct / total)`",
        )

    def number(name: Any, value: Any) -> tuple[str, float]:
        if not isinstance(name, str) or not name:
            raise wrong(f"a metric named {brief(name)} (a name must be a text)")
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise wrong(f"metric {brief(name)} = {brief(value)}, not a number") from None
        if array.size != 1:
            raise wrong(
                f"metric {brief(name)} with {array.size} values (shape {array.shape}); a "
                "metric is one number"
            )
        return name, float(array.reshape(-1)[0])

    if isinstance(result, Metric):
        return dict([number(result.name, result.value)])
    if isinstance(result, Mapping):
        return dict(number(k, v) for k, v in result.items())
    if isinstance(result, list | tuple) and result:
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str):
            return dict([number(result[0], result[1])])
        pairs = []
        for item in result:
            if not isinstance(item, tuple) or len(item) != 2:
                raise wrong(f"a list holding {type(item).__name__}")
            pairs.append(number(item[0], item[1]))
        return dict(pairs)
    if result is None:
        raise wrong("nothing (None)")
    raise wrong(f"a {type(result).__name__} ({brief(result)})")
