"""Shards of scikit-learn's bundled digits data set (works offline)."""

from __future__ import annotations

from typing import Any

from fedrun.data.digits import load_digits_shard
from fedrun.data.loader import PyTorchDataLoader
from fedrun.data.shards import parse_shard


class DigitsInMemory(PyTorchDataLoader):
    """Loads shard ``data_path`` (1-based) of ``collaborator_count`` shards into memory."""

    def __init__(
        self,
        data_path: str | None = None,
        batch_size: int = 32,
        collaborator_count: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        shard = parse_shard(data_path)
        self.X_train, self.y_train, self.X_valid, self.y_valid = load_digits_shard(
            shard, int(collaborator_count)
        )

    def get_feature_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)
