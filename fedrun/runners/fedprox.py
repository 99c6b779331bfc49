"""FedProx optimizers for PyTorch (Li et al., "Federated Optimization in Heterogeneous Networks").

Each adds the proximal term ``mu * (w - w_global)`` to the gradient, pulling local training
towards the round's global model. ``PyTorchTaskRunner.train_task`` anchors the term at the model
it just received, so users only choose the optimizer and ``mu`` in their task runner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import Optimizer


class _Proximal:
    """Keeps the anchor weights, one tensor per parameter in param-group order."""

    param_groups: list[dict[str, Any]]

    def set_old_weights(self, old_weights: Sequence[torch.Tensor] | None = None) -> None:
        """Anchor the proximal term; ``None`` anchors at the current parameters."""
        params = [p for group in self.param_groups for p in group["params"]]
        if old_weights is None:
            old_weights = [p.detach() for p in params]
        if len(old_weights) != len(params):
            raise ValueError(
                f"set_old_weights got {len(old_weights)} tensors for {len(params)} parameters"
            )
        self._anchor = [
            w.detach().clone().to(p.device) for w, p in zip(old_weights, params, strict=True)
        ]

    def _proximal_grads(self) -> None:
        """Add ``mu * (w - w_global)`` to every gradient, with each param group's own ``mu``."""
        anchor = getattr(self, "_anchor", None)
        if anchor is None:
            return
        weights = iter(anchor)
        for group in self.param_groups:
            mu = float(group.get("mu", getattr(self, "mu", 0.0)))
            for p in group["params"]:
                w = next(weights)
                if mu and p.grad is not None:
                    p.grad.add_(p.detach() - w, alpha=mu)


class FedProxOptimizer(_Proximal, Optimizer):
    """SGD (with optional momentum, dampening, weight decay, Nesterov) plus the proximal term."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        mu: float = 0.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if lr <= 0 or mu < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("FedProxOptimizer needs lr > 0 and mu, momentum, weight_decay >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening 0")
        super().__init__(
            params,
            dict(
                lr=lr,
                mu=mu,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
            ),
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._proximal_grads()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"]:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if group["momentum"]:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d_p, alpha=1 - group["dampening"])
                    d_p = d_p.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(d_p, alpha=-group["lr"])
        return loss


class FedProxAdam(_Proximal, torch.optim.Adam):
    """Adam plus the proximal term (``mu`` default 0: plain Adam)."""

    def __init__(self, params: Iterable[Any], mu: float = 0.0, **kwargs: Any) -> None:
        if mu < 0:
            raise ValueError("FedProxAdam needs mu >= 0")
        super().__init__(params, **kwargs)
        self.mu = float(mu)
        for group in self.param_groups:  # a group may set its own mu
            group.setdefault("mu", self.mu)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102
        loss = None
        if closure is not None:
            # the closure computes the gradients: the proximal term goes on top of those, so
            # Adam's step must not run the closure again (it would recompute them without it)
            with torch.enable_grad():
                loss = closure()
        self._proximal_grads()
        super().step()
        return loss
