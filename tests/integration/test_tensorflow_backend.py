"""The Keras templates on the TensorFlow backend, in a real local federation (mutual TLS).

``tf_cnn_histology`` and ``tf_2dunet`` pick TensorFlow by themselves; ``keras/mnist`` runs on it
with ``KERAS_BACKEND=tensorflow``. Skipped where TensorFlow is not installed: the project's
environment (and CI) installs torch only, so run these in an environment with
``pip install tensorflow-cpu`` (see the README's "What could not be verified here").
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
    pytest.skip("TensorFlow and Keras 3 are not installed", allow_module_level=True)

from keras_jobs import collaborator_log, federate, small_brats_plan  # noqa: E402

from fedrun.data.brats import write_synthetic_brats  # noqa: E402
from fedrun.data.histology import HISTOLOGY_FOLDER, write_synthetic_histology  # noqa: E402
from fedrun.data.mnist import default_candidates, find_mnist_dir  # noqa: E402
from fedrun.runners.keras import _loaded_backend  # noqa: E402


@pytest.fixture
def tensorflow_backend(monkeypatch):
    loaded = _loaded_backend()
    if loaded not in (None, "tensorflow"):
        pytest.skip(f"Keras already runs the {loaded} backend in this process")
    monkeypatch.delenv("KERAS_BACKEND", raising=False)


def federate_on_tensorflow(workspace: Path, template: str, plan_set: list[str]) -> dict[str, float]:
    metrics = federate(workspace, template, plan_set, timeout=600)
    log = collaborator_log(workspace)
    assert "train done" in log
    assert "backend tensorflow" in log, log[-2000:]
    return metrics


def test_tf_cnn_histology_trains_on_tensorflow(tmp_path, tensorflow_backend):
    data = tmp_path / "histology"
    write_synthetic_histology(data / HISTOLOGY_FOLDER, per_class=6)
    metrics = federate_on_tensorflow(
        tmp_path / "ws", "tf_cnn_histology", [f"data_loader.data_dir={data}"]
    )
    assert 0.0 <= metrics["aggregated_model_validation/accuracy"] <= 1.0, metrics


def test_tf_2dunet_trains_on_tensorflow(tmp_path, tensorflow_backend):
    data = write_synthetic_brats(tmp_path / "brats", subjects=4, shape=(40, 40, 10))
    metrics = federate_on_tensorflow(tmp_path / "ws", "tf_2dunet", small_brats_plan(data))
    dice = metrics["aggregated_model_validation/dice"]
    assert math.isfinite(dice) and 0.0 <= dice <= 1.0, metrics


def test_keras_mnist_reaches_95_percent_on_tensorflow(tmp_path, tensorflow_backend, monkeypatch):
    found = find_mnist_dir(default_candidates())
    if found is None:
        pytest.skip("the MNIST files are not here; set FEDRUN_MNIST_DIR to their folder")
    monkeypatch.setenv("FEDRUN_MNIST_DIR", str(found))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    metrics = federate_on_tensorflow(tmp_path / "ws", "keras/mnist", [])
    assert metrics["aggregated_model_validation/accuracy"] >= 0.95, metrics
