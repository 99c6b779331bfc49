"""Aggregator and Collaborator cores wired together in one process, without any network.

The task runner is a few lines of numpy: "training" adds a collaborator-specific constant to
every weight, "validation" reports the mean weight plus a collaborator-specific offset. The
connection calls the Aggregator the way the gRPC server does (open_result -> add -> commit,
abort on any failure), so every number below can be computed by hand.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import pytest

from fedrun.aggregation import WeightedAverage
from fedrun.errors import PlanError, ProtocolError
from fedrun.federation.aggregator import Aggregator, ModelSink
from fedrun.federation.assigner import RandomGroupedAssigner
from fedrun.federation.collaborator import Collaborator
from fedrun.federation.stragglers import CutoffTimePolicy, StragglerPolicy
from fedrun.federation.tasks import TaskAssignment, TaskResult, TaskRunnerInterface, TaskSpec

PLAN_HASH = "ab" * 32
FEDERATION_ID = "plan_abababababab"
ORDER = ["aggregated_model_validation", "train", "locally_tuned_model_validation"]
TASKS = {
    "aggregated_model_validation": TaskSpec(
        "aggregated_model_validation", "validate_task", {"apply": "global", "metrics": ["acc"]}
    ),
    "train": TaskSpec("train", "train_task", {"metrics": ["loss"], "epochs": 1}),
    "locally_tuned_model_validation": TaskSpec(
        "locally_tuned_model_validation", "validate_task", {"apply": "local", "metrics": ["acc"]}
    ),
}
INITIAL = {
    "w": (np.arange(6, dtype=np.float32).reshape(2, 3) * 0.37).astype(np.float32),
    "b": np.array([0.1, -2.0], dtype=np.float32),
    "scale": np.array(1.25, dtype=np.float64),
}
#: name -> (training offset, train samples, validation samples)
PROFILES = {
    "one": (1.0, 10, 5),
    "two": (2.0, 30, 5),
    "three": (4.0, 60, 10),
    "fast": (1.0, 10, 5),
    "slow": (3.0, 30, 5),
}


# ---------------------------------------------------------------------- test doubles
class NumpyRunner:
    """A task runner of plain numpy arrays (implements TaskRunnerInterface)."""

    def __init__(self, offset: float, train_size: int, valid_size: int) -> None:
        self.offset = offset
        self.train_size = train_size
        self.valid_size = valid_size
        self.weights = {k: v.copy() for k, v in INITIAL.items()}
        self.treatment = ""
        self.calls: list[tuple[str, int, str]] = []

    def get_tensor_dict(self, with_opt_vars: bool = False) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.weights.items()}

    def set_tensor_dict(
        self, tensor_dict: Mapping[str, np.ndarray], with_opt_vars: bool = False
    ) -> None:
        self.weights = {k: np.array(v, copy=True) for k, v in tensor_dict.items()}

    def set_optimizer_treatment(self, treatment: str) -> None:
        self.treatment = treatment

    def get_train_data_size(self) -> int:
        return self.train_size

    def get_valid_data_size(self) -> int:
        return self.valid_size

    def train_task(self, col_name, round_num, input_tensor_dict, **kwargs) -> TaskResult:
        self.calls.append(("train", round_num, "global"))
        self.set_tensor_dict(input_tensor_dict)
        trained = {k: trained_value(v, self.offset) for k, v in self.weights.items()}
        self.weights = trained
        return TaskResult({"loss": self.offset}, dict(trained), self.train_size)

    def validate_task(self, col_name, round_num, input_tensor_dict, apply, **kwargs) -> TaskResult:
        self.calls.append(("validate", round_num, apply))
        return TaskResult({"acc": accuracy(input_tensor_dict, self.offset)}, {}, self.valid_size)


def trained_value(value: np.ndarray, offset: float) -> np.ndarray:
    return (value + offset).astype(value.dtype)


def accuracy(model: Mapping[str, np.ndarray], offset: float) -> float:
    return float(np.mean(model["w"])) + offset / 100


class InProcessConnection:
    """AggregatorConnection calling the Aggregator directly, as the gRPC servicer does."""

    def __init__(self, aggregator: Aggregator, name: str, wait: float = 5.0) -> None:
        self.aggregator = aggregator
        self.name = name
        self.wait = wait
        self.plan_hash = PLAN_HASH

    def _identify(self) -> None:
        self.aggregator.check_identity(self.name, self.plan_hash, FEDERATION_ID)

    def get_tasks(self) -> TaskAssignment:
        self._identify()
        return self.aggregator.get_tasks(self.name, wait=self.wait)

    def get_global_model(self, round_num: int, expected=None) -> dict[str, np.ndarray]:
        self._identify()
        model = self.aggregator.get_global_model(self.name, round_num)
        return {k: np.array(v, copy=True) for k, v in model.items()}

    def submit(self, round_num, task, data_size, metrics, tensors, deltas, result_id="") -> int:
        self._identify()
        return submit(
            self.aggregator, self.name, round_num, task, data_size, metrics, tensors, deltas
        )


def _task_metrics(summary) -> dict[str, float]:
    """Round metrics without the communication counters (bytes differ with deltas)."""
    return {k: v for k, v in summary.metrics.items() if not k.startswith("communication/")}


def submit(
    aggregator: Aggregator,
    name: str,
    round_num: int,
    task: str,
    data_size: int,
    metrics: Mapping[str, float],
    tensors: Mapping[str, np.ndarray],
    deltas: bool | Collection[str] = False,
) -> int:
    """One result, exactly as FederationServicer.SubmitResults hands it to the Aggregator."""
    upload = aggregator.open_result(
        name, round_num, task, int(data_size), dict(metrics), len(tensors)
    )
    try:
        for tensor_name, array in tensors.items():
            is_delta = tensor_name in deltas if not isinstance(deltas, bool) else deltas
            upload.add(tensor_name, np.asarray(array), is_delta, np.asarray(array).nbytes)
        upload.commit()
    except BaseException:
        upload.abort()
        raise
    return sum(np.asarray(a).nbytes for a in tensors.values())


class RecordingSink(ModelSink):
    """Keeps a copy of every model the aggregator saves."""

    def __init__(self) -> None:
        self.last: list[tuple[int, dict[str, np.ndarray]]] = []
        self.best: list[tuple[int, dict[str, np.ndarray], float, str]] = []
        self.finished: list[int | None] = []

    def save_last(self, tensors: Mapping[str, np.ndarray], round_num: int) -> None:  # type: ignore[override]
        self.last.append((round_num, {k: np.array(v, copy=True) for k, v in tensors.items()}))

    def save_best(self, tensors, round_num: int, score: float, metric: str) -> None:
        self.best.append(
            (round_num, {k: np.array(v, copy=True) for k, v in tensors.items()}, score, metric)
        )

    def finish(self, best_round: int | None) -> None:
        self.finished.append(best_round)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_aggregator(
    tmp_path: Path,
    cols: list[str],
    rounds: int,
    *,
    sink: ModelSink | None = None,
    policy: StragglerPolicy | None = None,
    clock=time.monotonic,
    final_validation: bool = True,
) -> Aggregator:
    groups = [{"name": "train_and_validate", "percentage": 1.0, "tasks": ORDER}]
    return Aggregator(
        plan_hash=PLAN_HASH,
        federation_id=FEDERATION_ID,
        collaborators=cols,
        tasks=TASKS,
        assigner=RandomGroupedAssigner(groups, cols, rounds_to_train=rounds),
        rounds_to_train=rounds,
        initial_model=INITIAL,
        aggregation_functions={name: WeightedAverage() for name in TASKS},
        spool_dir=tmp_path / "spool",
        straggler_policy=policy,
        model_sink=sink,
        final_validation=final_validation,
        clock=clock,
    )


# ---------------------------------------------------------------------- expectations by hand
def weighted_model(parts: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Sample-weighted average of models, in float64, cast back to each tensor's dtype."""
    total = sum(n for _, n in parts)
    return {
        name: np.asarray(
            sum(np.float64(n) * model[name].astype(np.float64) for model, n in parts) / total
        ).astype(INITIAL[name].dtype)
        for name in INITIAL
    }


