"""Workspace code that imports Keras itself (OpenFL's Keras workspaces do, expecting the user to
export KERAS_BACKEND) gets an installed backend chosen before it runs, instead of Keras starting
on TensorFlow (its default) and failing when TensorFlow is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from fedrun.workspace.create import create_workspace


@pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(p) is None for p in ("keras", "torch")),
    reason="needs Keras 3 and torch",
)
def test_an_openfl_keras_workspace_starts_on_an_installed_backend(tmp_path):
    # Prepare: fedrun's keras/mnist code without its own backend choice; keras.json says
    # tensorflow (Keras' default), which this environment does not have
    ws = create_workspace(tmp_path / "ws", "keras/mnist")
    (ws / "src" / "__init__.py").write_text('"""OpenFL-style: nothing chosen here."""\n')
    home = tmp_path / "keras_home"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(home)
    tensorflow = importlib.util.find_spec("tensorflow") is not None

    # Execute
    proc = subprocess.run(
        [sys.executable, "-m", "fedrun.cli.main", "plan", "initialize", "-a", "localhost"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Assert: initialized (it once failed: "needs the package 'tensorflow'... pip install
    # tensorflow")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert (ws / "save" / "init.pbuf").is_file()
    assert "tensorflow" not in out or tensorflow


def test_a_workspace_that_chooses_its_own_backend_is_left_to_it(tmp_path):
    # fedrun's keras/jax/mnist calls select_backend("jax"): choosing first forced another
    # backend on it (through KERAS_BACKEND, which its collaborators inherited)
    from fedrun.plan.workspace_code import leaves_keras_backend_unchosen

    ws = create_workspace(tmp_path / "ws", "keras/jax/mnist")
    assert not leaves_keras_backend_unchosen(ws / "src")
    (ws / "src" / "__init__.py").write_text('"""OpenFL-style: nothing chosen here."""\n')
    assert leaves_keras_backend_unchosen(ws / "src")
