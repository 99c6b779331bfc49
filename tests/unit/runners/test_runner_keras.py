"""KerasTaskRunner on the torch backend: tensor names, optimizer treatments, tasks, native files.

Keras fixes its backend per process, so these tests run Keras on torch in the test process;
backend selection errors and the JAX backend run in child processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedrun.data.loader import KerasDataLoader
from fedrun.errors import DataError, PlanError
from fedrun.model import save_native

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
    pytest.skip(
        "Keras 3 and torch are needed (pip install 'fedrun[keras,torch]')", allow_module_level=True
    )

from fedrun.runners import keras as keras_runner  # noqa: E402
from fedrun.runners.keras import OPT_PREFIX, KerasTaskRunner, select_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]

# Keras's torch backend converts tensors with np.array(), which numpy 2 flags; the runner hides
# it, the tests' own conversions (optimizer.iterations, get_weights) need the same filter
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    """Keras on the torch backend in this process (skips if Keras runs another backend here)."""
    loaded = keras_runner._loaded_backend()
    if loaded not in (None, "torch"):
        pytest.skip(f"Keras already runs the {loaded} backend in this process")
    previous = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        select_backend()
    finally:
        if previous is None:
            os.environ.pop("KERAS_BACKEND", None)
        else:
            os.environ["KERAS_BACKEND"] = previous
    return sys.modules["keras"]


class ToyLoader(KerasDataLoader):
    """64 training and 32 validation samples of 6 features, 3 one-hot classes."""

    def __init__(self, train: int = 64, valid: int = 32, batch_size: int = 16) -> None:
        super().__init__(batch_size=batch_size, random_seed=0)
        rng = np.random.default_rng(1)
        centres = rng.normal(0, 3, (3, 6)).astype(np.float32)

        def make(n: int) -> tuple[np.ndarray, np.ndarray]:
            labels = rng.integers(0, 3, n)
            x = centres[labels] + rng.normal(0, 1, (n, 6)).astype(np.float32)
            return x.astype(np.float32), np.eye(3, dtype=np.float32)[labels]

        self.X_train, self.y_train = make(train)
        self.X_valid, self.y_valid = make(valid)
        self.num_classes = 3

    def get_feature_shape(self) -> tuple[int, ...]:
        return (6,)


def make_runner(keras, optimizer: str = "adam", loader=None, treatment: str = "RESET"):
    class ToyRunner(KerasTaskRunner):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            layers = keras.layers
            model = keras.Sequential(
                [
                    keras.Input(shape=self.feature_shape),
                    layers.Dense(8, activation="relu", name="hidden"),
                    layers.BatchNormalization(name="bn"),
                    layers.Dense(3, activation="softmax", name="out"),
                ],
                name="toy",
            )
            opt = {
                "adam": lambda: keras.optimizers.Adam(learning_rate=0.01),
                "adagrad": lambda: keras.optimizers.Adagrad(
                    learning_rate=0.05, initial_accumulator_value=0.1
                ),
            }[optimizer]()
            model.compile(loss="categorical_crossentropy", optimizer=opt, metrics=["accuracy"])
            self.model = model
            self.initialize_tensorkeys_for_functions()

    runner = ToyRunner(data_loader=loader if loader is not None else ToyLoader())
    runner.set_optimizer_treatment(treatment)
    return runner


def iterations(runner) -> int:
    return int(np.asarray(runner.keras.ops.convert_to_numpy(runner.model.optimizer.iterations)))


# ---------------------------------------------------------------------- tensor names
def test_weights_are_named_by_variable_path_and_agree_between_runners(keras):
    a, b = make_runner(keras), make_runner(keras)
    names = list(a.get_tensor_dict())
    assert names == list(b.get_tensor_dict())
    assert "toy/hidden/kernel" in names and "toy/out/bias" in names
    assert "toy/bn/moving_mean" in names  # non-trainable state travels too
    assert not any(n.startswith(OPT_PREFIX) for n in names)
    assert all(isinstance(v, np.ndarray) for v in a.get_tensor_dict().values())


def test_set_tensor_dict_loads_weights_exactly(keras):
    a, b = make_runner(keras), make_runner(keras)
    source = {k: v + 0.5 for k, v in a.get_tensor_dict().items()}
    b.set_tensor_dict(source)
    for name, value in b.get_tensor_dict().items():
        np.testing.assert_array_equal(value, source[name])


def test_set_tensor_dict_refuses_missing_or_misshapen_tensors(keras):
    runner = make_runner(keras)
    tensors = runner.get_tensor_dict()
    with pytest.raises(PlanError) as missing:
        runner.set_tensor_dict({k: v for k, v in tensors.items() if k != "toy/out/bias"})
    assert missing.value.code == "FX-MODEL-001" and "toy/out/bias" in missing.value.message
    tensors["toy/out/bias"] = np.zeros(4, np.float32)
    with pytest.raises(PlanError) as shape:
        runner.set_tensor_dict(tensors)
    assert shape.value.code == "FX-MODEL-002"


def test_runner_without_model_says_what_to_do(keras):
    runner = KerasTaskRunner(data_loader=ToyLoader())
    with pytest.raises(PlanError) as err:
        runner.get_tensor_dict()
    assert err.value.code == "FX-MODEL-025" and "self.model" in err.value.fix


# ---------------------------------------------------------------------- tasks
def test_train_task_honours_epochs_batch_size_and_metrics(keras):
    runner = make_runner(keras, treatment="CONTINUE_LOCAL")
    start = runner.get_tensor_dict()
    result = runner.train_task(
        "col1", 0, start, epochs=2, batch_size=16, metrics=["loss", "accuracy"]
    )
    assert set(result.metrics) == {"loss", "accuracy"}
    assert np.isfinite(result.metrics["loss"]) and 0.0 <= result.metrics["accuracy"] <= 1.0
    assert result.data_size == 64
    assert iterations(runner) == 2 * 4  # two epochs of ceil(64 / 16) batches
    assert set(result.tensors) == set(start)
    assert any(not np.array_equal(result.tensors[k], start[k]) for k in start)


def test_train_batch_size_defaults_to_the_loader(keras):
    runner = make_runner(keras, loader=ToyLoader(batch_size=32), treatment="CONTINUE_LOCAL")
    runner.train_task("col1", 0, runner.get_tensor_dict(), metrics=["loss"])
    assert iterations(runner) == 2


def test_validate_task_reports_metrics_under_the_plan_names(keras):
    runner = make_runner(keras)
    tensors = runner.get_tensor_dict()
    result = runner.validate_task("col1", 0, tensors, apply="global", metrics=["accuracy"])
    assert list(result.metrics) == ["accuracy"] and result.tensors == {}
    assert result.data_size == 32
    alias = runner.validate_task("col1", 0, tensors, apply="local", metrics=["acc"])
    assert alias.metrics["acc"] == pytest.approx(result.metrics["accuracy"])
    everything = runner.validate_task("col1", 0, tensors)
    assert {"loss", "accuracy"} <= set(everything.metrics)


def test_training_improves_the_model(keras):
    keras.utils.set_random_seed(3)
    runner = make_runner(keras, treatment="CONTINUE_LOCAL")
    tensors = runner.get_tensor_dict()
    before = runner.validate_task("c", 0, tensors, metrics=["accuracy"]).metrics["accuracy"]
    for round_num in range(5):
        tensors = runner.train_task("c", round_num, tensors, epochs=2).tensors
    after = runner.validate_task("c", 5, tensors, metrics=["accuracy"]).metrics["accuracy"]
    assert after >= 0.75 and after > before


def test_openfl_16_task_names_and_feature_shape_work(keras):
    runner = make_runner(keras, treatment="CONTINUE_LOCAL")
    tensors = runner.get_tensor_dict()
    trained = runner.train("col1", 0, tensors, metrics=["loss"], epochs=1)
    assert "loss" in trained.metrics and trained.data_size == 64
    checked = runner.validate("col1", 0, trained.tensors, apply="local", metrics=["acc"])
    assert "acc" in checked.metrics
    assert runner.feature_shape == (6,)
    runner.feature_shape = [6]  # OpenFL runners may assign it
    assert runner.feature_shape == (6,)


def test_unknown_metric_names_what_the_model_reports(keras):
    runner = make_runner(keras)
    with pytest.raises(PlanError) as err:
        runner.validate_task("col1", 0, runner.get_tensor_dict(), metrics=["dice"])
    assert err.value.code == "FX-MODEL-024"
    assert "accuracy" in err.value.message and "loss" in err.value.message


def test_no_data_gives_size_zero_and_finite_metrics_that_count_in_no_average(keras):
    # NaN metrics (what this gave before) are refused by the aggregator: an empty shard stopped
    # the federation
    runner = make_runner(keras, loader=ToyLoader(train=0, valid=0))
    tensors = runner.get_tensor_dict()
    result = runner.train_task("col1", 0, tensors, metrics=["loss"])
    assert result.data_size == 0 and result.metrics == {"loss": 0.0}
    validated = runner.validate_task("col1", 0, tensors, metrics=["accuracy"])
    assert validated.data_size == 0 and validated.metrics == {"accuracy": 0.0}


def test_no_data_loader_is_a_clear_error(keras):
    runner = make_runner(keras)
    runner.data_loader = None
    with pytest.raises(DataError):
        runner.train_task("col1", 0, runner.get_tensor_dict())


# ---------------------------------------------------------------------- optimizer treatments
def test_reset_really_gives_a_fresh_adam_state_every_round(keras):
    runner = make_runner(keras, treatment="RESET")
    tensors = runner.get_tensor_dict()
    runner.train_task("col1", 0, tensors, batch_size=16)
    assert iterations(runner) == 4
    moments = runner.get_tensor_dict(with_opt_vars=True)
    assert any(np.abs(v).sum() > 0 for k, v in moments.items() if k.endswith("momentum"))
    runner.train_task("col1", 1, tensors, batch_size=16)
    assert iterations(runner) == 4  # not 8: the count restarted
    runner.reset_opt_vars()
    state = {
        k: v
        for k, v in runner.get_tensor_dict(with_opt_vars=True).items()
        if k.startswith(OPT_PREFIX)
    }
    assert state and all(not np.any(v) for v in state.values())
    lr = float(keras.ops.convert_to_numpy(runner.model.optimizer.learning_rate))
    assert lr == pytest.approx(0.01)  # a hyper-parameter, kept


def test_reset_recreates_non_zero_initial_state(keras):
    runner = make_runner(keras, optimizer="adagrad", treatment="RESET")
    runner.train_task("col1", 0, runner.get_tensor_dict())
    runner.reset_opt_vars()
    state = runner.get_tensor_dict(with_opt_vars=True)
    accumulators = [v for k, v in state.items() if k.startswith(OPT_PREFIX) and "accumulator" in k]
    assert accumulators and all(np.allclose(v, 0.1) for v in accumulators)


def test_continue_local_keeps_the_state_and_sends_none(keras):
    runner = make_runner(keras, treatment="CONTINUE_LOCAL")
    tensors = runner.get_tensor_dict()
    first = runner.train_task("col1", 0, tensors, batch_size=16)
    second = runner.train_task("col1", 1, first.tensors, batch_size=16)
    assert iterations(runner) == 8
    assert not any(k.startswith(OPT_PREFIX) for k in second.tensors)


def test_continue_global_sends_and_loads_the_optimizer_state(keras):
    runner = make_runner(keras, treatment="CONTINUE_GLOBAL")
    result = runner.train_task("col1", 0, runner.get_tensor_dict(), batch_size=16)
    opt = {k: v for k, v in result.tensors.items() if k.startswith(OPT_PREFIX)}
    assert f"{OPT_PREFIX}iteration" in opt and int(opt[f"{OPT_PREFIX}iteration"]) == 4
    assert any(k.endswith("_momentum") for k in opt) and any(k.endswith("_velocity") for k in opt)
    assert not any("learning_rate" in k for k in opt)
    # the aggregated state of round 0 comes back in round 1 and training continues from it
    incoming = dict(result.tensors)
    incoming[f"{OPT_PREFIX}iteration"] = np.asarray(100, dtype=opt[f"{OPT_PREFIX}iteration"].dtype)
    other = make_runner(keras, treatment="CONTINUE_GLOBAL")
    again = other.train_task("col2", 1, incoming, batch_size=16)
    assert int(again.tensors[f"{OPT_PREFIX}iteration"]) == 104
    # validation never loads optimizer state
    other.validate_task("col2", 1, {**incoming, f"{OPT_PREFIX}iteration": np.asarray(7)})
    assert iterations(other) == 104


def test_optimizer_state_that_does_not_fit_starts_the_round_fresh(keras, caplog):
    import logging

    runner = make_runner(keras, treatment="CONTINUE_GLOBAL")
    result = runner.train_task("col1", 0, runner.get_tensor_dict(), batch_size=16)
    incoming = dict(result.tensors)
    moment = next(k for k in incoming if k.endswith("_momentum"))
    incoming[moment] = np.zeros(7, dtype=np.float32)  # another node's optimizer or model
    other = make_runner(keras, treatment="CONTINUE_GLOBAL")

    with caplog.at_level(logging.WARNING, logger="fedrun.runners.keras"):
        again = other.train_task("col2", 1, incoming, batch_size=16)

    assert "does not fit this optimizer" in caplog.text
    assert int(again.tensors[f"{OPT_PREFIX}iteration"]) == 4  # fresh state, one epoch on it


def test_round_zero_model_without_optimizer_state_is_fine_under_continue_global(keras):
    runner = make_runner(keras, treatment="CONTINUE_GLOBAL")
    plain = runner.get_tensor_dict(with_opt_vars=False)
    result = runner.train_task("col1", 0, plain, batch_size=32)
    assert int(result.tensors[f"{OPT_PREFIX}iteration"]) == 2


# ---------------------------------------------------------------------- native format
@pytest.mark.parametrize("name", ["model.keras", "output_model"])
def test_save_native_and_load_native_round_trip(keras, tmp_path, name):
    runner = make_runner(keras, treatment="CONTINUE_LOCAL")
    runner.train_task("col1", 0, runner.get_tensor_dict(), batch_size=16)
    path = tmp_path / name
    runner.save_native(path)
    assert zipfile.is_zipfile(path)  # the .keras format, whatever the file is called
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    other = make_runner(keras)
    other.load_native(path)
    mine, theirs = runner.get_tensor_dict(True), other.get_tensor_dict(True)
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        np.testing.assert_array_equal(theirs[key], value)
    assert iterations(other) == 4


def test_load_native_without_a_model_loads_the_file_model(keras, tmp_path):
    runner = make_runner(keras)
    runner.save_native(tmp_path / "m.keras")
    bare = KerasTaskRunner(data_loader=ToyLoader())
    bare.load_native(tmp_path / "m.keras")
    for theirs, mine in zip(bare.model.get_weights(), runner.model.get_weights(), strict=True):
        np.testing.assert_array_equal(theirs, mine)
    assert bare.validate_task("c", 0, bare.get_tensor_dict(), metrics=["accuracy"]).data_size == 32
    with pytest.raises(DataError):
        bare.load_native(tmp_path / "missing.keras")


# ---------------------------------------------------------------------- backends
def test_public_names_resolve(keras):
    import fedrun
    from fedrun.plan.aliases import ALIASES

    assert fedrun.KerasTaskRunner is KerasTaskRunner
    assert ALIASES["openfl.federated.KerasTaskRunner"] == "fedrun.runners.keras.KerasTaskRunner"


def test_backend_cannot_change_after_keras_is_imported(keras, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(PlanError) as err:
        select_backend()
    assert err.value.code == "FX-MODEL-023" and "torch" in err.value.message
    monkeypatch.delenv("KERAS_BACKEND")
    # a template default that differs is a conflict too once keras is loaded
    with pytest.raises(PlanError):
        select_backend("jax")
    assert select_backend("torch") == "torch"


def test_unknown_backend_name_is_refused(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "numpy")
    with pytest.raises(PlanError) as err:
        select_backend()
    assert err.value.code == "FX-MODEL-021"
    assert "torch" in err.value.fix and "jax" in err.value.fix


def _child(script: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
    )


MISSING = """
    import json, sys
    import fedrun.runners.keras as k
    real = k._installed
    k._installed = lambda package: package not in {missing} and real(package)
    try:
        k.select_backend()
    except Exception as exc:
        print(json.dumps({{"code": exc.code, "message": exc.message, "fix": exc.fix,
                          "keras_imported": "keras" in sys.modules}}))