def weighted_metric(parts: list[tuple[float, int]]) -> float:
    return sum(v * n for v, n in parts) / sum(n for _, n in parts)


def expected_run(names: list[str], rounds: int) -> tuple[list[dict], list[dict[str, float]]]:
    """Global models (inputs of rounds 0..rounds) and each round's aggregated metrics."""
    models = [dict(INITIAL)]
    metrics = []
    for _ in range(rounds):
        model = models[-1]
        trained = {
            n: {k: trained_value(v, PROFILES[n][0]) for k, v in model.items()} for n in names
        }
        metrics.append(
            {
                "aggregated_model_validation/acc": weighted_metric(
                    [(accuracy(model, PROFILES[n][0]), PROFILES[n][2]) for n in names]
                ),
                "train/loss": weighted_metric([(PROFILES[n][0], PROFILES[n][1]) for n in names]),
                "locally_tuned_model_validation/acc": weighted_metric(
                    [(accuracy(trained[n], PROFILES[n][0]), PROFILES[n][2]) for n in names]
                ),
            }
        )
        models.append(weighted_model([(trained[n], PROFILES[n][1]) for n in names]))
    final = {
        "aggregated_model_validation/acc": weighted_metric(
            [(accuracy(models[-1], PROFILES[n][0]), PROFILES[n][2]) for n in names]
        )
    }
    return models, [*metrics, final]


def assert_same_model(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]):
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert actual[name].shape == value.shape, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def run_collaborators(
    aggregator: Aggregator, names: list[str], *, use_delta_updates: bool = False
) -> dict[str, tuple[Collaborator, NumpyRunner]]:
    """Run one Collaborator per name in its own thread until the aggregator says quit."""
    built: dict[str, tuple[Collaborator, NumpyRunner]] = {}
    errors: list[BaseException] = []
    for name in names:
        runner = NumpyRunner(*PROFILES[name])
        assert isinstance(runner, TaskRunnerInterface)
        collaborator = Collaborator(
            collaborator_name=name,
            connection=InProcessConnection(aggregator, name),
            task_runner=runner,
            tasks=TASKS,
            use_delta_updates=use_delta_updates,
        )
        built[name] = (collaborator, runner)

    def work(collaborator: Collaborator) -> None:
        try:
            collaborator.run()
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c, _ in built.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a collaborator never finished"
    if errors:
        raise errors[0]
    return built


