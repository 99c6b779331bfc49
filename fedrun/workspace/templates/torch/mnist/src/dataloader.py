"""MNIST shards, read from the standard IDX files (verified by SHA-256)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrun.data.loader import PyTorchDataLoader
from fedrun.data.mnist import load_mnist
from fedrun.data.shards import parse_shard, shard_indices


class PyTorchMNISTInMemory(PyTorchDataLoader):
    """Shard ``data_path`` (1-based) of ``collaborator_count``: samples s-1, s-1+count, ...

    Pixels stay in 0..255 as in OpenFL's template, so results compare one to one.
    ``data_path`` None builds an empty loader (model initialisation needs no data).
    """

    def __init__(
        self,
        data_path: str | None = None,
        batch_size: int = 64,
        collaborator_count: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        shard = parse_shard(data_path)
        if shard is None:
            self.X_train = np.zeros((0, 1, 28, 28), np.float32)
            self.y_train = np.zeros((0,), np.int64)
            self.X_valid, self.y_valid = self.X_train, self.y_train
            return
        count = int(collaborator_count)
        x_train, y_train, x_test, y_test = load_mnist()
        train = shard_indices(len(x_train), shard, count)
        valid = shard_indices(len(x_test), shard, count)
        self.X_train = x_train[train].astype(np.float32)[:, None, :, :]
        self.y_train = y_train[train].astype(np.int64)
        self.X_valid = x_test[valid].astype(np.float32)[:, None, :, :]
        self.y_valid = y_test[valid].astype(np.int64)

    def get_feature_shape(self) -> tuple[int, ...]:
        return (1, 28, 28)
