"""Server-side adaptive optimizers (FedOpt: Reddi et al. 2021, "Adaptive Federated Optimization").

Each round the collaborators' tensors are weighted-averaged (streaming, as the aggregator reads
them back from its spool when the round closes); the rule then forms, per tensor, the
pseudo-gradient ``g = global - average`` (``global`` is the model the round started from, given
to :meth:`begin_round`) and takes one optimizer step from ``global``:

* Adagrad: ``v += g**2``; ``x = global - lr * g / (sqrt(v) + eps)`` (no momentum, as in plain
  Adagrad; ``v`` starts at ``initial_accumulator_value``).
* Adam: ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g**2``; with Adam's bias correction
  ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)``;
  ``x = global - lr * m_hat / (sqrt(v_hat) + eps)``.
* Yogi: as Adam, except ``v = v - (1-b2) * g**2 * sign(v - g**2)`` (Zaheer et al. 2018), with the
  same bias correction.

``m`` starts at 0, ``v`` at ``initial_accumulator_value``; ``t`` counts the steps taken for that
tensor name (1 on its first step). The state (``m``, ``v``, ``t`` per name) lives in the rule
instance and persists across rounds; :meth:`AdaptiveAggregation.state_dict` exports it so it can
be saved with the aggregator's state.

Tensors that are not floating point, and names the global model does not hold, get the plain
aggregate of ``agg_func`` (weighted average by default). All arithmetic is in float64; results
are cast back to the collaborators' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedrun.aggregation.base import (
    Accumulator,
    AggregationFunction,
    LocalTensor,
    TensorStream,
    finish_like,
)
from fedrun.aggregation.weighted_average import StreamingAverageAccumulator, WeightedAverage
from fedrun.constants import OPTIMIZER_PREFIX


class _OptimizerState:
    __slots__ = ("m", "v", "step")

    def __init__(self, shape: tuple[int, ...], initial_v: float) -> None:
        self.m = np.zeros(shape, dtype=np.float64)
        self.v = np.full(shape, initial_v, dtype=np.float64)
        self.step = 0


class AdaptiveAggregation(AggregationFunction):
    """Base of the FedOpt rules: average the updates, then step a server optimizer.

    Parameters
    ----------
    agg_func:
        Rule that averages the collaborators' tensors; default :class:`WeightedAverage`
        (streaming). With a rule that needs all updates, this rule needs them too.
    params, model_interface:
        Accepted for OpenFL plan compatibility and ignored: the starting point of each step is
        the round's global model given to :meth:`begin_round`, so no copy of the initial
        weights is needed.
    learning_rate:
        Server learning rate (> 0).
    initial_accumulator_value:
        Starting value of the second-moment accumulator ``v`` (>= 0).
    epsilon:
        Added to ``sqrt(v)`` in the denominator (> 0).
    """

    needs_all_updates = False

    def __init__(
        self,
        agg_func: AggregationFunction | None = None,
        params: Any = None,
        model_interface: Any = None,
        learning_rate: float = 0.01,
        initial_accumulator_value: float = 0.0,
        epsilon: float = 1e-8,
    ) -> None:
        name = type(self).__name__
        if agg_func is None:
            agg_func = WeightedAverage()
        if not isinstance(agg_func, AggregationFunction):
            raise ValueError(
                f"{name} agg_func must be an aggregation rule, got {type(agg_func).__name__}"
            )
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"{name} learning_rate must be > 0, got {learning_rate!r}")
        if not (math.isfinite(initial_accumulator_value) and initial_accumulator_value >= 0):
            raise ValueError(
                f"{name} initial_accumulator_value must be >= 0, got {initial_accumulator_value!r}"
            )
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"{name} epsilon must be > 0, got {epsilon!r}")
        self.agg_func = agg_func
        self.params = params
        self.model_interface = model_interface
        self.learning_rate = float(learning_rate)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)
        if agg_func.needs_all_updates:
            self.needs_all_updates = True  # type: ignore[misc]
        self._state: dict[str, _OptimizerState] = {}

    def begin_round(self, round_num: int, global_model: Mapping[str, np.ndarray]) -> Accumulator:
        return _AdaptiveAccumulator(
            self, self.agg_func.begin_round(round_num, global_model), global_model
        )

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Not available: FedOpt needs the round's global model, which only ``begin_round`` gets."""
        raise NotImplementedError(
            f"{type(self).__name__} needs the round's global model; use begin_round()"
        )

    # -- optimizer ---------------------------------------------------------------------------

    def step(self, name: str, current: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """Take one optimizer step for tensor ``name`` from ``current`` along ``gradient``.

        Both arrays are float64 of the same shape; the state of ``name`` is created on its
        first step and recreated when the tensor's shape changes.
        """
        state = self._state.get(name)
        if state is None or state.m.shape != gradient.shape:
            state = self._state[name] = _OptimizerState(
                gradient.shape, self.initial_accumulator_value
            )
        state.step += 1
        return current - self.learning_rate * self._direction(state, gradient)

    def _direction(self, state: _OptimizerState, gradient: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """A copy of the optimizer state: ``{name: {"m": ..., "v": ..., "step": 0-d int64}}``."""
        return {
            name: {"m": s.m.copy(), "v": s.v.copy(), "step": np.array(s.step, dtype=np.int64)}
            for name, s in self._state.items()
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Replace the optimizer state with one from :meth:`state_dict`."""
        restored: dict[str, _OptimizerState] = {}
        for name, entry in state.items():
            m = np.array(entry["m"], dtype=np.float64)
            v = np.array(entry["v"], dtype=np.float64)
            step = int(entry["step"])
            if (
                m.shape != v.shape
                or step < 0
                or not (np.isfinite(m).all() and np.isfinite(v).all())
            ):
                raise ValueError(f"invalid optimizer state for tensor {name!r}")
            item = _OptimizerState(m.shape, 0.0)
            item.m, item.v, item.step = m, v, step
            restored[name] = item
        self._state = restored


class _AdaptiveAccumulator(Accumulator):
    """Averages through the inner accumulator; steps the optimizer once, at the first result().

    Keeps a reference to ``global_model``, which must not change before :meth:`result`. Later
    calls to ``result`` return the same tensors; ``add`` after it raises ``RuntimeError``.
    """

    def __init__(
        self,
        rule: AdaptiveAggregation,
        inner: Accumulator,
        global_model: Mapping[str, np.ndarray],
    ) -> None:
        self.rule = rule
        self.inner = inner
        self.global_model = global_model
        self._result: dict[str, np.ndarray] | None = None

    def add(self, name: str, tensor: np.ndarray, weight: float, origin: str) -> None:
        if self._result is not None:
            raise RuntimeError("this round's FedOpt step was already taken; open a new round")
        reference = self.global_model.get(name)
        if reference is not None and np.shape(reference) != np.shape(tensor):
            raise ValueError(
                f"tensor {name!r} from {origin!r} has shape {np.shape(tensor)}, but the global "
                f"model's {name!r} has shape {np.shape(reference)}"
            )
        self.inner.add(name, tensor, weight, origin)

    def open_stream(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, weight: float, origin: str
    ) -> TensorStream | None:
        if self._result is not None:
            return None
        reference = self.global_model.get(name)
        if reference is not None and np.shape(reference) != tuple(shape):
            return None  # refused with the full message by add()
        return self.inner.open_stream(name, shape, dtype, weight, origin)

    def result(self) -> dict[str, np.ndarray]:
        if self._result is None:
            self._result = self._step()
        return dict(self._result)

    def _step(self) -> dict[str, np.ndarray]:
        if isinstance(self.inner, StreamingAverageAccumulator):
            averages = self.inner.exact_result()
            dtypes = self.inner.dtypes()
        else:
            plain = self.inner.result()
            averages = {name: np.asarray(value) for name, value in plain.items()}
            dtypes = {name: value.dtype for name, value in averages.items()}
        out: dict[str, np.ndarray] = {}
        for name, average in averages.items():
            dtype = dtypes[name]
            reference = self.global_model.get(name)
            if reference is None or dtype.kind != "f" or name.startswith(OPTIMIZER_PREFIX):
                # only model weights are the server optimizer's parameters (as in OpenFL):
                # federated optimizer state (CONTINUE_GLOBAL) is averaged, never stepped
                out[name] = finish_like(average, dtype)
                continue
            current = np.array(reference, dtype=np.float64)
            gradient = current - np.asarray(average, dtype=np.float64)
            out[name] = finish_like(self.rule.step(name, current, gradient), dtype)
        return out


class AdagradAdaptiveAggregation(AdaptiveAggregation):
    """FedAdagrad: ``v += g**2``; ``x = global - lr * g / (sqrt(v) + eps)``.

    Parameters as :class:`AdaptiveAggregation`; defaults ``learning_rate=0.01``,
    ``initial_accumulator_value=0.1``, ``epsilon=1e-10``. Streaming.
    """

    def __init__(
        self,
        agg_func: AggregationFunction | None = None,
        params: Any = None,
        model_interface: Any = None,
        learning_rate: float = 0.01,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-10,
    ) -> None:
        super().__init__(
            agg_func, params, model_interface, learning_rate, initial_accumulator_value, epsilon
        )

    def _direction(self, state: _OptimizerState, gradient: np.ndarray) -> np.ndarray:
        state.v += gradient * gradient
        return gradient / (np.sqrt(state.v) + self.epsilon)


class AdamAdaptiveAggregation(AdaptiveAggregation):
    """FedAdam: Adam with bias correction on the pseudo-gradient.

    Parameters as :class:`AdaptiveAggregation`, plus ``betas=(beta1, beta2)``, each in [0, 1).
    Defaults ``learning_rate=0.01``, ``betas=(0.9, 0.999)``, ``initial_accumulator_value=0.0``,
    ``epsilon=1e-8``. Streaming.
    """

    def __init__(
        self,
        agg_func: AggregationFunction | None = None,
        params: Any = None,
        model_interface: Any = None,
        learning_rate: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        initial_accumulator_value: float = 0.0,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__(
            agg_func, params, model_interface, learning_rate, initial_accumulator_value, epsilon
        )
        try:
            beta1, beta2 = (float(beta) for beta in betas)
        except (TypeError, ValueError):
            raise ValueError(
                f"{type(self).__name__} betas must be two numbers, got {betas!r}"
            ) from None
        for beta in (beta1, beta2):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{type(self).__name__} betas must lie in [0, 1), got {betas!r}")
        self.betas = (beta1, beta2)

    def _second_moment(self, state: _OptimizerState, squared: np.ndarray) -> None:
        beta2 = self.betas[1]
        state.v *= beta2
        state.v += (1.0 - beta2) * squared

    def _direction(self, state: _OptimizerState, gradient: np.ndarray) -> np.ndarray:
        beta1, beta2 = self.betas
        state.m *= beta1
        state.m += (1.0 - beta1) * gradient
        self._second_moment(state, gradient * gradient)
        m_hat = state.m / (1.0 - beta1**state.step)
        v_hat = state.v / (1.0 - beta2**state.step)
        return m_hat / (np.sqrt(v_hat) + self.epsilon)


class YogiAdaptiveAggregation(AdamAdaptiveAggregation):
    """FedYogi: Adam whose second moment moves by ``-(1-b2) * g**2 * sign(v - g**2)``.

    Same parameters and defaults as :class:`AdamAdaptiveAggregation`, same bias correction.
    ``v`` never becomes negative. Streaming.
    """

    def _second_moment(self, state: _OptimizerState, squared: np.ndarray) -> None:
        state.v -= (1.0 - self.betas[1]) * squared * np.sign(state.v - squared)