# ---------------------------------------------------------------------- whole federation
def test_three_collaborators_in_threads_match_the_hand_computed_federation(tmp_path):
    # Prepare
    names = ["one", "two", "three"]
    sink = RecordingSink()
    aggregator = make_aggregator(tmp_path, names, rounds=3, sink=sink)
    models, metrics = expected_run(names, rounds=3)

    # Execute
    built = run_collaborators(aggregator, names)

    # Assert: the model is the sample-weighted average, round after round
    assert_same_model(aggregator.global_model, models[-1])
    assert [(r, sorted(m)) for r, m in sink.last] == [(r, sorted(INITIAL)) for r in (1, 2, 3)]
    for (_, saved), model in zip(sink.last, models[1:], strict=True):
        assert_same_model(saved, model)

    # metrics are weighted by each result's data_size
    history = aggregator.round_history
    assert [s.number for s in history] == [0, 1, 2, 3]
    assert [s.final_validation for s in history] == [False, False, False, True]
    for summary, expected in zip(history, metrics, strict=True):
        assert _task_metrics(summary) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert sorted(summary.collaborators) == sorted(names)
        assert summary.stragglers == []

    # best: accuracy grows every round, so the final aggregate (validated last) is best
    assert [r for r, *_ in sink.best] == [0, 1, 2, 3]
    best_round, best_model, score, metric = sink.best[-1]
    assert metric == "aggregated_model_validation/acc"
    assert score == pytest.approx(metrics[-1][metric], rel=1e-12)
    assert_same_model(best_model, models[-1])
    assert sink.finished == [3]
    assert (aggregator.best_round, aggregator.done) == (3, True)
    assert aggregator.finished_event.is_set()

    # every collaborator ran the three tasks in order, then the final validation only
    for collaborator, runner in built.values():
        assert collaborator.rounds_done == [0, 1, 2]  # the training rounds
        assert collaborator.final_validation_done
        assert runner.treatment == "RESET"
        per_round = [("validate", r, "global") for r in range(4)]
        assert [c for c in runner.calls if c[0] == "validate" and c[2] == "global"] == per_round
        assert runner.calls[:3] == [
            ("validate", 0, "global"),
            ("train", 0, "global"),
            ("validate", 0, "local"),
        ]
        assert runner.calls[-1] == ("validate", 3, "global")
        assert len(runner.calls) == 3 * 3 + 1
    assert list((tmp_path / "spool").iterdir()) == []


def test_metrics_are_weighted_by_data_size_not_by_collaborator(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one", "three"], rounds=1, final_validation=False)
    for name in ("one", "three"):
        aggregator.get_tasks(name)

    # Execute: loss 1.0 on 10 samples and 4.0 on 60 samples; acc 0.5 on 5 and 0.8 on 10
    for name, loss, acc, n_train, n_valid in (
        ("one", 1.0, 0.5, 10, 5),
        ("three", 4.0, 0.8, 60, 10),
    ):
        submit(aggregator, name, 0, "aggregated_model_validation", n_valid, {"acc": acc}, {})
        trained = {k: trained_value(v, loss) for k, v in INITIAL.items()}
        submit(aggregator, name, 0, "train", n_train, {"loss": loss}, trained)
        submit(aggregator, name, 0, "locally_tuned_model_validation", n_valid, {"acc": acc}, {})

    # Assert
    (summary,) = aggregator.round_history
    assert summary.metrics["train/loss"] == pytest.approx((1.0 * 10 + 4.0 * 60) / 70)
    assert summary.metrics["aggregated_model_validation/acc"] == pytest.approx(
        (0.5 * 5 + 0.8 * 10) / 15
    )
    assert summary.metrics["train/loss"] != pytest.approx(2.5)  # not the plain mean


def _one_round(aggregator: Aggregator, names: list[str], during=None) -> None:
    for name in names:
        aggregator.get_tasks(name)
    for name in names:
        submit(aggregator, name, 0, "aggregated_model_validation", 5, {"acc": 0.5}, {})
        if during is not None:
            during()
        trained = {k: trained_value(v, 1.0) for k, v in INITIAL.items()}
        submit(aggregator, name, 0, "train", 10, {"loss": 1.0}, trained)
        submit(aggregator, name, 0, "locally_tuned_model_validation", 5, {"acc": 0.5}, {})


def test_round_reports_the_aggregator_cpu_it_took(tmp_path, caplog):
    # Prepare: a CPU clock that the round's work advances by 0.25 s per collaborator
    cpu = FakeClock(now=7.0)
    groups = [{"name": "train_and_validate", "percentage": 1.0, "tasks": ORDER}]
    aggregator = Aggregator(
        plan_hash=PLAN_HASH,
        federation_id=FEDERATION_ID,
        collaborators=["one", "two"],
        tasks=TASKS,
        assigner=RandomGroupedAssigner(groups, ["one", "two"], rounds_to_train=1),
        rounds_to_train=1,
        initial_model=INITIAL,
        aggregation_functions={name: WeightedAverage() for name in TASKS},
        spool_dir=tmp_path / "spool",
        final_validation=False,
        cpu_clock=cpu,
    )

    def work() -> None:
        cpu.now += 0.25

    # Execute
    with caplog.at_level("INFO", logger="fedrun.aggregator"):
        _one_round(aggregator, ["one", "two"], during=work)

    # Assert
    (summary,) = aggregator.round_history
    assert summary.cpu_seconds == pytest.approx(0.5)
    assert "round 0 finished in" in caplog.text
    assert "aggregator CPU 0.50 s" in caplog.text


def test_round_time_includes_forming_and_saving_the_new_model(tmp_path, caplog):
    # Prepare: saving the model takes 2 s of the (fake) clock
    clock = FakeClock(now=100.0)

    class SlowSink(RecordingSink):
        def save_last(self, tensors, round_num):  # type: ignore[no-untyped-def]
            super().save_last(tensors, round_num)
            clock.now += 2.0

    aggregator = make_aggregator(
        tmp_path, ["one"], rounds=2, sink=SlowSink(), clock=clock, final_validation=False
    )

    # Execute
    with caplog.at_level("INFO", logger="fedrun.aggregator"):
        _one_round(aggregator, ["one"])

    # Assert: the round ends once its model is saved, and the log line says how long that took
    (summary,) = aggregator.round_history
    assert summary.aggregation_seconds == pytest.approx(2.0)
    assert summary.duration >= 2.0
    assert "new model in 2.00 s" in caplog.text
    from benchmarks.fedrun_runner import _ROUND_FINISHED

    (match,) = list(_ROUND_FINISHED.finditer(caplog.text))
    assert float(match.group(3)) >= 2.0 and match.group("model") == "2.00"


def test_round_without_a_cpu_clock_reports_none(tmp_path, caplog):
    # Prepare: in-process federations share the process: no CPU figure for the aggregator
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1, final_validation=False)

    # Execute
    with caplog.at_level("INFO", logger="fedrun.aggregator"):
        _one_round(aggregator, ["one"])

    # Assert
    (summary,) = aggregator.round_history
    assert summary.cpu_seconds is None
    assert "round 0 finished in" in caplog.text
    assert "aggregator CPU" not in caplog.text


