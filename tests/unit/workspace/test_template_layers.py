"""A template variant (``.extends``) gets its base's files with its own on top."""

from __future__ import annotations

from pathlib import Path

from fedrun.workspace.create import create_workspace
from fedrun.workspace.templates_catalog import template_dir, template_layers


def test_variant_is_base_plus_its_own_files(tmp_path: Path) -> None:
    assert template_layers("keras/jax/mnist") == [
        template_dir("keras/mnist"),
        template_dir("keras/jax/mnist"),
    ]
    ws = create_workspace(tmp_path / "ws", "keras/jax/mnist")
    base = template_dir("keras/mnist") / "src"
    for name in ("dataloader.py", "taskrunner.py"):
        assert (ws / "src" / name).read_text() == (base / name).read_text()
    assert 'select_backend("jax")' in (ws / "src" / "__init__.py").read_text()
    assert "jax" in (ws / "requirements.txt").read_text()
    assert not (ws / ".extends").exists()


def test_plain_template_is_one_layer() -> None:
    assert template_layers("torch/mnist") == [template_dir("torch/mnist")]
