"""opt_treatment in the PyTorch runner: RESET really resets, CONTINUE_LOCAL keeps, GLOBAL loads."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_torch import Tiny

from fedrun.errors import PlanError


def _two_rounds(treatment: str) -> dict[str, np.ndarray]:
    runner = Tiny()
    runner.set_optimizer_treatment(treatment)
    model = runner.get_tensor_dict()
    first = runner.train_task("c", 0, model, epochs=1)
    runner.train_task("c", 1, first.tensors, epochs=1)
    return runner.get_tensor_dict(with_opt_vars=True)


def test_reset_and_continue_local_differ_after_round_two() -> None:
    reset = _two_rounds("RESET")
    local = _two_rounds("CONTINUE_LOCAL")
    steps_per_epoch = 4  # 32 samples / batch 8
    assert float(reset["__opt_state_0_step"]) == steps_per_epoch
    assert float(local["__opt_state_0_step"]) == 2 * steps_per_epoch
    assert not np.allclose(reset["__opt_state_0_exp_avg"], local["__opt_state_0_exp_avg"])


def test_only_continue_global_returns_optimizer_state() -> None:
    for treatment, expected in (
        ("RESET", False),
        ("CONTINUE_LOCAL", False),
        ("CONTINUE_GLOBAL", True),
    ):
        runner = Tiny()
        runner.set_optimizer_treatment(treatment)
        out = runner.train_task("c", 0, runner.get_tensor_dict(), epochs=1)
        assert any(k.startswith("__opt_") for k in out.tensors) is expected, treatment


def test_continue_global_loads_the_received_optimizer_state() -> None:
    donor = Tiny()
    donor.set_optimizer_treatment("CONTINUE_GLOBAL")
    trained = donor.train_task("c", 0, donor.get_tensor_dict(), epochs=3).tensors
    receiver = Tiny()
    receiver.set_optimizer_treatment("CONTINUE_GLOBAL")
    receiver.set_tensor_dict(trained, with_opt_vars=True)
    state = receiver.get_tensor_dict(with_opt_vars=True)
    assert float(state["__opt_state_0_step"]) == 12
    np.testing.assert_array_equal(state["__opt_state_0_exp_avg"], trained["__opt_state_0_exp_avg"])


def test_unknown_treatment_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="opt_treatment"):
        Tiny().set_optimizer_treatment("SOMETIMES")
