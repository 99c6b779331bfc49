"""Aggregation rules: how a round's tensors from every collaborator become the new model.

Streaming rules (``needs_all_updates = False``) keep about one float64 copy of the model whatever
the number of collaborators: :class:`WeightedAverage`, :class:`FedCurvWeightedAverage` and the
FedOpt rules. The others keep every update of the round. Weights handed to ``add`` are raw sample
counts; every rule normalizes them itself.
"""

from __future__ import annotations

from fedrun.aggregation.base import (
    Accumulator,
    AggregationFunction,
    CollectingAccumulator,
    LocalTensor,
    UpdateLog,
)
from fedrun.aggregation.fedcurv import FedCurvWeightedAverage
from fedrun.aggregation.fedopt import (
    AdagradAdaptiveAggregation,
    AdamAdaptiveAggregation,
    AdaptiveAggregation,
    YogiAdaptiveAggregation,
)
from fedrun.aggregation.geometric_median import GeometricMedian
from fedrun.aggregation.median import Median
from fedrun.aggregation.robust import Krum, KrumAccumulator, MultiKrum, TrimmedMean
from fedrun.aggregation.weighted_average import StreamingAverageAccumulator, WeightedAverage

__all__ = [
    "Accumulator",
    "AdagradAdaptiveAggregation",
    "AdamAdaptiveAggregation",
    "AdaptiveAggregation",
    "AggregationFunction",
    "CollectingAccumulator",
    "FedCurvWeightedAverage",
    "GeometricMedian",
    "Krum",
    "KrumAccumulator",
    "LocalTensor",
    "Median",
    "MultiKrum",
    "StreamingAverageAccumulator",
    "TrimmedMean",
    "UpdateLog",
    "WeightedAverage",
    "YogiAdaptiveAggregation",
    "available_rules",
]

_RULES: tuple[type[AggregationFunction], ...] = (
    WeightedAverage,
    Median,
    GeometricMedian,
    FedCurvWeightedAverage,
    AdagradAdaptiveAggregation,
    AdamAdaptiveAggregation,
    YogiAdaptiveAggregation,
    TrimmedMean,
    Krum,
    MultiKrum,
)


def available_rules() -> dict[str, type[AggregationFunction]]:
    """Every built-in aggregation rule, by class name (the name a plan's template ends with)."""
    return {rule.__name__: rule for rule in _RULES}