def test_without_final_validation_last_is_the_final_aggregate(tmp_path):
    # Prepare
    names = ["one", "two"]
    sink = RecordingSink()
    aggregator = make_aggregator(tmp_path, names, rounds=2, sink=sink, final_validation=False)
    models, metrics = expected_run(names, rounds=2)

    # Execute
    built = run_collaborators(aggregator, names)

    # Assert
    assert [s.final_validation for s in aggregator.round_history] == [False, False]
    assert [r for r, _ in sink.last] == [1, 2]
    assert_same_model(sink.last[-1][1], models[2])
    assert_same_model(aggregator.global_model, models[2])
    assert [r for r, *_ in sink.best] == [0, 1]  # the final aggregate was never validated
    assert sink.finished == [1]
    for collaborator, _ in built.values():
        assert collaborator.rounds_done == [0, 1]
        assert not collaborator.final_validation_done


def test_delta_updates_reconstruct_the_same_model_as_full_updates(tmp_path):
    # Prepare
    names = ["one", "two", "three"]
    full = make_aggregator(tmp_path / "full", names, rounds=3)
    delta = make_aggregator(tmp_path / "delta", names, rounds=3)

    # Execute
    run_collaborators(full, names, use_delta_updates=False)
    run_collaborators(delta, names, use_delta_updates=True)

    # Assert
    for name, value in full.global_model.items():
        assert delta.global_model[name].dtype == value.dtype
        np.testing.assert_allclose(delta.global_model[name], value, rtol=1e-6, atol=1e-6)
    assert len(delta.round_history) == len(full.round_history) == 4
    for with_delta, without in zip(delta.round_history, full.round_history, strict=True):
        assert _task_metrics(with_delta) == pytest.approx(_task_metrics(without), rel=1e-6)


def test_delta_result_is_applied_to_the_round_s_global_model(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1, final_validation=False)
    aggregator.get_tasks("one")
    deltas = {k: np.full_like(v, 0.5) for k, v in INITIAL.items()}

    # Execute
    submit(aggregator, "one", 0, "aggregated_model_validation", 1, {"acc": 0.1}, {})
    submit(aggregator, "one", 0, "train", 4, {"loss": 1.0}, deltas, deltas=True)
    submit(aggregator, "one", 0, "locally_tuned_model_validation", 1, {"acc": 0.1}, {})

    # Assert
    assert_same_model(aggregator.global_model, {k: v + 0.5 for k, v in INITIAL.items()})


# ---------------------------------------------------------------------- refusals
def complete_round(aggregator: Aggregator, names: list[str], round_num: int = 0) -> None:
    for name in names:
        offset, n_train, n_valid = PROFILES[name]
        trained = {k: trained_value(v, offset) for k, v in aggregator.global_model.items()}
        for task in ORDER:
            if task in aggregator.round.done[name]:
                continue
            if task == "train":
                submit(aggregator, name, round_num, task, n_train, {"loss": offset}, trained)
            else:
                submit(aggregator, name, round_num, task, n_valid, {"acc": 0.5}, {})


def round_snapshot(aggregator: Aggregator) -> tuple:
    state = aggregator.round
    return (
        aggregator.round_num,
        {c: set(t) for c, t in state.done.items()},
        set(state.in_progress),
        {k: list(v) for k, v in state.metric_sums.items()},
        state.bytes_received,
        tuple((k, v.dtype.str, v.tobytes()) for k, v in aggregator.global_model.items()),
    )


def spool_files(tmp_path: Path) -> list[str]:
    """Result files (kept free-*.spool files are empty slots for the next round's results)."""
    folder = tmp_path / "spool"
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("free-"))


def good_train(**changes) -> dict[str, np.ndarray]:
    tensors = {k: trained_value(v, 1.0) for k, v in INITIAL.items()}
    tensors.update(changes)
    return tensors


