"""OpenFL's TaskRunner attributes that ported PyTorch runners use: ``feature_shape`` (set on
every OpenFL runner) and ``initialize_tensorkeys_for_functions()`` (called in their __init__)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_torch import Loader

from fedrun.errors import PlanError
from fedrun.runners.torch import PyTorchTaskRunner


class OpenFLStyle(PyTorchTaskRunner):
    """Builds its layer from ``feature_shape`` and calls the OpenFL bookkeeping hook."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(device="cpu", **kwargs)
        self.fc = torch.nn.Linear(self.feature_shape[0], 3)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        self.initialize_tensorkeys_for_functions()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_feature_shape_comes_from_the_data_loader_and_can_be_set():
    runner = OpenFLStyle(data_loader=Loader())

    assert runner.feature_shape == (4,)
    assert runner.get_tensor_dict()["fc.weight"].shape == (3, 4)
    runner.feature_shape = [7]  # OpenFL runners may assign it
    assert runner.feature_shape == (7,)
    assert "feature_shape" not in dict(runner.named_parameters())


def test_feature_shape_without_a_loader_that_knows_it_names_the_fix():
    class Shapeless:
        def get_train_data_size(self) -> int:
            return 0

    with pytest.raises(PlanError) as caught:
        OpenFLStyle(data_loader=Shapeless())

    assert caught.value.code == "FX-PLAN-031"
    assert "get_feature_shape()" in str(caught.value)
