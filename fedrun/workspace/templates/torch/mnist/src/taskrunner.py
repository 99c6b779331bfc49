"""OpenFL's MNIST CNN: conv 1->20 k2, pool, conv 20->50 k5, pool, fc 800->500->10, Adam 1e-4."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedrun.runners.torch import PyTorchTaskRunner


class DigitRecognizerCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=2, stride=1)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5, stride=1)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class TemplateTaskRunner(PyTorchTaskRunner):
    """The seed's TemplateTaskRunner: the CNN above, Adam(lr=1e-4), cross-entropy."""

    def __init__(self, device: str = "cpu", **kwargs: Any) -> None:
        super().__init__(device=device, **kwargs)
        # channels-last weights: oneDNN's CPU convolutions then skip a layout conversion on every
        # call (validation ~40 % faster on one thread, training unchanged, same weights and
        # results); tensors still go on the wire in C order. torch's type stubs for Module.to
        # lack the memory_format it documents and accepts, hence the ignore.
        self.model = DigitRecognizerCNN().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.to(self.device)
        self.loss_fn = F.cross_entropy

    def build_optimizer(self) -> torch.optim.Optimizer:
        # built when first needed, not in __init__: `fx plan initialize` never trains, and any
        # torch optimizer imports torch._dynamo (about a second)
        return torch.optim.Adam(self.model.parameters(), lr=1e-4)
