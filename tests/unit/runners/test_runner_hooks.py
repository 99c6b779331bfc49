"""What users' hooks return and how their data loaders are called: a wrong return value or a
bad sample count is a coded error naming the hook, never a traceback or a silent clamp, and a
loader written for OpenFL (no batch_size argument) works unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tiny_torch import Loader, Tiny

from fedrun.errors import DataError, PlanError
from fedrun.federation.tasks import sample_count
from fedrun.runners.base import Metric, metric_values


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (Metric("acc", 0.5), {"acc": 0.5}),
        (Metric("acc", np.float32(0.25)), {"acc": 0.25}),
        (Metric("acc", torch.tensor([0.75])), {"acc": 0.75}),
        ({"loss": 1, "acc": np.array(0.5)}, {"loss": 1.0, "acc": 0.5}),
        ([Metric("a", 1.0), ("b", 2.0)], {"a": 1.0, "b": 2.0}),
        (("loss", 0.5), {"loss": 0.5}),
    ],
)
def test_every_documented_return_value_becomes_named_numbers(returned, expected) -> None:
    assert metric_values(returned, "Runner.validate_") == expected


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        (0.93, "a float (0.93)"),
        (None, "nothing (None)"),
        (torch.tensor(0.5), "a Tensor"),
        ([1.0, 2.0], "a list holding float"),
        (Metric("val_mse", np.array([1.0, 99.0, 98.0])), "with 3 values"),
        (Metric("acc", "high"), "not a number"),
        (Metric(5, 0.5), "a metric named 5"),
    ],
)
def test_anything_else_is_a_coded_error_naming_the_hook(returned, said) -> None:
    with pytest.raises(PlanError) as caught:
        metric_values(returned, "Runner.validate_")

    assert caught.value.code == "FX-MODEL-005"
    assert caught.value.message.startswith("Runner.validate_ returned ")
    assert said in caught.value.message
    assert "Metric(" in caught.value.fix


class FloatReturning(Tiny):
    def validate_(self, validation_dataloader: Any) -> Any:
        return 0.93


def test_the_torch_runner_names_its_hook_when_it_returns_a_float() -> None:
    runner = FloatReturning()

    with pytest.raises(PlanError) as caught:
        runner.validate_task("one", 0, runner.get_tensor_dict(), apply="global")

    assert caught.value.code == "FX-MODEL-005"
    assert "FloatReturning.validate_ returned a float" in caught.value.message


class OpenFLStyleLoader(Loader):
    """Overrides the loaders the way OpenFL's runners call them: with no arguments."""

    def get_train_loader(self) -> Any:  # type: ignore[override]
        return super().get_train_loader(batch_size=4)

    def get_valid_loader(self) -> Any:  # type: ignore[override]
        return super().get_valid_loader(batch_size=4)


def test_a_loader_written_for_openfl_is_called_without_batch_size() -> None:
    runner = Tiny()
    runner.data_loader = OpenFLStyleLoader()
    model = runner.get_tensor_dict()

    trained = runner.train_task("one", 0, model, epochs=1, batch_size=16)
    validated = runner.validate_task("one", 0, model, apply="global", batch_size=16)

    assert trained.data_size == 32 and len(trained.metrics) == 1
    assert validated.data_size == 32 and 0.0 <= validated.metrics["accuracy"] <= 1.0


@pytest.mark.parametrize("value", [32, np.int64(32), 32.0])
def test_a_sample_count_is_a_whole_number(value) -> None:
    assert sample_count(value, "Loader.get_train_data_size() returned") == 32


@pytest.mark.parametrize("value", [-5, "abc", 2.5, None, True])
def test_a_bad_sample_count_names_the_loader_s_method(value) -> None:
    with pytest.raises(DataError) as caught:
        sample_count(value, "Loader.get_train_data_size() returned")

    assert caught.value.code == "FX-DATA-011"
    assert "Loader.get_train_data_size() returned" in caught.value.message


def test_a_negative_sample_count_from_the_loader_stops_the_task() -> None:
    runner = Tiny()
    runner.data_loader.get_train_data_size = lambda: -5  # type: ignore[method-assign]

    with pytest.raises(DataError) as caught:
        runner.train_task("one", 0, runner.get_tensor_dict(), epochs=1)

    assert caught.value.code == "FX-DATA-011" and "returned -5" in caught.value.message


class BFloat16(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.to(torch.bfloat16)


def test_a_bfloat16_model_is_a_coded_error_naming_the_tensor() -> None:
    with pytest.raises(PlanError) as caught:
        BFloat16().get_tensor_dict()

    assert caught.value.code == "FX-MODEL-006"
    assert "'fc.weight' of the model is bfloat16" in caught.value.message


def test_an_export_has_no_optimizer_state_unless_the_optimizer_has_some(tmp_path) -> None:
    fresh = Tiny()  # its optimizer was made in __init__ and never stepped
    fresh.save_native(tmp_path / "fresh.pt")
    trained = Tiny()
    trained.train_task("one", 0, trained.get_tensor_dict(), epochs=1)
    trained.save_native(tmp_path / "trained.pt")

    assert set(torch.load(tmp_path / "fresh.pt")) == {"model_state_dict"}
    assert set(torch.load(tmp_path / "trained.pt")) == {"model_state_dict", "optimizer_state_dict"}


def test_a_model_with_federated_optimizer_state_exports_it(tmp_path) -> None:
    # Prepare: a digits workspace's model after one training task, with its optimizer state
    # (what last.pbuf holds under opt_treatment CONTINUE_GLOBAL)
    import fedrun
    from fedrun.plan.components import build_task_runner
    from fedrun.plan.loader import Plan
    from fedrun.storage.model_file import save_model
    from fedrun.workspace.create import create_workspace

    ws = create_workspace(tmp_path / "ws", "torch/digits")
    (ws / "plan" / "data.yaml").write_text("one,1\n")
    plan = Plan.load(ws / "plan" / "plan.yaml")
    runner = build_task_runner(plan, "one")
    runner.train_task("one", 0, runner.get_tensor_dict(), epochs=1)
    tensors = runner.get_tensor_dict(with_opt_vars=True)
    assert any(name.startswith("__opt_") for name in tensors)
    save_model(tmp_path / "last.pbuf", tensors, round_num=1, plan_hash=plan.hash, kind="last")

    # Execute
    loaded = fedrun.get_model(ws / "plan" / "plan.yaml", None, None, tmp_path / "last.pbuf")
    loaded.save_native(tmp_path / "model.pt")

    # Assert: the export holds the optimizer state the model carried
    exported = torch.load(tmp_path / "model.pt")["optimizer_state_dict"]["state"]
    expected = runner.optimizer.state_dict()["state"]
    assert exported.keys() == expected.keys()
    for index, entries in expected.items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(exported[index][key]), torch.as_tensor(value))
