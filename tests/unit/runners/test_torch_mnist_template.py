"""The torch/mnist template keeps its weights channels-last without changing what goes on the
wire or what the model computes."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fedrun.workspace.templates_catalog import template_dir  # noqa: E402


@pytest.fixture
def template_module():
    path = template_dir("torch/mnist") / "src" / "taskrunner.py"
    spec = importlib.util.spec_from_file_location("fedrun_test_torch_mnist_template", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_weights_are_channels_last_but_travel_in_c_order(template_module):
    runner = template_module.TemplateTaskRunner()

    assert runner.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not runner.model.conv2.weight.is_contiguous()
    tensors = runner.get_tensor_dict()
    for name, value in runner.state_dict().items():
        assert tensors[name].flags.c_contiguous, name
        np.testing.assert_array_equal(tensors[name], value.detach().numpy(), err_msg=name)


def test_loaded_weights_compute_what_a_plain_layout_model_computes(template_module):
    runner = template_module.TemplateTaskRunner()
    rng = np.random.default_rng(3)
    weights = {
        name: rng.standard_normal(value.shape).astype(np.float32) * 0.1
        for name, value in runner.get_tensor_dict().items()
    }
    plain = template_module.DigitRecognizerCNN()
    plain.load_state_dict(
        {k.removeprefix("model."): torch.from_numpy(v) for k, v in weights.items()}
    )

    runner.set_tensor_dict(weights)

    assert runner.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    batch = torch.from_numpy(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
    with torch.no_grad():
        got, expected = runner(batch), plain(batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()
