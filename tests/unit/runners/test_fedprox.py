"""FedProx optimizers: the proximal term, anchored at the round's global model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrun.runners.fedprox import FedProxAdam, FedProxOptimizer


def _param(values: list[float]) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_one_step_matches_the_formula() -> None:
    p = _param([1.0, -2.0])
    opt = FedProxOptimizer([p], lr=0.1, mu=0.5)
    opt.set_old_weights([torch.tensor([0.0, 0.0], dtype=torch.float64)])
    p.grad = torch.tensor([0.2, 0.4], dtype=torch.float64)
    opt.step()
    # w1 = w0 - lr * (g + mu * (w0 - w_old))
    expected = np.array([1.0, -2.0]) - 0.1 * (np.array([0.2, 0.4]) + 0.5 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(p.detach().numpy(), expected)


def test_mu_zero_is_plain_sgd_and_mu_pulls_towards_the_anchor() -> None:
    torch.manual_seed(0)
    target = torch.randn(50, dtype=torch.float64)

    def train(mu: float) -> float:
        p = _param([0.0] * 50)
        opt = FedProxOptimizer([p], lr=0.05, mu=mu)
        opt.set_old_weights(None)  # anchored at zero, like a round's global model
        for _ in range(200):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
        return float(p.detach().norm())

    plain, prox = train(0.0), train(2.0)
    assert plain == pytest.approx(float(target.norm()), rel=1e-3)
    # the minimiser of |w - t|^2 + mu/2 |w - anchor|^2 with anchor 0 is t / (1 + mu/2)
    assert prox == pytest.approx(plain / (1 + 2.0 / 2), rel=1e-3)


def test_momentum_and_adam_variants_run() -> None:
    p = _param([1.0, 2.0])
    FedProxOptimizer([p], lr=0.1, mu=0.1, momentum=0.9, nesterov=True).set_old_weights(None)
    adam = FedProxAdam([p], mu=0.1, lr=0.01)
    adam.set_old_weights(None)
    p.grad = torch.ones(2, dtype=torch.float64)
    adam.step()
    assert torch.all(p.detach() < torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        FedProxOptimizer([p], lr=0.1, mu=-1)


@pytest.mark.parametrize("make", [FedProxOptimizer, FedProxAdam])
def test_a_step_with_a_closure_keeps_the_proximal_term(make) -> None:
    # Prepare: one optimizer stepped with a closure, one with gradients computed beforehand
    def run(with_closure: bool) -> torch.Tensor:
        p = _param([2.0])
        opt = make([p], lr=0.1, mu=1.0)
        opt.set_old_weights([torch.tensor([0.0], dtype=torch.float64)])
        p.data.fill_(3.0)  # one unit further from the anchor than the loss's own pull

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = p.sum() * 0.1  # gradient 0.1
            loss.backward()
            return loss

        if with_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
        return p.detach().clone()

    # Assert: the same step either way (the closure must not recompute the gradients after
    # the proximal term was added)
    assert torch.equal(run(True), run(False))


def test_each_param_group_pulls_with_its_own_mu() -> None:
    a, b = _param([1.0]), _param([1.0])
    opt = FedProxOptimizer([{"params": [a], "mu": 0.0}, {"params": [b], "mu": 2.0}], lr=0.1)
    opt.set_old_weights([torch.zeros(1, dtype=torch.float64)] * 2)
    a.grad = torch.zeros(1, dtype=torch.float64)
    b.grad = torch.zeros(1, dtype=torch.float64)

    opt.step()

    assert float(a.detach()) == pytest.approx(1.0)  # mu 0: no pull
    assert float(b.detach()) == pytest.approx(1.0 - 0.1 * 2.0 * 1.0)


def test_train_task_anchors_at_the_received_model() -> None:
    from fedrun.data.loader import DataLoader
    from fedrun.runners.torch import PyTorchTaskRunner

    class Loader(DataLoader):
        def __init__(self) -> None:
            super().__init__(batch_size=4, random_seed=0)
            self.X_train = np.ones((8, 2), np.float32)
            self.y_train = np.zeros(8, np.int64)
            self.X_valid, self.y_valid = self.X_train, self.y_train

    class Runner(PyTorchTaskRunner):
        def __init__(self) -> None:
            super().__init__(device="cpu", data_loader=Loader())
            self.fc = torch.nn.Linear(2, 2)
            self.optimizer = FedProxOptimizer(self.parameters(), lr=0.1, mu=1.0)

        def forward(self, x):
            return self.fc(x)

    runner = Runner()
    received = {k: np.full_like(v, 0.25) for k, v in runner.get_tensor_dict().items()}
    runner.train_task("c", 0, received, epochs=1)
    anchor = runner.optimizer._anchor
    assert all(torch.all(a == 0.25) for a in anchor)
