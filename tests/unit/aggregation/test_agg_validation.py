"""Every rule's accumulator refuses bad updates the same way; the registry lists every rule."""

from __future__ import annotations

import numpy as np
import pytest

from fedrun.aggregation import AggregationFunction, available_rules

ALL_RULES = sorted(available_rules())


def open_accumulator(rule_name: str):
    rule = available_rules()[rule_name]()
    return rule.begin_round(0, {"w": np.zeros(3, dtype=np.float32)})


def test_available_rules_lists_every_rule():
    rules = available_rules()

    assert set(rules) == {
        "WeightedAverage",
        "Median",
        "GeometricMedian",
        "FedCurvWeightedAverage",
        "AdagradAdaptiveAggregation",
        "AdamAdaptiveAggregation",
        "YogiAdaptiveAggregation",
        "TrimmedMean",
        "Krum",
        "MultiKrum",
    }
    assert all(issubclass(cls, AggregationFunction) for cls in rules.values())
    streaming = {name for name, cls in rules.items() if not cls.needs_all_updates}
    assert streaming == {
        "WeightedAverage",
        "FedCurvWeightedAverage",
        "AdagradAdaptiveAggregation",
        "AdamAdaptiveAggregation",
        "YogiAdaptiveAggregation",
    }


@pytest.mark.parametrize("rule_name", ALL_RULES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(rule_name, bad):
    accumulator = open_accumulator(rule_name)
    tensor = np.array([1.0, bad, 3.0], dtype=np.float32)

    with pytest.raises(ValueError, match="non-finite"):
        accumulator.add("w", tensor, 1.0, "col1")


@pytest.mark.parametrize("rule_name", ALL_RULES)
@pytest.mark.parametrize("weight", [-1.0, np.nan, np.inf, "ten"])
def test_bad_weights_are_refused(rule_name, weight):
    accumulator = open_accumulator(rule_name)

    with pytest.raises(ValueError, match="weight"):
        accumulator.add("w", np.ones(3, dtype=np.float32), weight, "col1")


@pytest.mark.parametrize("rule_name", ALL_RULES)
def test_shape_mismatch_is_refused(rule_name):
    accumulator = open_accumulator(rule_name)
    accumulator.add("w", np.ones(3, dtype=np.float32), 1.0, "col1")

    with pytest.raises(ValueError, match="shape"):
        accumulator.add("w", np.ones(4, dtype=np.float32), 1.0, "col2")


@pytest.mark.parametrize("rule_name", ALL_RULES)
def test_dtype_mismatch_is_refused(rule_name):
    accumulator = open_accumulator(rule_name)
    accumulator.add("w", np.ones(3, dtype=np.float32), 1.0, "col1")

    with pytest.raises(ValueError, match="dtype"):
        accumulator.add("w", np.ones(3, dtype=np.float64), 1.0, "col2")


@pytest.mark.parametrize("rule_name", ALL_RULES)
def test_second_submission_from_one_origin_is_refused(rule_name):
    accumulator = open_accumulator(rule_name)
    accumulator.add("w", np.ones(3, dtype=np.float32), 1.0, "col1")

    with pytest.raises(ValueError, match="already sent"):
        accumulator.add("w", np.ones(3, dtype=np.float32), 1.0, "col1")


@pytest.mark.parametrize("rule_name", ALL_RULES)
def test_non_numeric_tensors_are_refused(rule_name):
    accumulator = open_accumulator(rule_name)

    with pytest.raises(ValueError, match="dtype"):
        accumulator.add("w", np.array(["a", "b", "c"]), 1.0, "col1")


@pytest.mark.parametrize("rule_name", ALL_RULES)
def test_integer_tensors_skip_the_finiteness_check(rule_name):
    accumulator = open_accumulator(rule_name)

    accumulator.add("steps", np.array([1, 2, 3], dtype=np.int64), 1.0, "col1")
