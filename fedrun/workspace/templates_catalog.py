"""The catalogue of workspace templates shipped with fedrun."""

from __future__ import annotations

from pathlib import Path

from fedrun.errors import WorkspaceError
from fedrun.plan.loader import did_you_mean

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

#: one line per template, shown by `fx workspace create --help` and the README
DESCRIPTIONS = {
    "torch/digits": "PyTorch CNN on scikit-learn's bundled digits (offline; the default)",
    "torch/mnist": "PyTorch CNN on MNIST (OpenFL's torch/mnist; the seed's example plan)",
    "keras/mnist": "Keras 3 CNN on MNIST (backend from KERAS_BACKEND)",
    "keras/jax/mnist": "Keras 3 CNN on MNIST with the JAX backend",
    "keras/histology": "Keras 3 CNN on the colorectal histology tiles (Kather et al. 2016)",
    "tf_cnn_histology": "Keras/TensorFlow CNN on the colorectal histology tiles",
    "tf_2dunet": "2D U-Net on BraTS slices (data needs registration)",
    "no-op": "no ML framework: tests connectivity, certificates and the protocol",
}


def available_templates() -> list[str]:
    """Names of templates present in this installation (folders holding a .workspace file)."""
    names = [
        str(p.parent.relative_to(TEMPLATES_DIR)).replace("\\", "/")
        for p in TEMPLATES_DIR.rglob(".workspace")
    ]
    return sorted(names)


#: a template folder may hold this file naming a base template: the base's files are copied
#: first and the template's own files on top, so variants keep only what differs
EXTENDS_FILE = ".extends"


def template_layers(name: str) -> list[Path]:
    """Folders to copy for template ``name``, base first (follows ``.extends``)."""
    layers: list[Path] = []
    current: str | None = name
    while current is not None:
        folder = template_dir(current)
        if folder in layers:
            raise WorkspaceError(
                "FX-WS-005", f"template {name!r} extends itself through {current!r}"
            )
        layers.insert(0, folder)
        base = folder / EXTENDS_FILE
        current = base.read_text().strip() if base.is_file() else None
    return layers


def template_dir(name: str) -> Path:
    """Folder of template ``name``; unknown names get the list of known ones."""
    names = available_templates()
    if name not in names:
        listing = "\n".join(f"    {n:18s} {DESCRIPTIONS.get(n, '')}" for n in names)
        raise WorkspaceError(
            "FX-WS-001",
            f"unknown template {name!r}{did_you_mean(name, names)}",
            f"choose one of:\n{listing}",
        )
    return TEMPLATES_DIR / name
