"""An optimizer from ``build_optimizer`` is built when training first needs it, never by commands
that only read the weights, and trains exactly as one set in ``__init__``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_torch import Loader
from tiny_torch import Tiny as Eager

from fedrun.errors import PlanError
from fedrun.runners.torch import PyTorchTaskRunner
from fedrun.workspace.create import create_workspace


class Lazy(PyTorchTaskRunner):
    def __init__(self, **kwargs) -> None:
        super().__init__(device="cpu", data_loader=Loader(), **kwargs)
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)
        self.builds = 0

    def build_optimizer(self) -> torch.optim.Optimizer:
        self.builds += 1
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def forward(self, x):
        return self.fc(x)


def _train_twice(runner: PyTorchTaskRunner, treatment: str) -> dict[str, np.ndarray]:
    runner.set_optimizer_treatment(treatment)
    first = runner.train_task("c", 0, runner.get_tensor_dict(), epochs=1)
    runner.train_task("c", 1, first.tensors, epochs=1)
    return runner.get_tensor_dict(with_opt_vars=True)


def test_reading_and_loading_weights_builds_no_optimizer() -> None:
    runner = Lazy()
    weights = runner.get_tensor_dict(with_opt_vars=True)
    runner.set_tensor_dict(weights, with_opt_vars=True)
    runner.reset_opt_vars()
    runner.validate_task("c", 0, weights)

    assert runner.builds == 0
    assert not any(name.startswith("__opt_") for name in weights)


@pytest.mark.parametrize("treatment", ["RESET", "CONTINUE_LOCAL", "CONTINUE_GLOBAL"])
def test_a_lazy_optimizer_trains_as_an_eager_one(treatment: str) -> None:
    lazy = Lazy()
    got = _train_twice(lazy, treatment)
    expected = _train_twice(Eager(), treatment)

    assert lazy.builds == 1
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_received_optimizer_state_builds_and_fills_the_optimizer() -> None:
    donor = Lazy()
    donor.set_optimizer_treatment("CONTINUE_GLOBAL")
    trained = donor.train_task("c", 0, donor.get_tensor_dict(), epochs=2).tensors
    receiver = Lazy()

    receiver.set_tensor_dict(trained, with_opt_vars=True)

    assert receiver.builds == 1
    state = receiver.get_tensor_dict(with_opt_vars=True)
    assert float(state["__opt_state_0_step"]) == 8
    np.testing.assert_array_equal(state["__opt_state_0_exp_avg"], trained["__opt_state_0_exp_avg"])


def test_a_runner_without_any_optimizer_says_how_to_give_it_one() -> None:
    class Bare(Lazy):
        def build_optimizer(self):
            return None

    with pytest.raises(PlanError, match="build_optimizer") as err:
        Bare().train_task("c", 0, Bare().get_tensor_dict(), epochs=1)
    assert err.value.code == "FX-MODEL-003"


def test_native_save_of_an_untrained_runner_builds_no_optimizer(tmp_path: Path) -> None:
    runner = Lazy()
    runner.save_native(tmp_path / "model.pt")
    assert runner.builds == 0

    trained = Lazy()
    trained.train_task("c", 0, trained.get_tensor_dict(), epochs=1)
    trained.save_native(tmp_path / "trained.pt")
    restored = Lazy()
    restored.load_native(tmp_path / "trained.pt")
    assert restored.builds == 1
    assert restored.optimizer.state_dict()["state"][0]["step"] == 4


@pytest.mark.parametrize("template", ["torch/mnist", "torch/digits"])
def test_plan_initialize_of_the_torch_templates_never_imports_torch_dynamo(
    tmp_path: Path, template: str
) -> None:
    """Any torch optimizer imports torch._dynamo (about a second of CPU); initializing a plan
    needs only the weights, so the templates build theirs on first training."""
    ws = create_workspace(tmp_path / "ws", template)
    script = textwrap.dedent(
        """
        import sys
        from fedrun.plan.initialize import initialize_plan
        initialize_plan("plan/plan.yaml", agg_addr="localhost")
        print("dynamo imported:", "torch._dynamo" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ws, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "dynamo imported: False" in done.stdout
    assert (ws / "save" / "init.pbuf").is_file()


def test_optimizer_state_that_does_not_fit_starts_the_round_fresh(caplog) -> None:
    # Prepare: the aggregate holds a moment of another shape (another node's optimizer or model)
    import logging

    donor = Lazy()
    donor.set_optimizer_treatment("CONTINUE_GLOBAL")
    trained = donor.train_task("c", 0, donor.get_tensor_dict(), epochs=1).tensors
    trained["__opt_state_0_exp_avg"] = np.zeros(7, dtype=np.float32)
    receiver = Lazy()
    receiver.set_optimizer_treatment("CONTINUE_GLOBAL")

    # Execute: a round of training from it (loading it as it was failed at the first step)
    with caplog.at_level(logging.WARNING, logger="fedrun.collaborator"):
        result = receiver.train_task("c", 1, trained, epochs=1)

    # Assert
    assert "does not fit this optimizer" in caplog.text
    assert result.tensors["__opt_state_0_exp_avg"].shape == trained["fc.weight"].shape
