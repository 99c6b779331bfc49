"""The DataLoader base: a collaborator's local shard, split into training and validation sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fedrun.plan.schema import checked_batch_size


class DataLoader:
    """Holds ``X_train, y_train, X_valid, y_valid`` and serves shuffled batches.

    Subclasses load their shard in ``__init__`` and assign the four arrays. Batches are reshuffled
    every epoch; when ``random_seed`` is set the shuffles are reproducible.

    Parameters
    ----------
    batch_size:
        Default batch size for training and validation.
    random_seed:
        Seed for the per-epoch shuffles; ``None`` means unseeded.
    """

    def __init__(self, batch_size: int = 32, random_seed: int | None = None, **kwargs: Any) -> None:
        self.batch_size = checked_batch_size(batch_size, "data_loader.settings.batch_size")
        self.random_seed = random_seed
        self.settings = dict(kwargs)
        # unseeded loaders draw their seed from numpy's global state, so seeding the process
        # (fx simulate --seed) makes their shuffles reproducible too
        seed = random_seed if random_seed is not None else int(np.random.randint(0, 2**31 - 1))
        self._rng = np.random.default_rng(seed)
        self.X_train: Any = None
        self.y_train: Any = None
        self.X_valid: Any = None
        self.y_valid: Any = None

    def reseed(self, seed: int) -> None:
        """Restart the shuffle generator from ``seed`` (and the loader's own random_seed)."""
        self._rng = np.random.default_rng([seed, self.random_seed or 0])

    def get_feature_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(self.X_train[0].shape)

    def get_train_data_size(self) -> int:
        """Number of training samples (0 when the loader holds no data)."""
        return 0 if self.X_train is None else int(len(self.X_train))

    def get_valid_data_size(self) -> int:
        """Number of validation samples (0 when the loader holds no data)."""
        return 0 if self.X_valid is None else int(len(self.X_valid))

    def _batches(
        self, X: Any, y: Any, batch_size: int | None, shuffle: bool, num_batches: int | None = None
    ) -> Iterator[tuple[Any, Any]]:
        n = 0 if X is None else len(X)
        bs = (
            self.batch_size
            if batch_size is None
            else checked_batch_size(batch_size, "the task's batch_size (tasks.<task>.kwargs)")
        )
        order = self._rng.permutation(n) if shuffle else np.arange(n)
        for count, start in enumerate(range(0, n, bs)):
            if num_batches is not None and count >= num_batches:
                return
            idx = order[start : start + bs]
            yield X[idx], y[idx]

    def get_train_loader(
        self, batch_size: int | None = None, num_batches: int | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """A fresh shuffled pass over the training set."""
        return self._batches(self.X_train, self.y_train, batch_size, True, num_batches)

    def get_valid_loader(self, batch_size: int | None = None) -> Iterator[tuple[Any, Any]]:
        """One ordered pass over the validation set."""
        return self._batches(self.X_valid, self.y_valid, batch_size, False)

    def get_infer_loader(self) -> Iterator[tuple[Any, Any]]:
        """Alias of the validation loader, for OpenFL compatibility."""
        return self.get_valid_loader()


#: OpenFL's framework-specific names; the base class already serves numpy batches to both.
PyTorchDataLoader = DataLoader
KerasDataLoader = DataLoader
