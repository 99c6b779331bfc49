"""OpenFL's model files load: fixtures written by OpenFL 1.9 itself with its own API
(``openfl.protocols.utils.construct_model_proto`` + ``dump_proto``, NoCompressionPipeline; the
compressed one with SKCPipeline). ``openfl_1.9_model_expected.npz`` holds the arrays OpenFL was
given, saved in the same run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrun.errors import StateError
from fedrun.storage.model_file import load_model, open_model_view
from fedrun.storage.openfl_model import looks_like_openfl_model, read_openfl_model

DATA = Path(__file__).parent / "fixtures"
MODEL = DATA / "openfl_1.9_model.pbuf"


def test_an_openfl_model_reads_as_the_arrays_openfl_was_given() -> None:
    expected = np.load(DATA / "openfl_1.9_model_expected.npz")
    tensors, round_num = read_openfl_model(MODEL)

    assert round_num == 3
    assert list(tensors) == list(expected.files)  # OpenFL's order
    for name in expected.files:
        # OpenFL stores every tensor as float32 (the float64 one too)
        np.testing.assert_array_equal(tensors[name], expected[name].astype(np.float32), name)
        assert tensors[name].dtype == np.float32 and tensors[name].flags.writeable
    assert tensors["scalar"].shape == ()


def test_load_model_and_the_aggregators_view_accept_openfl_files() -> None:
    assert looks_like_openfl_model(MODEL)
    for snapshot in (load_model(MODEL), open_model_view(MODEL)):
        assert snapshot.kind == "openfl" and snapshot.round == 3
        assert snapshot.tensors["model.fc.weight"].shape == (3, 16)


def test_a_compressed_openfl_model_is_refused_not_misread() -> None:
    with pytest.raises(StateError) as err:
        load_model(DATA / "openfl_1.9_model_compressed.pbuf")
    assert err.value.code == "FX-STATE-017"
    assert "'model.fc.weight' was compressed" in err.value.message
    assert "uncompressed" in err.value.fix


@pytest.mark.parametrize("cut", [1, 7, 100, 475])
def test_a_truncated_openfl_model_is_refused(tmp_path: Path, cut: int) -> None:
    broken = tmp_path / "broken.pbuf"
    broken.write_bytes(MODEL.read_bytes()[:cut])
    with pytest.raises(StateError) as err:
        load_model(broken)
    assert err.value.code == "FX-STATE-002", err.value.message
    assert str(broken) in err.value.message and "nor a readable OpenFL one" in err.value.message


def test_a_file_of_neither_format_says_so(tmp_path: Path) -> None:
    other = tmp_path / "notes.pbuf"
    other.write_bytes(b"hello, this is not a model")
    with pytest.raises(StateError) as err:
        load_model(other)
    assert err.value.code == "FX-STATE-002" and "not a fedrun model file" in err.value.message


def _fx(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedrun.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fx_plan_initialize_starts_from_an_openfl_model(tmp_path: Path) -> None:
    """A team moving from OpenFL keeps its initial model; one that does not fit is refused."""
    from fedrun.workspace.create import create_workspace

    ws = create_workspace(tmp_path / "ws", "torch/digits")
    digits = DATA / "openfl_1.9_digits_init.pbuf"
    done = _fx(ws, "plan", "initialize", "-a", "localhost", "-i", str(digits))
    assert done.returncode == 0, done.stderr
    init = load_model(ws / "save" / "init.pbuf")
    expected, _ = read_openfl_model(digits)
    assert set(init.tensors) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(init.tensors[name], value, name)

    before = (ws / "save" / "init.pbuf").read_bytes()
    wrong = _fx(ws, "plan", "initialize", "-a", "localhost", "-i", str(MODEL))
    assert wrong.returncode != 0
    assert "FX-WS-013" in wrong.stderr and "does not fit" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert (ws / "save" / "init.pbuf").read_bytes() == before  # nothing overwritten
    shutil.rmtree(ws)
