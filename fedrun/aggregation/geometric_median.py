"""Weighted geometric median by Weiszfeld's algorithm (robust aggregation, Pillutla et al. 2022).

The geometric median of points ``p_i`` with weights ``a_i`` minimizes ``sum_i a_i ||z - p_i||``.
Weiszfeld's iteration starts from the weighted mean and repeatedly re-weights every point by
``a_i / max(eps, ||z - p_i||)``; ``eps`` keeps the step defined when ``z`` lands on a point. It
stops after ``maxiter`` iterations or when the objective improves by less than ``ftol`` relative.
The median is taken per tensor name, as OpenFL does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedrun.aggregation.base import AggregationFunction, LocalTensor, normalized_weights


def _combine(points: Sequence[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
    total = np.zeros_like(points[0])
    for point, coefficient in zip(points, coefficients, strict=True):
        if coefficient != 0.0:
            total += coefficient * point
    return total


def _distances(center: np.ndarray, points: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([float(np.linalg.norm((point - center).ravel())) for point in points])


def geometric_median(
    points: Sequence[np.ndarray],
    weights: Sequence[float],
    maxiter: int = 4,
    eps: float = 1e-5,
    ftol: float = 1e-6,
) -> np.ndarray:
    """Weighted geometric median of same-shape arrays, in float64.

    Parameters
    ----------
    points:
        The arrays (one per collaborator).
    weights:
        Their non-negative weights; normalized here (all zero means equal weights).
    maxiter, eps, ftol:
        Weiszfeld iterations at most, smallest distance used in the re-weighting, and the
        relative objective improvement below which the iteration stops.
    """
    if not points:
        raise ValueError("cannot take the geometric median of no points")
    alphas = normalized_weights(weights)
    floats = [np.asarray(point, dtype=np.float64) for point in points]
    median = _combine(floats, alphas)
    objective = float(np.dot(alphas, _distances(median, floats)))
    for _ in range(maxiter):
        previous = objective
        betas = alphas / np.maximum(eps, _distances(median, floats))
        betas = betas / betas.sum()
        median = _combine(floats, betas)
        objective = float(np.dot(alphas, _distances(median, floats)))
        if abs(previous - objective) < ftol * objective:
            break
    return median


class GeometricMedian(AggregationFunction):
    """Weighted geometric median per tensor name (Weiszfeld), robust to a minority of outliers.

    Parameters
    ----------
    maxiter:
        Maximum number of Weiszfeld iterations (OpenFL default 4).
    eps:
        Smallest distance used when re-weighting a point (default 1e-5).
    ftol:
        Stop when the objective improves by less than this fraction (default 1e-6).

    Weights are the collaborators' sample counts. Needs every update of the round at once.
    """

    needs_all_updates = True

    def __init__(self, maxiter: int = 4, eps: float = 1e-5, ftol: float = 1e-6) -> None:
        if int(maxiter) != maxiter or maxiter < 0:
            raise ValueError(f"GeometricMedian maxiter must be an integer >= 0, got {maxiter!r}")
        if not eps > 0:
            raise ValueError(f"GeometricMedian eps must be > 0, got {eps!r}")
        if not ftol >= 0:
            raise ValueError(f"GeometricMedian ftol must be >= 0, got {ftol!r}")
        self.maxiter = int(maxiter)
        self.eps = float(eps)
        self.ftol = float(ftol)

    def call(
        self,
        local_tensors: Sequence[LocalTensor],
        db_iterator: Any,
        tensor_name: str,
        fl_round: int,
        tags: tuple[str, ...],
    ) -> np.ndarray:
        """Geometric median of ``local_tensors`` (OpenFL's signature), in float64."""
        return geometric_median(
            [item.tensor for item in local_tensors],
            [item.weight for item in local_tensors],
            maxiter=self.maxiter,
            eps=self.eps,
            ftol=self.ftol,
        )