"""


@pytest.mark.parametrize(
    ("backend", "package"), [("jax", "jax"), ("tensorflow", "tensorflow"), ("torch", "torch")]
)
def test_missing_backend_names_the_package_to_install(backend, package):
    done = _child(MISSING.format(missing=repr({package})), {"KERAS_BACKEND": backend})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == "FX-MODEL-020"
    assert f"pip install {package}" in report["fix"]
    assert repr(package) in report["message"] and "KERAS_BACKEND" in report["message"]
    assert report["keras_imported"] is False


def test_missing_keras_names_the_extra():
    done = _child(MISSING.format(missing=repr({"keras"})), {"KERAS_BACKEND": "torch"})
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == "FX-MODEL-022" and "fedrun[keras]" in report["fix"]


JAX_SCRIPT = """
    import json
    import numpy as np
    from fedrun.runners.keras import select_backend, OPT_PREFIX
    select_backend("jax")
    import keras
    from fedrun.data.loader import KerasDataLoader
    from fedrun.runners.keras import KerasTaskRunner

    class Loader(KerasDataLoader):
        def __init__(self):
            super().__init__(batch_size=16, random_seed=0)
            rng = np.random.default_rng(0)
            self.X_train = rng.normal(size=(64, 4)).astype("float32")
            self.y_train = (self.X_train[:, :1] > 0).astype("float32")
            self.X_valid, self.y_valid = self.X_train[:32], self.y_train[:32]
        def get_feature_shape(self):
            return (4,)

    class Runner(KerasTaskRunner):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.model = keras.Sequential(
                [keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid", name="out")],
                name="jaxtoy")
            self.model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])

    runner = Runner(data_loader=Loader())
    runner.set_optimizer_treatment("CONTINUE_GLOBAL")
    start = runner.get_tensor_dict()
    first = runner.train_task("c", 0, start, epochs=1)
    second = runner.train_task("c", 1, first.tensors, epochs=1)
    runner.set_optimizer_treatment("RESET")
    third = runner.train_task("c", 2, second.tensors, epochs=1)
    check = runner.validate_task("c", 2, third.tensors, metrics=["accuracy"])
    print(json.dumps({
        "backend": keras.backend.backend(),
        "names": sorted(start),
        "iterations": [int(r.tensors.get(OPT_PREFIX + "iteration", -1)) for r in (first, second)],
        "after_reset": int(np.asarray(keras.ops.convert_to_numpy(runner.model.optimizer.iterations))),
        "changed": bool(np.any(first.tensors["jaxtoy/out/kernel"] != start["jaxtoy/out/kernel"])),
        "accuracy": check.metrics["accuracy"],
    }))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_trains_and_handles_optimizer_state():
    done = _child(JAX_SCRIPT, {"KERAS_BACKEND": "jax"}, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["names"] == ["jaxtoy/out/bias", "jaxtoy/out/kernel"]
    assert report["iterations"] == [4, 8]  # CONTINUE_GLOBAL carried the count over
    assert report["after_reset"] == 4  # RESET restarted it
    assert report["changed"] and 0.0 <= report["accuracy"] <= 1.0


def test_fx_model_save_into_a_folder_writes_a_keras_file_others_can_read(keras, tmp_path):
    runner = make_runner(keras)
    (tmp_path / "exported").mkdir()
    written = save_native(runner, tmp_path / "exported")  # a folder, as `fx model save -o DIR`
    assert written.name == "model.keras"
    # OpenFL's default output name: the file, with the suffix Keras needs to read it back
    assert save_native(runner, tmp_path / "output_model") == tmp_path / "output_model.keras"
    loaded = keras.models.load_model(written)  # plain Keras reads only `.keras` files
    for theirs, mine in zip(loaded.get_weights(), runner.model.get_weights(), strict=True):
        np.testing.assert_array_equal(theirs, mine)
    other = save_native(runner, tmp_path / "named.bin")  # another suffix: readable by others
    mask = os.umask(0o022)
    os.umask(mask)
    assert other.stat().st_mode & 0o777 == 0o666 & ~mask
