"""A tiny PyTorch task runner on random data, for tests of the runner's optimizer handling."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedrun.data.loader import DataLoader
from fedrun.runners.torch import PyTorchTaskRunner


class Loader(DataLoader):
    """32 random samples of 4 features, 3 classes, batches of 8 (4 steps per epoch)."""

    def __init__(self) -> None:
        super().__init__(batch_size=8, random_seed=0)
        rng = np.random.default_rng(0)
        self.X_train = rng.standard_normal((32, 4)).astype(np.float32)
        self.y_train = rng.integers(0, 3, 32)
        self.X_valid, self.y_valid = self.X_train, self.y_train


class Tiny(PyTorchTaskRunner):
    """One linear layer; Adam(0.01) set in ``__init__``, the OpenFL way."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(device="cpu", data_loader=Loader(), **kwargs)
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
