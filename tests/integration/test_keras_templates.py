"""Every Keras template of the seed's catalogue trains a round in a real local federation.

One aggregator and two collaborator processes talk gRPC over mutual TLS on 127.0.0.1. The MNIST
templates read the real MNIST files (``$FEDRUN_MNIST_DIR``); the histology and BraTS templates
read small data sets that the tests write in the real on-disk formats (class folders of TIFF
tiles; subject folders of gzipped NIfTI-1 volumes), so the real loading code runs. Keras runs
on the torch backend, except for keras/jax/mnist, which runs on JAX where jax is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
    pytest.skip(
        "Keras 3 and torch are needed (pip install 'fedrun[keras,torch]')", allow_module_level=True
    )

from keras_jobs import collaborator_log, federate, small_brats_plan  # noqa: E402

from fedrun.data.brats import write_synthetic_brats  # noqa: E402
from fedrun.data.histology import HISTOLOGY_FOLDER, write_synthetic_histology  # noqa: E402
from fedrun.data.mnist import default_candidates, find_mnist_dir  # noqa: E402
from fedrun.runners.keras import _loaded_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def torch_backend(monkeypatch):
    """Collaborators (and the in-process plan initialisation) run Keras on torch."""
    loaded = _loaded_backend()
    if loaded not in (None, "torch"):
        pytest.skip(f"Keras already runs the {loaded} backend in this process")
    monkeypatch.setenv("KERAS_BACKEND", "torch")


@pytest.fixture
def mnist_files(monkeypatch) -> Path:
    """The real MNIST files; exported so the collaborator processes find them too."""
    found = find_mnist_dir(default_candidates())
    if found is None:
        pytest.skip("the MNIST files are not here; set FEDRUN_MNIST_DIR to their folder")
    monkeypatch.setenv("FEDRUN_MNIST_DIR", str(found))
    return found


@pytest.fixture(scope="module")
def histology_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("histology-data")
    write_synthetic_histology(base / HISTOLOGY_FOLDER, per_class=6)
    return base


def test_keras_mnist_two_collaborators_reach_95_percent(tmp_path, torch_backend, mnist_files):
    """keras/mnist, full MNIST shards (30,000 images each), one round: accuracy >= 0.95."""
    workspace = tmp_path / "ws"
    metrics = federate(workspace, "keras/mnist", [])
    assert metrics["aggregated_model_validation/accuracy"] >= 0.95, metrics
    assert "backend torch" in collaborator_log(workspace)

    # the trained model exports to the native .keras format and loads back
    from fedrun.model import get_model, save_native

    runner = get_model(workspace / "plan" / "plan.yaml", model_protobuf_path="save/last.pbuf")
    written = save_native(runner, workspace / "mnist.keras")
    assert zipfile.is_zipfile(written)
    fresh = get_model(workspace / "plan" / "plan.yaml", model_protobuf_path="save/init.pbuf")
    fresh.load_native(written)
    expected = runner.get_tensor_dict()
    for name, value in fresh.get_tensor_dict().items():
        assert (value == expected[name]).all(), name


JAX_FEDERATION = """
    import json, sys
    from pathlib import Path
    from fedrun.simulate.local import LocalFederation
    result = LocalFederation(
        Path(sys.argv[1]), template="keras/jax/mnist", collaborators=2, rounds=1, tls=True,
        plan_set=["data_loader.max_train_samples=4000", "data_loader.max_valid_samples=992"],
    ).run(timeout=420)
    print(json.dumps(result.final_metrics))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="jax is not installed (pip install jax, part of fedrun[all] and fedrun[dev])",
)
def test_keras_jax_mnist_trains_on_jax(tmp_path, mnist_files):
    """keras/jax/mnist picks JAX by itself (KERAS_BACKEND unset), in a fresh process.

    The plan initialisation and both collaborators compile the same XLA programs; JAX's
    persistent compilation cache lets the later processes reuse them (it only saves time).
    Shard sizes are multiples of the batch size, so each function compiles for one shape.
    """
    workspace = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = str(ROOT)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(JAX_FEDERATION), str(workspace)],
        capture_output=True,
        text=True,
        env=env,
        timeout=480,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["aggregated_model_validation/accuracy"] > 0.8, metrics
    assert "backend jax" in collaborator_log(workspace)
    assert "backend jax" in (workspace / "logs" / "collaborator2.out").read_text()


@pytest.mark.parametrize("template", ["keras/histology", "tf_cnn_histology"])
def test_histology_templates_train_on_image_folders(
    tmp_path, torch_backend, histology_dir, template
):
    workspace = tmp_path / "ws"
    metrics = federate(workspace, template, [f"data_loader.data_dir={histology_dir}"])
    accuracy = metrics["aggregated_model_validation/accuracy"]
    assert 0.0 <= accuracy <= 1.0, metrics
    log = collaborator_log(workspace)
    assert "histology: 20 training and 4 validation tiles" in log
    assert "train done" in log


def test_tf_2dunet_trains_on_nifti_volumes(tmp_path, torch_backend):
    data = write_synthetic_brats(tmp_path / "brats", subjects=4, shape=(40, 40, 10))
    workspace = tmp_path / "ws"
    metrics = federate(workspace, "tf_2dunet", small_brats_plan(data))
    dice = metrics["aggregated_model_validation/dice"]
    assert math.isfinite(dice) and 0.0 <= dice <= 1.0, metrics
    assert "BraTS: " in collaborator_log(workspace)
