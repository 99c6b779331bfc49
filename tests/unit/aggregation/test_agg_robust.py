"""TrimmedMean, Krum and Multi-Krum against direct formulas."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from fedrun.aggregation import Krum, MultiKrum, TrimmedMean


def direct_trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    n = stack.shape[0]
    k = math.floor(beta * n + 1e-9)
    ordered = np.sort(stack, axis=0)
    return ordered[k : n - k].mean(axis=0)


@pytest.mark.parametrize(("n", "beta"), [(10, 0.1), (7, 0.2), (5, 0.0), (9, 0.45), (1, 0.3)])
def test_trimmed_mean_matches_direct_formula(aggregate, rng, n, beta):
    updates = [
        (f"c{i}", float(rng.integers(1, 9)), {"w": rng.standard_normal((3, 5))}) for i in range(n)
    ]

    result = aggregate(TrimmedMean(beta=beta), updates)

    stack = np.stack([t["w"] for _, _, t in updates])
    np.testing.assert_allclose(result["w"], direct_trimmed_mean(stack, beta), rtol=1e-12)


def test_trimmed_mean_drops_the_extremes_per_element(aggregate):
    values = [[-1000.0, 5.0], [1.0, 1000.0], [2.0, 6.0], [3.0, -1000.0], [4.0, 7.0]]
    updates = [(f"c{i}", 1.0, {"w": np.array(v)}) for i, v in enumerate(values)]

    result = aggregate(TrimmedMean(beta=0.2), updates)  # drops 1 at each end

    np.testing.assert_allclose(result["w"], [2.0, 6.0])


def test_trimmed_mean_rounds_integers(aggregate):
    updates = [(f"c{i}", 1.0, {"n": np.array([v], dtype=np.int32)}) for i, v in enumerate([1, 2])]

    result = aggregate(TrimmedMean(beta=0.0), updates)

    assert result["n"].dtype == np.int32 and result["n"][0] == 2


@pytest.mark.parametrize("beta", [-0.1, 0.5, 1.0, "0.1"])
def test_trimmed_mean_refuses_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=beta)


def honest_and_attackers(rng, honest: int, attackers: int, scale: float = 1e3):
    center = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    updates = []
    for i in range(honest):
        tensors = {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in center.items()}
        updates.append((f"honest{i}", float(rng.integers(10, 100)), tensors))
    for i in range(attackers):
        tensors = {k: v + scale * rng.standard_normal(v.shape) for k, v in center.items()}
        updates.append((f"evil{i}", 1000.0, tensors))
    return updates


def reference_krum(updates, f: int, m: int):
    """Brute force: concatenate names, score by the n - f - 2 nearest squared distances."""
    updates = sorted(updates, key=lambda u: u[0])
    names = list(updates[0][2])
    vectors = [np.concatenate([np.ravel(t[name]) for name in names]) for _, _, t in updates]
    n = len(vectors)
    scores = []
    for i in range(n):
        distances = sorted(
            float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i
        )
        scores.append(sum(distances[: n - f - 2]))
    chosen = [updates[i] for i in np.argsort(scores, kind="stable")[:m]]
    weights = [w for _, w, _ in chosen]
    average = {
        name: np.average(np.stack([t[name] for _, _, t in chosen]), axis=0, weights=weights)
        for name in names
    }
    return [origin for origin, _, _ in chosen], average


def run_krum(rule, updates):
    accumulator = rule.begin_round(0, {})
    for origin, weight, tensors in updates:
        for name, tensor in tensors.items():
            accumulator.add(name, tensor, weight, origin)
    return accumulator.result(), accumulator


def test_krum_picks_an_honest_update_despite_a_far_attacker(rng):
    updates = honest_and_attackers(rng, honest=6, attackers=1)

    result, accumulator = run_krum(Krum(num_byzantine=1), updates)

    chosen, expected = reference_krum(updates, f=1, m=1)
    assert accumulator.selected == chosen
    assert chosen[0].startswith("honest")
    for name in expected:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-12)


def test_multi_krum_averages_the_honest_cluster(rng):
    updates = honest_and_attackers(rng, honest=7, attackers=2)

    result, accumulator = run_krum(MultiKrum(num_byzantine=2), updates)

    chosen, expected = reference_krum(updates, f=2, m=7)
    assert accumulator.selected == chosen
    assert all(origin.startswith("honest") for origin in chosen)
    for name in expected:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-12)


def test_krum_ignores_arrival_order(rng):
    updates = honest_and_attackers(rng, honest=5, attackers=1)
    reference, _ = run_krum(Krum(num_byzantine=1, multi_krum=3), updates)

    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(updates))
        result, _ = run_krum(Krum(num_byzantine=1, multi_krum=3), [updates[i] for i in order])
        for name in reference:
            np.testing.assert_allclose(result[name], reference[name], rtol=1e-12)


@pytest.mark.parametrize(("n", "f"), [(2, 0), (4, 1), (6, 2)])
def test_krum_needs_more_than_2f_plus_2_updates(rng, n, f):
    updates = honest_and_attackers(rng, honest=n, attackers=0)

    with pytest.raises(ValueError, match=rf"f = {f} .*N = {n} "):
        run_krum(Krum(num_byzantine=f), updates)


def test_krum_compares_weights_not_counters_or_optimizer_state(rng):
    # Prepare: four honest updates close together, whose BatchNorm counters and optimizer step
    # counts differ as data sizes do, and an attacker shifting every weight
    center = rng.standard_normal(50)
    updates = []
    for i, batches in enumerate([10, 60, 140, 190]):
        tensors = {
            "w": center + 0.01 * rng.standard_normal(50),
            "bn.num_batches_tracked": np.array(batches, dtype=np.int64),
            "__opt_state_step": np.array([float(batches)]),
        }
        updates.append((f"honest{i}", 1.0, tensors))
    evil = {
        "w": center + 0.5,
        "bn.num_batches_tracked": np.array(100, dtype=np.int64),
        "__opt_state_step": np.array([100.0]),
    }
    updates.append(("evil", 1.0, evil))

    # Execute
    _, accumulator = run_krum(Krum(num_byzantine=1), updates)

    # Assert: scored on the weights alone, the attacker is the farthest
    assert accumulator.selected[0].startswith("honest")
    assert max(accumulator.scores, key=accumulator.scores.get) == "evil"


@pytest.mark.parametrize(
    ("n", "f", "fits"), [(2, 0, False), (3, 0, True), (4, 1, False), (5, 1, True)]
)
def test_krum_says_before_the_start_whether_a_federation_can_meet_it(n, f, fits):
    rule = Krum(num_byzantine=f)
    if fits:
        rule.check_federation(n)
    else:
        with pytest.raises(ValueError, match=rf"more than 2f \+ 2 = {2 * f + 2} .* has {n} "):
            rule.check_federation(n)


def test_multi_krum_larger_than_n_minus_f_is_lowered(rng, caplog):
    updates = honest_and_attackers(rng, honest=5, attackers=0)

    with caplog.at_level(logging.WARNING):
        _, accumulator = run_krum(Krum(num_byzantine=1, multi_krum=10), updates)

    assert len(accumulator.selected) == 4
    assert "N - f = 4" in caplog.text


def test_krum_refuses_an_origin_missing_a_name(rng):
    updates = honest_and_attackers(rng, honest=4, attackers=0)
    updates[2] = (updates[2][0], updates[2][1], {"a": updates[2][2]["a"]})

    with pytest.raises(ValueError, match="did not send"):
        run_krum(Krum(), updates)


def test_krum_refuses_two_weights_for_one_origin():
    accumulator = Krum().begin_round(0, {})
    accumulator.add("a", np.zeros(2), 10.0, "c1")

    with pytest.raises(ValueError, match="one weight"):
        accumulator.add("b", np.zeros(2), 11.0, "c1")


@pytest.mark.parametrize(
    "settings", [{"num_byzantine": -1}, {"multi_krum": 0}, {"num_byzantine": 1.5}]
)
def test_krum_refuses_bad_settings(settings):
    with pytest.raises(ValueError):
        Krum(**settings)


def test_krum_call_explains_that_begin_round_is_needed():
    with pytest.raises(NotImplementedError, match="begin_round"):
        Krum()([], None, "w", 0, ())
