"""PyTorchTaskRunner: train and validate a torch model as federated tasks.

Subclass it, build the network in ``__init__`` (as layers of the runner itself or as
``self.model``), give it an optimizer and ``self.loss_fn``, and optionally override
``train_`` / ``validate_``. The defaults cover classification: mean loss for training, top-1
accuracy for validation.

The optimizer is either set in ``__init__`` (``self.optimizer = ...``, as in OpenFL) or built by
overriding :meth:`PyTorchTaskRunner.build_optimizer`, which fedrun calls the first time the
optimizer is needed. The second form keeps commands that never train (``fx plan initialize``,
validation-only collaborators) from paying for it: constructing any ``torch.optim`` optimizer
imports ``torch._dynamo``, about a second of CPU.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrun.errors import PlanError
from fedrun.federation.tasks import TaskResult
from fedrun.runners.base import Metric, TaskRunner, metric_values
from fedrun.seeding import current_seed

log = logging.getLogger("fedrun.collaborator")

#: optimizer state tensors are named ``__opt_state_<param index>_<key>``
OPT_PREFIX = "__opt_state_"


def _to_numpy(tensor: torch.Tensor, name: str = "") -> np.ndarray:
    try:
        return tensor.detach().to("cpu").numpy().copy()
    except TypeError:  # bfloat16, float8...: numpy has no such type
        raise PlanError(
            "FX-MODEL-006",
            f"tensor {name!r} of the model is {str(tensor.dtype).removeprefix('torch.')}, which "
            "numpy (and so fedrun's model files, wire format and aggregation) cannot hold",
            "keep the model's parameters and buffers in float32, float16 or float64 (e.g. cast "
            "inside forward, or train under torch.autocast)",
        ) from None


class PyTorchTaskRunner(nn.Module, TaskRunner):
    """Task runner for PyTorch models (OpenFL's ``PyTorchTaskRunner`` method names).

    Parameters
    ----------
    device:
        ``cpu``, ``cuda`` or ``None`` (CUDA when available).
    loss_fn:
        Loss function; default ``torch.nn.functional.cross_entropy``.
    optimizer:
        Optimizer; usually set by the subclass after building layers, or built on first use by
        :meth:`build_optimizer`.
    data_loader:
        The collaborator's DataLoader (injected by fedrun).
    """

    #: file extension of save_native's output
    NATIVE_SUFFIX = ".pt"

    def __init__(
        self,
        device: str | None = None,
        loss_fn: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        data_loader: Any = None,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        TaskRunner.__init__(self, data_loader=data_loader, **kwargs)
        seed = current_seed()
        if seed is not None:  # before the subclass builds its layers: reproducible init
            torch.manual_seed(seed)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self._optimizer: torch.optim.Optimizer | None = optimizer
        threads = os.environ.get("FEDRUN_NUM_THREADS")
        if threads:
            torch.set_num_threads(max(1, int(threads)))

    # ------------------------------------------------------------------ optimizer
    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer: the one set on the runner, else :meth:`build_optimizer`'s, built once."""
        if self._optimizer is None:
            self._optimizer = self.build_optimizer()
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer | None) -> None:
        self._optimizer = value

    def build_optimizer(self) -> torch.optim.Optimizer | None:
        """Override to build the optimizer when it is first needed (default: none).

        Called after ``__init__`` has built the layers and moved them to the device, so
        ``self.parameters()`` are the ones to optimize.
        """
        return None

    # ------------------------------------------------------------------ model plumbing
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        model = self.__dict__.get("_modules", {}).get("model")
        if model is None:
            raise NotImplementedError(
                f"{type(self).__name__} must define forward() or set self.model"
            )
        return model(x)

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        """Model weights (and optimizer state when asked) as numpy copies."""
        out = {name: _to_numpy(value, name) for name, value in self.state_dict().items()}
        if with_opt_vars and self._optimizer is not None:  # one not built yet has no state
            out.update(self._optimizer_tensors())
        return out

    def set_tensor_dict(
        self, tensor_dict: Mapping[str, np.ndarray], with_opt_vars: bool = False
    ) -> None:
        """Load model weights (and optimizer state when present and asked)."""
        own = self.state_dict()
        missing = [k for k in own if k not in tensor_dict]
        if missing:
            raise PlanError(
                "FX-MODEL-001",
                f"the model being loaded lacks {len(missing)} tensors of {type(self).__name__}, "
                f"e.g. {missing[0]!r}",
                "every node must run the same task runner code (src/)",
            )
        state = {}
        for name, current in own.items():
            value = np.asarray(tensor_dict[name])
            if tuple(value.shape) != tuple(current.shape):
                raise PlanError(
                    "FX-MODEL-002",
                    f"tensor {name!r} has shape {value.shape}, the model expects {tuple(current.shape)}",
                    "every node must run the same task runner code (src/)",
                )
            state[name] = torch.from_numpy(np.array(value, copy=True)).to(current.dtype)
        self.load_state_dict(state, strict=True)
        self.to(self.device)
        if with_opt_vars:
            opt = {k: v for k, v in tensor_dict.items() if k.startswith(OPT_PREFIX)}
            if opt and self.optimizer is not None:
                self._load_optimizer_tensors(opt)

    def _optimizer_tensors(self) -> dict[str, np.ndarray]:
        assert self.optimizer is not None
        state = self.optimizer.state_dict()["state"]
        out: dict[str, np.ndarray] = {}
        for index, entries in state.items():
            for key, value in entries.items():
                name = f"{OPT_PREFIX}{index}_{key}"
                if isinstance(value, torch.Tensor):
                    out[name] = _to_numpy(value, name)
                elif isinstance(value, int | float | bool):
                    out[name] = np.asarray(value)
        return out

    def _load_optimizer_tensors(self, tensors: Mapping[str, np.ndarray]) -> None:
        assert self.optimizer is not None
        current = self.optimizer.state_dict()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        state: dict[int, dict[str, Any]] = defaultdict(dict)
        misfit: list[str] = []
        for name, value in tensors.items():
            index_text, _, key = name[len(OPT_PREFIX) :].partition("_")
            try:
                index = int(index_text)
            except ValueError:
                continue
            array = np.asarray(value)
            if index >= len(params) or (
                array.ndim and tuple(array.shape) != tuple(params[index].shape)
            ):
                misfit.append(name)
                continue
            state[index][key] = torch.from_numpy(np.array(array, copy=True))
        if misfit:
            self._reset_misfit_optimizer_state(misfit, log)
            return
        self.optimizer.load_state_dict(
            {"state": dict(state), "param_groups": current["param_groups"]}
        )

    def reset_opt_vars(self) -> None:
        """Forget all optimizer state (momentum, Adam moments, step counts)."""
        if self._optimizer is not None:  # one not built yet has no state
            self._optimizer.state = defaultdict(dict)

    # ------------------------------------------------------------------ tasks
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
        """Load the global model, train ``epochs`` epochs, return loss and trained weights."""
        global_opt = self.load_for_training(input_tensor_dict)
        anchor = getattr(self.optimizer, "set_old_weights", None)
        if callable(anchor):  # FedProx: the proximal term pulls towards this round's global model
            anchor(None)
        if self.optimizer is None:
            raise PlanError(
                "FX-MODEL-003",
                f"{type(self).__name__} has no optimizer",
                "set self.optimizer in the task runner's __init__ or override build_optimizer()",
            )
        self.train()
        metric: Any = Metric("loss", float("nan"))
        for _ in range(int(epochs)):
            metric = self.train_(self.batches("train", batch_size))
        tensors = self.get_tensor_dict(with_opt_vars=global_opt)
        return TaskResult(
            metrics=metric_values(metric, f"{type(self).__name__}.train_"),
            tensors=tensors,
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
        """Validate the given model (global or locally trained) on the validation shard."""
        self.set_tensor_dict(input_tensor_dict, with_opt_vars=False)
        self.eval()
        with torch.no_grad():
            metric = self.validate_(self.batches("valid", batch_size))
        return TaskResult(
            metrics=metric_values(metric, f"{type(self).__name__}.validate_"),
            tensors={},
            data_size=self.get_valid_data_size(),
        )

    # ------------------------------------------------------------------ user hooks
    def _batch(self, data: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(data)
        if not torch.is_floating_point(x):
            x = x.float()
        y = torch.as_tensor(target)
        if not torch.is_floating_point(y):
            y = y.long()
        return x.to(self.device), y.to(self.device)

    def train_(self, train_dataloader: Iterable[Any]) -> Metric:
        """One epoch of training; returns the mean loss."""
        assert self.optimizer is not None
        total, count = 0.0, 0
        for data, target in train_dataloader:
            x, y = self._batch(data, target)
            self.optimizer.zero_grad()
            loss = self.loss_fn(self(x), y)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        name = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        return Metric(name, total / max(1, count))

    def validate_(self, validation_dataloader: Iterable[Any]) -> Metric:
        """Top-1 accuracy over the validation set."""
        correct, count = 0, 0
        for data, target in validation_dataloader:
            x, y = self._batch(data, target)
            pred = self(x).argmax(dim=1)
            if y.ndim > 1:
                y = y.argmax(dim=1)
            correct += int((pred == y).sum())
            count += len(y)
        return Metric("accuracy", correct / max(1, count))

    # ------------------------------------------------------------------ native format
    def save_native(
        self,
        filepath: str | os.PathLike[str],
        model_state_dict_key: str = "model_state_dict",
        optimizer_state_dict_key: str = "optimizer_state_dict",
        **kwargs: Any,
    ) -> None:
        """``torch.save`` of the model's state dict, and the optimizer's when it has state (a
        fresh optimizer's empty state, e.g. of a model exported from a ``.pbuf``, would pass for
        the trained one)."""
        payload = {model_state_dict_key: self.state_dict()}
        if self._optimizer is not None and self._optimizer.state:
            payload[optimizer_state_dict_key] = self._optimizer.state_dict()
        torch.save(payload, filepath)

    def load_native(
        self,
        filepath: str | os.PathLike[str],
        model_state_dict_key: str = "model_state_dict",
        optimizer_state_dict_key: str = "optimizer_state_dict",
        **kwargs: Any,
    ) -> None:
        """Inverse of :meth:`save_native`; also accepts a bare state dict."""
        payload = torch.load(filepath, map_location=self.device, weights_only=True)
        state = payload.get(model_state_dict_key, payload) if isinstance(payload, dict) else payload
        self.load_state_dict(state)
        if (
            self.optimizer is not None
            and isinstance(payload, dict)
            and optimizer_state_dict_key in payload
        ):
            self.optimizer.load_state_dict(payload[optimizer_state_dict_key])
