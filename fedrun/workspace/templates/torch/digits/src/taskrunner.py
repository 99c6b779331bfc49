"""A small CNN for 8x8 digit images."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedrun.runners.torch import PyTorchTaskRunner


class DigitsCNN(PyTorchTaskRunner):
    """conv(1->16) -> pool -> conv(16->32) -> pool -> fc(128->64) -> fc(64->10), Adam 1e-3."""

    def __init__(self, device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(device=device, **kwargs)
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)
        self.to(self.device)
        self.loss_fn = F.cross_entropy

    def build_optimizer(self) -> torch.optim.Optimizer:
        # built when first needed, not in __init__: `fx plan initialize` never trains, and any
        # torch optimizer imports torch._dynamo (about a second)
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