REFUSALS = {
    "unknown collaborator": (
        lambda a: a.check_identity("mallory", PLAN_HASH, FEDERATION_ID),
        "FX-AUTH-003",
    ),
    "wrong plan hash": (
        lambda a: a.check_identity("one", "cd" * 32, FEDERATION_ID),
        "FX-AUTH-004",
    ),
    "wrong federation id": (
        lambda a: a.check_identity("one", PLAN_HASH, "plan_other"),
        "FX-AUTH-004",
    ),
    "wrong round": (
        lambda a: submit(a, "one", 1, "train", 10, {"loss": 1.0}, good_train()),
        "FX-ROUND-002",
    ),
    "past round": (
        lambda a: submit(a, "one", -1, "aggregated_model_validation", 5, {"acc": 1.0}, {}),
        "FX-ROUND-002",
    ),
    "unassigned task": (
        lambda a: submit(a, "one", 0, "evaluate", 10, {"acc": 1.0}, {}),
        "FX-ROUND-004",
    ),
    "unknown collaborator's result": (
        lambda a: submit(a, "mallory", 0, "train", 10, {"loss": 1.0}, good_train()),
        "FX-ROUND-004",
    ),
    "unknown tensor name": (
        lambda a: submit(a, "one", 0, "train", 10, {}, good_train(extra=np.zeros(2, np.float32))),
        "FX-DATA-013",
    ),
    "wrong shape": (
        lambda a: submit(a, "one", 0, "train", 10, {}, good_train(b=np.zeros(3, np.float32))),
        "FX-DATA-014",
    ),
    "wrong dtype": (
        lambda a: submit(a, "one", 0, "train", 10, {}, good_train(w=np.zeros((2, 3)))),
        "FX-DATA-015",
    ),
    "NaN tensor": (
        lambda a: submit(
            a, "one", 0, "train", 10, {}, good_train(scale=np.array(np.nan, dtype=np.float64))
        ),
        "FX-DATA-010",
    ),
    "infinite tensor": (
        lambda a: submit(
            a, "one", 0, "train", 10, {}, good_train(b=np.array([1, np.inf], dtype=np.float32))
        ),
        "FX-DATA-010",
    ),
    "NaN metric": (
        lambda a: submit(a, "one", 0, "aggregated_model_validation", 5, {"acc": np.nan}, {}),
        "FX-DATA-010",
    ),
    "infinite metric": (
        lambda a: submit(a, "one", 0, "train", 10, {"loss": -np.inf}, good_train()),
        "FX-DATA-010",
    ),
    "negative data size": (
        lambda a: submit(a, "one", 0, "aggregated_model_validation", -1, {"acc": 0.5}, {}),
        "FX-DATA-011",
    ),
    "data size no float weight holds exactly (one result would outweigh every other)": (
        lambda a: submit(
            a, "one", 0, "train", 2**63 - 1, {}, good_train(scale=np.array(1e30, dtype=np.float64))
        ),
        "FX-DATA-011",
    ),
    "metric name forging a log line": (
        lambda a: submit(a, "one", 0, "train", 10, {"loss\nERROR forged": 1.0}, good_train()),
        "FX-DATA-043",
    ),
    "metric name filling the log": (
        lambda a: submit(a, "one", 0, "train", 10, {"x" * 129: 1.0}, good_train()),
        "FX-DATA-043",
    ),
    "metrics by the thousand": (
        lambda a: submit(
            a, "one", 0, "train", 10, {f"m{i}": 1.0 for i in range(4097)}, good_train()
        ),
        "FX-DATA-043",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_leaves_the_round_untouched(tmp_path, case):
    # Prepare
    action, code = REFUSALS[case]
    aggregator = make_aggregator(tmp_path, ["one", "two"], rounds=1, final_validation=False)
    for name in ("one", "two"):
        aggregator.get_tasks(name)
    submit(aggregator, "two", 0, "aggregated_model_validation", 5, {"acc": 0.5}, {})
    before = round_snapshot(aggregator)

    # Execute
    with pytest.raises(ProtocolError) as caught:
        action(aggregator)

    # Assert: refused with its code, nothing of it counted or left on disk
    assert caught.value.code == code
    assert caught.value.fix
    assert round_snapshot(aggregator) == before
    assert spool_files(tmp_path) == []

    # ... and valid results still complete the round with the right model
    complete_round(aggregator, ["one", "two"])
    expected = weighted_model(
        [
            ({k: trained_value(v, 1.0) for k, v in INITIAL.items()}, 10),
            ({k: trained_value(v, 2.0) for k, v in INITIAL.items()}, 30),
        ]
    )
    assert aggregator.done
    assert_same_model(aggregator.global_model, expected)
    assert aggregator.round_history[0].metrics["aggregated_model_validation/acc"] == 0.5


def test_duplicate_result_is_refused_and_the_first_one_counts(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one", "two"], rounds=1, final_validation=False)
    for name in ("one", "two"):
        aggregator.get_tasks(name)
    submit(aggregator, "one", 0, "train", 10, {"loss": 1.0}, good_train())
    before = round_snapshot(aggregator)

    # Execute
    with pytest.raises(ProtocolError) as caught:
        submit(aggregator, "one", 0, "train", 10, {"loss": 9.0}, good_train(b=INITIAL["b"] + 9))

    # Assert
    assert caught.value.code == "FX-ROUND-005"
    assert round_snapshot(aggregator) == before
    complete_round(aggregator, ["one", "two"])
    assert aggregator.round_history[0].metrics["train/loss"] == pytest.approx(
        (1.0 * 10 + 2.0 * 30) / 40
    )
    assert_same_model(
        aggregator.global_model,
        weighted_model([(good_train(), 10), ({k: v + 2.0 for k, v in INITIAL.items()}, 30)]),
    )


def test_second_upload_of_a_task_while_the_first_streams_replaces_it(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1, final_validation=False)
    aggregator.get_tasks("one")
    first = aggregator.open_result("one", 0, "train", 10, {"loss": 1.0}, 3)

    # Execute: a collaborator resends only once its own call failed
    second = aggregator.open_result("one", 0, "train", 10, {"loss": 1.0}, 3)

    # Assert: the first is given up; the round completes with the second
    assert first.dropped and not second.dropped
    first.abort()
    second.abort()
    complete_round(aggregator, ["one"])
    assert aggregator.done


@pytest.mark.parametrize(
    ("announced", "send", "code"),
    [
        (2, ["w", "b", "scale"], "FX-DATA-018"),  # more than announced
        (3, ["w", "b"], "FX-DATA-018"),  # fewer than announced
        (3, ["w", "w"], "FX-DATA-017"),  # a tensor twice
    ],
)
def test_upload_that_breaks_its_announced_tensor_count_is_refused(tmp_path, announced, send, code):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1, final_validation=False)
    aggregator.get_tasks("one")
    trained = good_train()
    upload = aggregator.open_result("one", 0, "train", 10, {"loss": 1.0}, announced)

    # Execute
    with pytest.raises(ProtocolError) as caught:
        for name in send:
            upload.add(name, trained[name])
        upload.commit()
    upload.abort()

    # Assert
    assert caught.value.code == code
    assert aggregator.round.in_progress == set()
    assert "train" not in aggregator.round.done["one"]
    assert spool_files(tmp_path) == []
    complete_round(aggregator, ["one"])
    assert_same_model(aggregator.global_model, good_train())


def test_aborted_upload_leaves_no_spool_file_and_can_be_resent(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one", "two"], rounds=1, final_validation=False)
    for name in ("one", "two"):
        aggregator.get_tasks(name)
    upload = aggregator.open_result("one", 0, "train", 10, {"loss": 1.0}, 3)
    upload.add("w", good_train()["w"])
    upload.add("b", good_train()["b"])
    assert spool_files(tmp_path) != []  # the partial result is being spooled

    # Execute: the stream breaks
    upload.abort()

    # Assert
    assert spool_files(tmp_path) == []
    assert aggregator.round.in_progress == set()
    assert aggregator.round.done["one"] == set()
    complete_round(aggregator, ["one", "two"])
    assert aggregator.done
    assert_same_model(
        aggregator.global_model,
        weighted_model([(good_train(), 10), ({k: v + 2.0 for k, v in INITIAL.items()}, 30)]),
    )
    assert spool_files(tmp_path) == []


def test_global_model_of_another_round_is_refused(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one"], rounds=2)

    # Execute
    with pytest.raises(ProtocolError) as caught:
        aggregator.get_global_model("one", 1)

    # Assert
    assert caught.value.code == "FX-ROUND-001"
    assert "aggregator is at round 0" in caught.value.message


def test_collaborator_refuses_a_task_runner_lacking_a_task_function(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1)
    tasks = {**TASKS, "train": TaskSpec("train", "train_fedprox", {})}

    # Execute
    with pytest.raises(PlanError) as caught:
        Collaborator(
            collaborator_name="one",
            connection=InProcessConnection(aggregator, "one"),
            task_runner=NumpyRunner(*PROFILES["one"]),
            tasks=tasks,
        )

    # Assert
    assert caught.value.code == "FX-PLAN-016"
    assert "NumpyRunner has no method 'train_fedprox'" in caught.value.message


def test_aggregator_without_collaborators_is_a_plan_error(tmp_path):
    with pytest.raises(PlanError, match="FX-PLAN-021"):
        make_aggregator(tmp_path, [], rounds=1)


# ---------------------------------------------------------------------- long poll
def test_long_poll_returns_as_soon_as_the_round_changes(tmp_path):
    # Prepare: "one" has finished round 0 and asks for work; "two" has not
    aggregator = make_aggregator(tmp_path, ["one", "two"], rounds=2, final_validation=False)
    for name in ("one", "two"):
        aggregator.get_tasks(name)
    complete_round(aggregator, ["one"])
    answer: list[TaskAssignment] = []
    elapsed: list[float] = []

    def poll() -> None:
        started = time.monotonic()
        answer.append(aggregator.get_tasks("one", wait=5))
        elapsed.append(time.monotonic() - started)

    waiter = threading.Thread(target=poll, daemon=True)
    waiter.start()
    time.sleep(0.2)  # let the poll block
    assert not answer, "the long poll returned before the round changed"

    # Execute
    complete_round(aggregator, ["two"])
    waiter.join(timeout=10)

    # Assert
    assert answer and answer[0].round == 1
    assert answer[0].tasks == ORDER
    assert elapsed[0] < 2.0, f"long poll took {elapsed[0]:.2f} s after the round changed"


def test_long_poll_without_work_returns_empty_after_the_wait(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one", "two"], rounds=2, final_validation=False)
    for name in ("one", "two"):
        aggregator.get_tasks(name)
    complete_round(aggregator, ["one"])

    # Execute: an unrelated result arrives meanwhile; it must not end the wait early
    timer = threading.Timer(
        0.1,
        lambda: submit(aggregator, "two", 0, "aggregated_model_validation", 5, {"acc": 1.0}, {}),
    )
    timer.start()
    started = time.monotonic()
    assignment = aggregator.get_tasks("one", wait=0.5)
    elapsed = time.monotonic() - started
    timer.join()

    # Assert
    assert assignment == TaskAssignment(0, [], quit=False, final_validation=False)
    assert 0.45 <= elapsed < 2.0


def test_a_collaborator_asking_after_the_end_is_told_to_quit(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one", "two"], rounds=1, final_validation=False)
    complete_round(aggregator, ["one", "two"])

    # Execute
    late = aggregator.get_tasks("one", wait=5)

    # Assert
    assert late.quit and not late.tasks
    assert aggregator.finished_event.is_set()


@pytest.mark.parametrize(
    ("final_validation", "rounds", "expected"),
    [
        (False, 2, [False, True]),  # the last training round is the last
        (True, 2, [False, False, True]),  # the final validation round is
        (True, 1, [False, True]),
    ],
)
def test_only_the_round_nothing_follows_is_marked_last(
    tmp_path, final_validation, rounds, expected
):
    # Prepare
    aggregator = make_aggregator(
        tmp_path, ["one", "two"], rounds=rounds, final_validation=final_validation
    )
    marks = []

    # Execute
    while not aggregator.done:
        number = aggregator.round_num
        assignments = [aggregator.get_tasks(name) for name in ("one", "two")]
        assert {a.last for a in assignments} in ({True}, {False})
        marks.append(assignments[0].last)
        if aggregator.round.final_validation:
            for name in ("one", "two"):
                submit(aggregator, name, number, "aggregated_model_validation", 10, {"acc": 1}, {})
        else:
            complete_round(aggregator, ["one", "two"], number)

    # Assert
    assert marks == expected


def test_collaborators_done_with_the_last_round_are_released_without_asking(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one", "two"], rounds=1, final_validation=False)
    for name in ("one", "two"):
        assert aggregator.get_tasks(name).last

    # Execute
    complete_round(aggregator, ["one"])
    after_one = aggregator.finished_event.is_set()
    complete_round(aggregator, ["two"])

    # Assert: the experiment ends as the last result lands, with no "quit" sent to anyone
    assert aggregator.released == {"one", "two"}
    assert not after_one
    assert aggregator.done and aggregator.finished_event.is_set()
    assert aggregator.quit_sent == set()


# ---------------------------------------------------------------------- cut-off with a fake clock
def cutoff_federation(tmp_path: Path, rounds: int = 2) -> tuple[Aggregator, FakeClock]:
    clock = FakeClock(1000.0)
    aggregator = make_aggregator(
        tmp_path,
        ["fast", "slow"],
        rounds=rounds,
        policy=CutoffTimePolicy(straggler_cutoff_time=10, minimum_reporting=1),
        clock=clock,
        final_validation=False,
    )
    for name in ("fast", "slow"):
        assert aggregator.get_tasks(name, wait=0).tasks == ORDER
    return aggregator, clock


def test_a_straggler_cut_off_in_the_last_round_is_not_released(tmp_path):
    # Prepare
    aggregator, clock = cutoff_federation(tmp_path, rounds=1)
    assert aggregator.round.number == 0 and aggregator.round.last
    complete_round(aggregator, ["fast"])

    # Execute
    clock.now += 11
    aggregator.tick()

    # Assert: the round closed without "slow"; the end waits until it hears "quit"
    assert aggregator.done and aggregator.released == {"fast"}
    assert not aggregator.finished_event.is_set()
    assert aggregator.get_tasks("slow").quit
    assert aggregator.finished_event.is_set()


def test_cutoff_closes_the_round_on_tick_without_the_straggler(tmp_path):
    # Prepare
    aggregator, clock = cutoff_federation(tmp_path)
    complete_round(aggregator, ["fast"])
    clock.now = 1009.0
    assert aggregator.tick() == 1010.0
    assert aggregator.round_num == 0

    # Execute
    clock.now = 1010.5
    aggregator.tick()

    # Assert
    assert aggregator.round_num == 1
    (summary,) = aggregator.round_history
    assert (summary.collaborators, summary.stragglers) == (["fast"], ["slow"])
    assert_same_model(aggregator.global_model, good_train())  # fast's model alone
    assert summary.metrics["train/loss"] == 1.0


def test_straggler_s_late_result_is_refused_and_it_gets_the_next_round(tmp_path):
    # Prepare
    aggregator, clock = cutoff_federation(tmp_path)
    complete_round(aggregator, ["fast"])
    clock.now = 1011.0
    aggregator.tick()
    model_after_cutoff = {k: v.copy() for k, v in aggregator.global_model.items()}

    # Execute
    with pytest.raises(ProtocolError) as late_result:
        submit(aggregator, "slow", 0, "aggregated_model_validation", 5, {"acc": 0.1}, {})
    with pytest.raises(ProtocolError) as late_model:
        aggregator.get_global_model("slow", 0)
    next_round = aggregator.get_tasks("slow", wait=0)

    # Assert
    assert late_result.value.code in ("FX-ROUND-002", "FX-ROUND-003")
    assert late_model.value.code == "FX-ROUND-001"
    assert (next_round.round, next_round.tasks) == (1, ORDER)
    assert_same_model(aggregator.global_model, model_after_cutoff)
    assert spool_files(tmp_path) == []


def test_cutoff_waits_for_a_result_that_is_streaming_in(tmp_path):
    # Prepare: "slow" is uploading its training result when the cut-off passes
    aggregator, clock = cutoff_federation(tmp_path)
    complete_round(aggregator, ["fast"])
    trained = {k: trained_value(v, 3.0) for k, v in INITIAL.items()}
    upload = aggregator.open_result("slow", 0, "train", 30, {"loss": 3.0}, len(trained))
    upload.add("w", trained["w"])
    clock.now = 1020.0
    aggregator.tick()
    assert aggregator.round_num == 0

    # Execute
    upload.add("b", trained["b"])
    upload.add("scale", trained["scale"])
    upload.commit()

    # Assert: the round closed when the upload landed, and the upload counts
    assert aggregator.round_num == 1
    assert aggregator.round_history[0].stragglers == ["slow"]
    assert_same_model(aggregator.global_model, weighted_model([(good_train(), 10), (trained, 30)]))


def test_cutoff_never_closes_a_round_nobody_finished(tmp_path):
    # Prepare
    aggregator, clock = cutoff_federation(tmp_path)

    # Execute
    clock.now = 5000.0
    aggregator.tick()

    # Assert
    assert aggregator.round_num == 0
    assert aggregator.round_history == []


def test_long_poll_with_an_injected_clock_still_ends(tmp_path):
    # Prepare
    aggregator, clock = cutoff_federation(tmp_path)
    complete_round(aggregator, ["fast"])
    answer: list[TaskAssignment] = []
    waiter = threading.Thread(
        target=lambda: answer.append(aggregator.get_tasks("fast", wait=0.2)), daemon=True
    )

    # Execute
    waiter.start()
    waiter.join(timeout=1.5)
    returned = bool(answer)
    clock.now += 1.0  # release the waiter either way
    waiter.join(timeout=2)

    # Assert
    assert returned, "get_tasks(wait=0.2) was still blocked after 1.5 s"


def test_tensors_sent_with_a_validation_result_never_reach_the_global_model(tmp_path):
    # Prepare
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1, final_validation=False)
    aggregator.get_tasks("one")
    bogus = {k: v + 100 for k, v in INITIAL.items()}

    # Execute: refusing the tensors (FX-DATA-012) or ignoring them are both fine
    try:
        submit(aggregator, "one", 0, "aggregated_model_validation", 5, {"acc": 0.5}, bogus)
    except ProtocolError as refused:
        assert refused.code == "FX-DATA-012"
        submit(aggregator, "one", 0, "aggregated_model_validation", 5, {"acc": 0.5}, {})
    submit(aggregator, "one", 0, "train", 10, {"loss": 1.0}, {})
    submit(aggregator, "one", 0, "locally_tuned_model_validation", 5, {"acc": 0.5}, {})

    # Assert
    assert aggregator.done
    assert_same_model(aggregator.global_model, INITIAL)


def lone_collaborator(tmp_path, connection=InProcessConnection) -> Collaborator:
    """Collaborator "one", alone in a one-round federation, talking through ``connection``."""
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1, final_validation=False)
    return Collaborator(
        collaborator_name="one",
        connection=connection(aggregator, "one"),
        task_runner=NumpyRunner(*PROFILES["one"]),
        tasks=TASKS,
    )


class SlowToSend(InProcessConnection):
    """An aggregator out of reach for a while: each result takes 0.4 s to get through."""

    def submit(self, *args, **kwargs) -> int:
        time.sleep(0.4)
        return super().submit(*args, **kwargs)


def test_a_task_s_time_is_logged_apart_from_the_time_its_result_took_to_send(tmp_path, caplog):
    # a task's line counted the upload's retries as the task's time ("train done in 47.69 s"
    # when training took 8 s and the aggregator was down for 40)
    collaborator = lone_collaborator(tmp_path, SlowToSend)

    with caplog.at_level(logging.INFO, logger="fedrun.collaborator"):
        collaborator.run()

    lines = [r.getMessage() for r in caplog.records if "train done" in r.getMessage()]
    assert len(lines) == 1
    match = re.fullmatch(
        r"round 0: train done in (\S+) s, its result \(.+\) sent in (\S+) s", lines[0]
    )
    assert match is not None, lines[0]
    assert float(match[1]) < 0.3 and float(match[2]) >= 0.4


class SlowToDownload(InProcessConnection):
    """A slow link: the global model takes 1.1 s to arrive."""

    def get_global_model(self, round_num: int, expected=None) -> dict[str, np.ndarray]:
        time.sleep(1.1)
        return super().get_global_model(round_num, expected)


def test_a_slow_download_has_its_own_line_and_is_not_counted_as_the_task_s_time(tmp_path, caplog):
    # a validation that does no work said "done in 83.87 s" on a slow link, the download
    # unmentioned
    collaborator = lone_collaborator(tmp_path, SlowToDownload)

    with caplog.at_level(logging.INFO, logger="fedrun.collaborator"):
        collaborator.run()

    lines = [r.getMessage() for r in caplog.records]
    downloads = [line for line in lines if "global model downloaded" in line]
    assert downloads and re.fullmatch(
        r"round 0: global model downloaded \(.+ in 1\.\d\d s\)", downloads[0]
    ), downloads
    validation = next(line for line in lines if "aggregated_model_validation done" in line)
    assert float(re.search(r"done in (\S+) s", validation)[1]) < 0.5, validation


def test_a_collaborator_says_it_started_once_when_a_closed_round_makes_it_ask_again(
    tmp_path, caplog
):
    # a round closed while it worked (RoundClosed) makes the node call run() again: it logged
    # "collaborator X started" a second time
    collaborator = lone_collaborator(tmp_path)

    with caplog.at_level(logging.INFO, logger="fedrun.collaborator"):
        collaborator.run()
        collaborator.run()  # the experiment is over: it is told to stop at once

    assert [r.getMessage() for r in caplog.records].count("collaborator one started") == 1


def test_a_round_with_many_metrics_lists_some_in_its_log_line_and_points_to_the_rest(
    tmp_path, caplog
):
    # 4096 metrics of 128 characters made a 600 KB log line every round
    aggregator = make_aggregator(tmp_path, ["one"], rounds=1, final_validation=False)
    aggregator.get_tasks("one")
    many = {f"class_{i:04d}_accuracy": 0.5 for i in range(100)}
    submit(aggregator, "one", 0, "aggregated_model_validation", 5, many, {})

    with caplog.at_level(logging.INFO, logger="fedrun.aggregator"):
        complete_round(aggregator, ["one"])

    (line,) = [r.getMessage() for r in caplog.records if "round 0 finished" in r.getMessage()]
    assert line.count("=") == 24  # metrics listed
    assert line.endswith(" more in logs/metrics.jsonl") and len(line) < 2000
    assert len(aggregator.round_history[0].metrics) > 100  # every metric is still recorded
