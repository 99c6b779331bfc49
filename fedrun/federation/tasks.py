"""What a task is and what running it returns: the contract between Collaborator and TaskRunner.

The collaborator never imports an ML framework. It talks to its task runner only through
:class:`TaskRunnerInterface`, and every task returns a :class:`TaskResult` of plain numpy arrays.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fedrun.errors import DataError

if TYPE_CHECKING:  # plan loading and the PKI commands never need numpy: keep `fx` quick
    import numpy as np

OPT_TREATMENTS = ("RESET", "CONTINUE_LOCAL", "CONTINUE_GLOBAL")

#: task runner methods that train, whatever their kwargs (OpenFL's names included)
TRAINING_FUNCTIONS = frozenset({"train_task", "train", "train_batches", "train_epoch"})


@dataclass
class TaskAssignment:
    """Answer to a task request."""

    round: int
    tasks: list[str]
    quit: bool = False
    final_validation: bool = False
    #: the collaborator has no work after these tasks: it may leave once they are acknowledged
    last: bool = False
    #: the run of the experiment handing the tasks out; results carry it back
    run: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """One entry of the plan's ``tasks`` section.

    Attributes
    ----------
    name:
        Task name, e.g. ``train`` or ``aggregated_model_validation``.
    function:
        Name of the TaskRunner method to call.
    kwargs:
        Keyword arguments passed to that method (``apply``, ``metrics``, ``epochs``...).
    aggregation_type:
        Optional ``{template, settings}`` naming the aggregation rule for the task's tensors.
    """

    name: str
    function: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    aggregation_type: Mapping[str, Any] | None = None

    @property
    def apply(self) -> str:
        """``global`` (validate the model received) or ``local`` (the locally trained one)."""
        return str(self.kwargs.get("apply", "global"))

    @property
    def is_validation(self) -> bool:
        """A validation task reads a model and returns metrics only; every other task trains.

        A task validates when its kwargs carry ``apply`` (``global`` or ``local``, as every
        validation task of OpenFL's plans does), when its function is a validation method by
        name (``validate_task``, ``validate``, a name starting with ``validat``), or, unless its
        function is a training method (``train_task``...), when its own name holds ``valid``
        (OpenFL weighs such a task by the validation data's size)."""
        if "apply" in self.kwargs:
            return True
        if self.function in TRAINING_FUNCTIONS:
            return False
        return self.function.startswith("validat") or "valid" in self.name

    @property
    def kind(self) -> str:
        """How fedrun treats the task, in words (``fx plan validate`` lists it)."""
        if not self.is_validation:
            if self.function in TRAINING_FUNCTIONS:
                return "trains"
            return "trains (its function is no validation method and it has no `apply`)"
        if self.uses_local_model:
            return "validates the locally trained model"
        if "apply" not in self.kwargs:
            return (
                "validates the global model (no `apply` in its kwargs; `apply: local` would "
                "validate the locally trained one)"
            )
        return "validates the global model"

    @property
    def validates_global_model(self) -> bool:
        """True for a validation of the model the collaborator received (not its own)."""
        return self.is_validation and not self.uses_local_model

    @property
    def uses_local_model(self) -> bool:
        """True when the task validates this collaborator's own trained weights."""
        return self.apply == "local"


@dataclass
class TaskResult:
    """What one task produced.

    Attributes
    ----------
    metrics:
        Metric name to value (e.g. ``{"accuracy": 0.97}``).
    tensors:
        Tensors to send to the aggregator (trained weights for a training task; empty otherwise).
    data_size:
        Number of samples the task used; it is the result's aggregation weight.
    """

    metrics: dict[str, float]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    data_size: int = 0


@runtime_checkable
class TaskRunnerInterface(Protocol):
    """What the collaborator needs from a task runner (PyTorch, Keras or user-written)."""

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]: ...

    def set_tensor_dict(
        self, tensor_dict: Mapping[str, np.ndarray], with_opt_vars: bool = False
    ) -> None: ...

    def set_optimizer_treatment(self, treatment: str) -> None: ...

    def get_train_data_size(self) -> int: ...

    def get_valid_data_size(self) -> int: ...


def brief(value: Any) -> str:
    """``repr(value)`` cut to 80 characters, for an error about a value the user's code
    returned."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def sample_count(value: Any, said_by: str) -> int:
    """``value`` as a number of samples (a result's weight in every average), or
    ``FX-DATA-011`` quoting ``said_by`` (what reported it, e.g. ``"X.get_train_data_size()
    returned"``) and the value."""
    number = -1
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            if isinstance(value, numbers.Real) and float(value).is_integer():
                number = int(float(value))
    if number < 0:
        raise DataError(
            "FX-DATA-011",
            f"{said_by} {brief(value)}: not a number of samples",
            "report how many samples were trained or validated on (a whole number, 0 or more): "
            "it weighs this collaborator's results in every average",
        )
    return number
