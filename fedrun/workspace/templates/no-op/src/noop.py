"""A task runner that trains nothing: it returns the model it receives (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedrun.data.loader import DataLoader
from fedrun.federation.tasks import TaskResult
from fedrun.runners.base import TaskRunner


class NoOpDataLoader(DataLoader):
    """No data; reports one sample so every collaborator weighs the same."""

    def __init__(self, data_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def get_train_data_size(self) -> int:
        return 1

    def get_valid_data_size(self) -> int:
        return 1


class NoOpTaskRunner(TaskRunner):
    """``tensor_count`` float32 tensors of ``model_bytes`` bytes in all; training returns its
    input unchanged and keeps nothing, so a collaborator holds about one model."""

    #: save_native writes a numpy archive (np.savez would add this suffix to any other name)
    NATIVE_SUFFIX = ".npz"
    NATIVE_SUFFIX_REQUIRED = True  # numpy.savez adds it anyway

    def __init__(
        self,
        data_loader: Any = None,
        model_bytes: int = 1 << 20,
        tensor_count: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_loader=data_loader, **kwargs)
        self.count = max(1, int(tensor_count))
        self.per = max(1, int(model_bytes) // 4 // self.count)
        self.tensors: dict[str, np.ndarray] | None = None  # made when first asked for

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        if self.tensors is None:
            rng = np.random.default_rng(0)
            self.tensors = {
                f"layer{i}": rng.standard_normal(self.per, dtype=np.float32)
                for i in range(self.count)
            }
        return dict(self.tensors)

    def set_tensor_dict(
        self, tensor_dict: Mapping[str, np.ndarray], with_opt_vars: bool = False
    ) -> None:
        self.tensors = {k: np.asarray(v) for k, v in tensor_dict.items()}

    def train_task(
        self,
        col_name: str,
        round_num: int,
        input_tensor_dict: Mapping[str, np.ndarray],
        **kwargs: Any,
    ) -> TaskResult:
        return TaskResult({"loss": 0.0}, dict(input_tensor_dict), self.get_train_data_size())

    def validate_task(
        self,
        col_name: str,
        round_num: int,
        input_tensor_dict: Mapping[str, np.ndarray],
        **kwargs: Any,
    ) -> TaskResult:
        return TaskResult({"accuracy": 1.0}, {}, self.get_valid_data_size())

    def save_native(self, filepath: Any, **kwargs: Any) -> None:
        arrays: dict[str, Any] = self.get_tensor_dict()
        np.savez(filepath, **arrays)
