"""fedrun.get_model can load two models of a Keras workspace in one process (a notebook
comparing best and last), even when the model's layers have no fixed names."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("Keras 3 and torch are needed", allow_module_level=True)

SCRIPT = textwrap.dedent(
    """
    import os, re, sys
    os.environ["KERAS_BACKEND"] = "torch"
    from pathlib import Path
    import numpy as np
    import fedrun
    from fedrun.plan.initialize import initialize_plan
    from fedrun.workspace.create import create_workspace

    ws = create_workspace(Path(sys.argv[1]) / "ws", "keras/mnist")
    src = ws / "src" / "taskrunner.py"
    # the layers and the model lose their names: Keras numbers them per process
    text = re.sub(r', name="[a-z0-9_]+"\\)', ")", src.read_text())
    src.write_text(text.replace('            name="mnist_cnn",\\n', ""))
    initialize_plan(ws / "plan" / "plan.yaml", agg_addr="localhost")
    plan, model = str(ws / "plan" / "plan.yaml"), str(ws / "save" / "init.pbuf")
    first = fedrun.get_model(plan, None, None, model)
    second = fedrun.get_model(plan, None, None, model)
    x = np.zeros((2, 28, 28, 1), np.float32)
    same = np.allclose(first.model.predict(x, verbose=0), second.model.predict(x, verbose=0))
    print("names", sorted(second.get_tensor_dict())[0], "same", same)
    """
)


def test_two_models_of_an_unnamed_keras_network_load_in_one_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "names sequential/conv2d/bias same True" in done.stdout
