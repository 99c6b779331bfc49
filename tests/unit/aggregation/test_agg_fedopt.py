"""FedAdagrad, FedAdam and FedYogi: first and second server steps worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrun.aggregation import (
    AdagradAdaptiveAggregation,
    AdamAdaptiveAggregation,
    Median,
    WeightedAverage,
    YogiAdaptiveAggregation,
)

X0 = np.array([1.0, -2.0, 0.5])
# Round 1: weighted average (1:3) of the two updates is [0.5, -2.25, 0.5], so g1 = [0.5, 0.25, 0].
ROUND1 = [
    ("a", 1.0, {"w": np.array([0.8, -1.5, 0.5])}),
    ("b", 3.0, {"w": np.array([0.4, -2.5, 0.5])}),
]
G1 = [0.5, 0.25, 0.0]
G2 = [0.1, -0.2, 0.0]


def round2_updates(x1: np.ndarray) -> list:
    """Both collaborators send x1 - G2, so the second pseudo-gradient is G2."""
    target = x1 - np.array(G2)
    return [("a", 5.0, {"w": target.copy()}), ("b", 7.0, {"w": target.copy()})]


def two_rounds(aggregate, rule):
    x1 = aggregate(rule, ROUND1, {"w": X0})["w"]
    x2 = aggregate(rule, round2_updates(x1), {"w": x1}, round_num=1)["w"]
    return x1, x2


def test_adam_first_and_second_step(aggregate):
    x1, x2 = two_rounds(aggregate, AdamAdaptiveAggregation())

    # step 1: m = 0.1 g, v = 0.001 g^2; bias-corrected m_hat = g, v_hat = g^2
    expected1 = [
        1.0 - 0.01 * 0.5 / (0.5 + 1e-8),
        -2.0 - 0.01 * 0.25 / (0.25 + 1e-8),
        0.5,  # g = 0 moves nothing
    ]
    np.testing.assert_allclose(x1, expected1, rtol=1e-12)
    # step 2: m = 0.9 m1 + 0.1 g2, v = 0.999 v1 + 0.001 g2^2, corrections 1 - 0.9^2, 1 - 0.999^2
    m2 = [0.9 * 0.05 + 0.1 * 0.1, 0.9 * 0.025 + 0.1 * -0.2]  # [0.055, 0.0025]
    v2 = [0.999 * 0.00025 + 0.001 * 0.01, 0.999 * 0.0000625 + 0.001 * 0.04]
    expected2 = [
        x1[i] - 0.01 * (m2[i] / 0.19) / (math.sqrt(v2[i] / 0.001999) + 1e-8) for i in range(2)
    ]
    np.testing.assert_allclose(x2[:2], expected2, rtol=1e-12)
    assert x2[2] == 0.5


def test_yogi_first_and_second_step(aggregate):
    x1, x2 = two_rounds(aggregate, YogiAdaptiveAggregation())

    # step 1 from v = 0: v = 0 - 0.001 g^2 sign(0 - g^2) = 0.001 g^2, the same as Adam
    adam_x1 = aggregate(AdamAdaptiveAggregation(), ROUND1, {"w": X0})["w"]
    np.testing.assert_allclose(x1, adam_x1, rtol=1e-15)
    # step 2: v1 < g2^2, so v grows by 0.001 g2^2 (Adam would shrink v1 by 0.999 first)
    m2 = [0.055, 0.0025]
    v2 = [0.00025 + 0.001 * 0.01, 0.0000625 + 0.001 * 0.04]
    expected2 = [
        x1[i] - 0.01 * (m2[i] / 0.19) / (math.sqrt(v2[i] / 0.001999) + 1e-8) for i in range(2)
    ]
    np.testing.assert_allclose(x2[:2], expected2, rtol=1e-12)


def test_adagrad_first_and_second_step(aggregate):
    x1, x2 = two_rounds(aggregate, AdagradAdaptiveAggregation())

    # v starts at 0.1: v1 = 0.1 + g1^2 = [0.35, 0.1625, 0.1]
    expected1 = [
        1.0 - 0.01 * 0.5 / (math.sqrt(0.35) + 1e-10),
        -2.0 - 0.01 * 0.25 / (math.sqrt(0.1625) + 1e-10),
        0.5,
    ]
    np.testing.assert_allclose(x1, expected1, rtol=1e-12)
    # v2 = v1 + g2^2 = [0.36, 0.2025]
    expected2 = [x1[0] - 0.01 * 0.1 / (0.6 + 1e-10), x1[1] + 0.01 * 0.2 / (0.45 + 1e-10)]
    np.testing.assert_allclose(x2[:2], expected2, rtol=1e-12)


@pytest.mark.parametrize(
    "rule_cls", [AdagradAdaptiveAggregation, AdamAdaptiveAggregation, YogiAdaptiveAggregation]
)
def test_state_is_kept_per_tensor_name_and_per_instance(aggregate, rule_cls):
    rule = rule_cls()
    x1, x2 = two_rounds(aggregate, rule)
    # A fresh instance taking the round-2 situation as its first step lands elsewhere.
    fresh = aggregate(rule_cls(), round2_updates(x1), {"w": x1})["w"]
    assert not np.allclose(fresh, x2, rtol=1e-9)
    # A second name starts its own state: its first step equals a fresh first step.
    renamed = [(o, w, {"v": t["w"]}) for o, w, t in ROUND1]
    other = aggregate(rule, renamed, {"v": X0})
    np.testing.assert_allclose(other["v"], aggregate(rule_cls(), ROUND1, {"w": X0})["w"])


@pytest.mark.parametrize(
    "rule_cls", [AdagradAdaptiveAggregation, AdamAdaptiveAggregation, YogiAdaptiveAggregation]
)
def test_state_dict_round_trip_continues_identically(aggregate, rule_cls):
    original = rule_cls()
    x1 = aggregate(original, ROUND1, {"w": X0})["w"]
    restored = rule_cls()
    restored.load_state_dict(original.state_dict())

    a = aggregate(original, round2_updates(x1), {"w": x1})["w"]
    b = aggregate(restored, round2_updates(x1), {"w": x1})["w"]

    np.testing.assert_array_equal(a, b)


def test_non_float_and_unknown_names_fall_back_to_weighted_average(aggregate):
    updates = [
        ("a", 1.0, {"steps": np.array([10], dtype=np.int64), "extra": np.array([1.0])}),
        ("b", 3.0, {"steps": np.array([20], dtype=np.int64), "extra": np.array([5.0])}),
    ]
    global_model = {"steps": np.array([0], dtype=np.int64)}  # "extra" is not in it

    result = aggregate(AdamAdaptiveAggregation(), updates, global_model)

    assert result["steps"].dtype == np.int64
    np.testing.assert_array_equal(result["steps"], [18])  # 17.5 rounds to even
    np.testing.assert_allclose(result["extra"], [4.0])


def test_float32_models_stay_float32(aggregate):
    updates = [(o, w, {"w": t["w"].astype(np.float32)}) for o, w, t in ROUND1]

    result = aggregate(AdamAdaptiveAggregation(), updates, {"w": X0.astype(np.float32)})

    assert result["w"].dtype == np.float32
    np.testing.assert_allclose(result["w"], [0.99, -2.01, 0.5], rtol=1e-6)


def test_single_collaborator(aggregate):
    result = aggregate(AdamAdaptiveAggregation(learning_rate=0.1), [ROUND1[0]], {"w": X0})

    # g = X0 - [0.8, -1.5, 0.5] = [0.2, -0.5, 0]; first Adam step moves lr * sign(g)
    np.testing.assert_allclose(result["w"], [0.9, -1.9, 0.5], rtol=1e-7)


def test_result_steps_once_and_closes_the_round():
    rule = AdamAdaptiveAggregation()
    accumulator = rule.begin_round(0, {"w": X0})
    for origin, weight, tensors in ROUND1:
        accumulator.add("w", tensors["w"], weight, origin)

    first = accumulator.result()
    second = accumulator.result()

    np.testing.assert_array_equal(first["w"], second["w"])
    assert rule.state_dict()["w"]["step"] == 1
    with pytest.raises(RuntimeError):
        accumulator.add("w", X0, 1.0, "late")


def test_update_shape_must_match_the_global_model():
    accumulator = YogiAdaptiveAggregation().begin_round(0, {"w": X0})

    with pytest.raises(ValueError, match="global model"):
        accumulator.add("w", np.zeros(4), 1.0, "a")


def test_openfl_arguments_are_accepted():
    rule = AdamAdaptiveAggregation(
        agg_func=WeightedAverage(),
        params={"w": X0},
        model_interface=object(),
        learning_rate=0.1,
        betas=(0.8, 0.99),
        initial_accumulator_value=0.0,
        epsilon=1e-6,
    )

    assert rule.betas == (0.8, 0.99)
    assert rule.needs_all_updates is False


def test_a_collecting_agg_func_makes_the_rule_collecting(aggregate):
    rule = AdagradAdaptiveAggregation(agg_func=Median())
    updates = [
        ("a", 1.0, {"w": np.array([0.0])}),
        ("b", 1.0, {"w": np.array([0.5])}),
        ("c", 1.0, {"w": np.array([100.0])}),
    ]

    result = aggregate(rule, updates, {"w": np.array([1.0])})

    assert rule.needs_all_updates is True
    # median 0.5, so g = 0.5 and v = 0.1 + 0.25
    np.testing.assert_allclose(result["w"], [1.0 - 0.01 * 0.5 / (math.sqrt(0.35) + 1e-10)])


@pytest.mark.parametrize(
    "settings",
    [
        {"learning_rate": 0.0},
        {"learning_rate": float("nan")},
        {"epsilon": 0.0},
        {"initial_accumulator_value": -1.0},
        {"betas": (0.9, 1.0)},
        {"betas": (-0.1, 0.9)},
        {"betas": 0.9},
        {"agg_func": "WeightedAverage"},
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        AdamAdaptiveAggregation(**settings)


def test_call_explains_that_begin_round_is_needed():
    with pytest.raises(NotImplementedError, match="begin_round"):
        AdamAdaptiveAggregation()([], None, "w", 0, ())


@pytest.mark.parametrize(
    "rule",
    [AdamAdaptiveAggregation, YogiAdaptiveAggregation, AdagradAdaptiveAggregation],
)
def test_federated_optimizer_state_is_averaged_never_stepped(aggregate, rule):
    # CONTINUE_GLOBAL puts the collaborators' optimizer state into the global model; it is not
    # one of the server optimizer's parameters (stepping it drove Adam's exp_avg_sq negative)
    state = "__opt_state_0_exp_avg_sq"
    updates = [
        ("a", 1.0, {"w": np.array([0.8, -1.5, 0.5]), state: np.array([0.25, 0.5, 1.0])}),
        ("b", 3.0, {"w": np.array([0.4, -2.5, 0.5]), state: np.array([0.75, 0.0, 1.0])}),
    ]

    out = aggregate(rule(), updates, {"w": X0, state: np.array([4.0, 4.0, 4.0])})

    np.testing.assert_allclose(out[state], [0.625, 0.125, 1.0], rtol=1e-12)  # the 1:3 average
    assert not np.allclose(out["w"], [0.5, -2.25, 0.5])  # the weights are stepped
