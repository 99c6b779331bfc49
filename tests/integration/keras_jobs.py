"""Federations of the Keras templates shared by the torch-backend and TensorFlow-backend tests."""

from __future__ import annotations

from pathlib import Path

from fedrun.simulate.local import LocalFederation


def federate(
    workspace: Path, template: str, plan_set: list[str], timeout: float = 420
) -> dict[str, float]:
    """One round, two collaborators, mutual TLS; every process must exit 0. Final metrics."""
    result = LocalFederation(
        workspace, template=template, collaborators=2, rounds=1, plan_set=plan_set, tls=True
    ).run(timeout=timeout)
    assert set(result.exit_codes.values()) == {0}, result.exit_codes
    return result.final_metrics


def collaborator_log(workspace: Path) -> str:
    return (workspace / "logs" / "collaborator1.out").read_text(errors="replace")


def small_brats_plan(data: Path) -> list[str]:
    """tf_2dunet on generated 40x40x10 volumes: 32-pixel crops, 8 base filters."""
    return [
        f"data_loader.data_dir={data}",
        "data_loader.crop_size=32",
        "data_loader.image_size=32",
        "task_runner.base_filters=8",
    ]
