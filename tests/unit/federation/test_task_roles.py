"""Which tasks train and which validate, and the best model they pick: said plainly, checked
before the start, never guessed from a substring of a function's name."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from result_uploads import INITIAL, make, send, trained

from fedrun.errors import PlanError
from fedrun.federation.aggregator import looks_like_a_loss
from fedrun.federation.tasks import TaskSpec


@pytest.mark.parametrize(
    ("spec", "validates"),
    [
        (TaskSpec("t", "train_task"), False),
        (TaskSpec("t", "train_validated"), False),  # "valid" in a training function's name
        (TaskSpec("t", "train_batches"), False),
        (TaskSpec("t", "my_training_step"), False),
        (TaskSpec("v", "validate_task", {"apply": "global"}), True),
        (TaskSpec("v", "evaluate", {"apply": "global"}), True),
        (TaskSpec("v", "validate"), True),  # OpenFL 1.6 Keras name
        (TaskSpec("v", "validation_step"), True),
        # OpenFL weighs a task whose name holds "valid" by the validation data's size
        (TaskSpec("aggregated_model_validation", "evaluate"), True),
        (TaskSpec("valid_then_train", "train_task"), False),
    ],
)
def test_a_task_validates_when_it_carries_apply_or_is_a_validation_method(spec, validates):
    assert spec.is_validation is validates
    assert spec.kind.startswith("validates" if validates else "trains")


def test_a_training_task_that_sends_no_tensors_is_said_to_be_one(tmp_path: Path, caplog):
    # Prepare: `b`'s train result holds no tensors (a validation function without `apply`)
    agg = make(tmp_path)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        send(agg, "a", trained(1.0), 10, None)
        send(agg, "b", {}, 10, None)

    # Assert: the warning names the task's role and the fix
    assert "b's result for train holds no model tensors" in caplog.text
    assert "`apply: global`" in caplog.text


@pytest.mark.parametrize(
    ("metric", "loss"),
    [
        ("aggregated_model_validation/val_mse", True),
        ("v/mean_squared_error", True),
        ("v/cross_entropy", True),
        ("v/binary_crossentropy", True),
        ("v/loss", True),
        ("v/accuracy", False),
        ("v/acc", False),
        ("v/dice", False),
        ("v/f1_score", False),
    ],
)
def test_a_metric_named_like_a_loss_is_best_when_lowest(metric, loss):
    assert looks_like_a_loss(metric) is loss


def _validate(agg, who: str, value: float) -> None:
    upload = agg.open_result(who, agg.round_num, "validate", 5, {"mse": value}, 0)
    upload.commit()


def test_without_best_model_mode_a_loss_keeps_the_lowest(tmp_path: Path, caplog):
    # Prepare: a validation that reports a loss, falling then rising
    agg = make(tmp_path)

    # Execute: round 0 scores 4.0, round 1 (the first trained model) 1.0
    with caplog.at_level(logging.INFO, logger="fedrun.aggregator"):
        for value in (4.0, 1.0):
            for who in ("a", "b"):
                _validate(agg, who, value)
                send(agg, who, trained(0.5), 10, None)

    # Assert: the lower score won, and the choice was said
    assert agg.best_model_mode == "min"
    assert agg.best_score == 1.0 and agg.best_round == 1
    assert "best model: the lowest validate/mse (best_model_mode min" in caplog.text


def test_a_set_best_model_mode_is_kept(tmp_path: Path):
    agg = make(tmp_path, best_model_mode="max")
    for value in (4.0, 1.0):
        for who in ("a", "b"):
            _validate(agg, who, value)
            send(agg, who, trained(0.5), 10, None)

    assert agg.best_score == 4.0 and agg.best_round == 0


@pytest.mark.parametrize("metric", ["train/loss", "accuracy", "nothing/acc"])
def test_a_best_model_metric_of_no_global_validation_is_refused(tmp_path: Path, metric):
    with pytest.raises(PlanError) as caught:
        make(tmp_path, best_model_metric=metric)

    assert caught.value.code == "FX-PLAN-038"
    assert repr(metric) in caught.value.message
    assert "validate" in caught.value.fix  # the task that scores the global model


def test_a_bare_metric_name_is_told_to_name_its_task(tmp_path: Path):
    with pytest.raises(PlanError) as caught:
        make(tmp_path, best_model_metric="acc")

    assert "names no task: it is written task/metric" in caught.value.message
    assert "e.g. validate/acc" in caught.value.fix


def test_without_a_global_validation_no_best_model_is_said_at_the_start(tmp_path, caplog):
    from fedrun.aggregation import WeightedAverage
    from fedrun.federation.aggregator import Aggregator
    from fedrun.federation.assigner import RandomGroupedAssigner

    groups = [{"name": "g", "percentage": 1.0, "tasks": ["train"]}]
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        Aggregator(
            plan_hash="h" * 64,
            federation_id="fed",
            collaborators=["a"],
            tasks={"train": TaskSpec("train", "train_task")},
            assigner=RandomGroupedAssigner(groups, ["a"], rounds_to_train=1),
            rounds_to_train=1,
            initial_model={k: np.array(v) for k, v in INITIAL.items()},
            aggregation_functions={"train": WeightedAverage()},
            spool_dir=tmp_path / "spool",
        )

    assert "no task of the plan validates the global model" in caplog.text
