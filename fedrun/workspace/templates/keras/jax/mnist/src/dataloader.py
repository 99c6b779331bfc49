"""MNIST shards for Keras: 28x28x1 float images in [0, 1] and one-hot labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrun.data.loader import KerasDataLoader
from fedrun.data.mnist import load_mnist
from fedrun.data.shards import parse_shard, shard_indices

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


def _images(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0).reshape((-1, *IMAGE_SHAPE))


def _one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[y.astype(np.int64)]


class KerasMNISTInMemory(KerasDataLoader):
    """Shard ``data_path`` (1-based) of ``collaborator_count``: samples s-1, s-1+count, ...

    The MNIST files are read from the workspace's ``data/`` folder or ``$FEDRUN_MNIST_DIR``, or
    downloaded and checked by SHA-256 (see ``fedrun.data.mnist``). The training shard comes from
    the 60,000 training images, the validation shard from the 10,000 test images.
    ``max_train_samples`` / ``max_valid_samples`` keep only the first N samples of each shard
    (quick trials). ``data_path`` None builds an empty loader: model initialisation needs no data.
    """

    def __init__(
        self,
        data_path: str | None = None,
        batch_size: int = 256,
        collaborator_count: int = 2,
        max_train_samples: int | None = None,
        max_valid_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.num_classes = NUM_CLASSES
        shard = parse_shard(data_path)
        if shard is None:
            self.X_train = np.zeros((0, *IMAGE_SHAPE), np.float32)
            self.y_train = np.zeros((0, NUM_CLASSES), np.float32)
            self.X_valid, self.y_valid = self.X_train, self.y_train
            return
        count = int(collaborator_count)
        x_train, y_train, x_test, y_test = load_mnist()
        train = shard_indices(len(x_train), shard, count)[:max_train_samples]
        valid = shard_indices(len(x_test), shard, count)[:max_valid_samples]
        self.X_train, self.y_train = _images(x_train[train]), _one_hot(y_train[train])
        self.X_valid, self.y_valid = _images(x_test[valid]), _one_hot(y_test[valid])

    def get_feature_shape(self) -> tuple[int, ...]:
        return IMAGE_SHAPE
