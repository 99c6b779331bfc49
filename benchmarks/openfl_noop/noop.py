"""A no-op task runner for OpenFL 1.9 (copied into an OpenFL workspace's ``src/`` by
``benchmarks/round_overhead.py``): its model is ``tensor_count`` float32 tensors holding
``model_bytes`` in all, training and validation compute nothing, so a round costs only what the
framework spends moving and aggregating the model. Written against OpenFL's PyTorchTaskRunner API
(OpenFL's own ``no-op`` template has no model to move).
"""

import numpy as np
import torch
from openfl.federated import PyTorchDataLoader, PyTorchTaskRunner
from openfl.utilities import Metric


class NoOpDataLoader(PyTorchDataLoader):
    """One sample, so that every collaborator weighs the same."""

    def __init__(self, data_path=None, batch_size=1, **kwargs):
        super().__init__(batch_size, **kwargs)
        self.X_train = np.zeros((1, 1), np.float32)
        self.y_train = np.zeros((1,), np.int64)
        self.X_valid, self.y_valid = self.X_train, self.y_train

    def get_feature_shape(self):
        return [1]


class _Blob(torch.nn.Module):
    def __init__(self, model_bytes, tensor_count):
        super().__init__()
        count = max(1, int(tensor_count))
        per = max(1, int(model_bytes) // 4 // count)
        gen = torch.Generator().manual_seed(0)
        self.layers = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(per, generator=gen), requires_grad=False)
            for _ in range(count)
        )


class NoOpTaskRunner(PyTorchTaskRunner):
    """Returns the model it receives; reports loss 0 and accuracy 1."""

    def __init__(self, model_bytes=1 << 20, tensor_count=4, device="cpu", **kwargs):
        super().__init__(device=device, **kwargs)
        self.model = _Blob(model_bytes, tensor_count)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0)
        self.loss_fn = torch.nn.functional.mse_loss

    def forward(self, x):
        return x

    def train_(self, train_dataloader):
        return Metric(name="loss", value=np.array(0.0))

    def validate_(self, validation_dataloader):
        return Metric(name="accuracy", value=np.array(1.0))
