"""A task's kwargs against its method's parameters, checked when a collaborator is built: a key
the method cannot take fails before round 0; a key fedrun's own method would ignore is warned
about (a misspelled `epoch` used to train the default one epoch silently)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from tiny_torch import Tiny

from fedrun.errors import PlanError
from fedrun.plan.components import check_task_kwargs
from fedrun.plan.loader import Plan


class StrictRunner:
    """User code whose task methods take exactly what they use (no **kwargs)."""

    def train_task(
        self, col_name: str, round_num: int, input_tensor_dict: Any, epochs: int = 1,
        metrics: Any = None,
    ):  # fmt: skip
        raise AssertionError("not called")

    def validate_task(
        self, col_name: str, round_num: int, input_tensor_dict: Any, apply: str = "global",
        metrics: Any = None,
    ):  # fmt: skip
        raise AssertionError("not called")


class OpenRunner(StrictRunner):
    """User code that takes anything: nothing can be said about unknown keys."""

    def train_task(self, col_name: str, round_num: int, input_tensor_dict: Any, **kwargs: Any):
        raise AssertionError("not called")


def misspelled(plan_path) -> Plan:
    return Plan.load(plan_path, overrides=["tasks.train.kwargs.epoch=2"])


def test_the_plans_own_kwargs_pass(plan_path, caplog):
    plan = Plan.load(plan_path)
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        check_task_kwargs(plan, Tiny())
    assert not caplog.records


def test_a_key_the_method_cannot_take_fails_with_did_you_mean(plan_path):
    with pytest.raises(PlanError) as caught:
        check_task_kwargs(misspelled(plan_path), StrictRunner())

    assert caught.value.code == "FX-PLAN-033"
    text = str(caught.value)
    assert "tasks.train.kwargs.epoch" in text and "did you mean 'epochs'?" in text


def test_a_key_fedruns_method_would_ignore_is_warned_about(plan_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        check_task_kwargs(misspelled(plan_path), Tiny())

    (record,) = caplog.records
    assert "tasks.train.kwargs.epoch is not used by Tiny.train_task" in record.getMessage()
    assert "did you mean 'epochs'?" in record.getMessage()


def test_openfl_s_use_tqdm_is_taken_silently_by_fedrun_s_methods(plan_path, caplog):
    plan = Plan.load(plan_path, overrides=["tasks.train.kwargs.use_tqdm=true"])

    with caplog.at_level(logging.WARNING, logger="fedrun"):
        check_task_kwargs(plan, Tiny())
    assert not caplog.records

    with pytest.raises(PlanError):  # a method that cannot take it would fail when called
        check_task_kwargs(plan, StrictRunner())


def test_user_methods_taking_anything_are_trusted(plan_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        check_task_kwargs(misspelled(plan_path), OpenRunner())
    assert not caplog.records
