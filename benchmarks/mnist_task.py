"""The MNIST workload shared by the compute floor, the Flower app and the final-model scoring.

Self-contained (standard library, numpy, torch) so that it runs in any of the benchmark virtual
environments. It reproduces OpenFL's torch/mnist template:

* CNN: conv 1->20 k2, max-pool 2, conv 20->50 k5, max-pool 2, fc 800->500, fc 500->10, ReLU;
* Adam, lr 1e-4, cross-entropy, batch 64, raw 0..255 pixels as float32;
* collaborator ``s`` (1-based) of ``n`` holds train and test samples ``s-1, s-1+n, ...``;
* training batches are reshuffled every epoch; validation reports accuracy.

Command line: ``python mnist_task.py score MODEL.npz`` prints the accuracy (JSON) of a saved model on
the full 10,000-image test set; the .npz keys may carry any prefix before ``conv1.weight`` etc.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

MNIST_DIR = Path(os.environ.get("BENCH_MNIST_DIR", "/work/shared/data/mnist"))
PARAM_NAMES = (
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(name: str, root: Path) -> Path:
    for cand in (root / f"{name}.gz", root / name, root / "MNIST" / "raw" / name):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"MNIST file {name} not found under {root}")


def load_mnist(root: Path = MNIST_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train uint8 [60000,28,28], y_train, x_test uint8 [10000,28,28], y_test)."""
    return (
        _read_idx(_find("train-images-idx3-ubyte", root)),
        _read_idx(_find("train-labels-idx1-ubyte", root)),
        _read_idx(_find("t10k-images-idx3-ubyte", root)),
        _read_idx(_find("t10k-labels-idx1-ubyte", root)),
    )


def load_shard(shard: int, count: int, root: Path = MNIST_DIR) -> tuple[np.ndarray, ...]:
    """Float32 NCHW train/test arrays and int64 labels of collaborator ``shard`` (1-based)."""
    x_tr, y_tr, x_te, y_te = load_mnist(root)
    s = slice(shard - 1, None, count)
    return (
        x_tr[s].astype(np.float32)[:, None],
        y_tr[s].astype(np.int64),
        x_te[s].astype(np.float32)[:, None],
        y_te[s].astype(np.int64),
    )


def build_model():  # type: ignore[no-untyped-def]
    """The CNN (imported lazily so that data helpers work without torch)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class DigitCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 20, 2, 1)
            self.conv2 = nn.Conv2d(20, 50, 5, 1)
            self.fc1 = nn.Linear(800, 500)
            self.fc2 = nn.Linear(500, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
            x = F.relu(self.fc1(x.reshape(-1, 800)))
            return self.fc2(x)

    # channels-last, as fedrun's torch/mnist template: the same compute for every system we
    # write the code of (the floor, Flower's ClientApp); OpenFL runs its own template as shipped
    return DigitCNN().to(memory_format=torch.channels_last)


def make_optimizer(model):  # type: ignore[no-untyped-def]
    import torch

    return torch.optim.Adam(model.parameters(), lr=1e-4)


def train_epoch(model, optimizer, x: np.ndarray, y: np.ndarray, batch: int = 64, rng=None) -> float:  # type: ignore[no-untyped-def]
    """One shuffled pass; returns the mean batch loss."""
    import torch
    from torch.nn import functional as F

    rng = rng if rng is not None else np.random.default_rng()
    order = rng.permutation(len(x))
    model.train()
    total, batches = 0.0, 0
    for a in range(0, len(x), batch):
        idx = order[a : a + batch]
        data = torch.from_numpy(x[idx])
        target = torch.from_numpy(y[idx])
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        batches += 1
    return total / max(1, batches)


def validate(model, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:  # type: ignore[no-untyped-def]
    """Accuracy on (x, y)."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for a in range(0, len(x), batch):
            out = model(torch.from_numpy(x[a : a + batch]))
            correct += int((out.argmax(1) == torch.from_numpy(y[a : a + batch])).sum())
    return correct / max(1, len(x))


def get_weights(model) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model, arrays: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    import torch

    keys = list(model.state_dict().keys())
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(a).copy()) for k, a in zip(keys, arrays, strict=True)}
    )


def weights_from_named(named: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Pick the eight CNN parameters out of a dict whose keys may carry a prefix."""
    out = []
    for pname in PARAM_NAMES:
        hits = [
            k for k in named if k == pname or k.endswith("." + pname) or k.endswith("/" + pname)
        ]
        if len(hits) != 1:
            raise KeyError(f"{pname}: {len(hits)} matching keys among {sorted(named)[:20]}")
        out.append(np.asarray(named[hits[0]], dtype=np.float32))
    return out


def score_npz(path: Path) -> dict[str, float | int]:
    """Accuracy of the saved model on the whole test set."""
    import torch

    torch.set_num_threads(1)
    with np.load(path) as z:
        named = {k: z[k] for k in z.files}
    model = build_model()
    weights = weights_from_named(named)
    for w, (k, v) in zip(weights, model.state_dict().items(), strict=True):
        if tuple(w.shape) != tuple(v.shape):
            raise ValueError(f"{k}: shape {w.shape} != {tuple(v.shape)}")
    set_weights(model, weights)
    _, _, x_te, y_te = load_mnist()
    acc = validate(model, x_te.astype(np.float32)[:, None], y_te.astype(np.int64), batch=500)
    return {"accuracy": acc, "samples": len(y_te)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "score":
        print(json.dumps(score_npz(Path(sys.argv[2]))))
    else:
        print("usage: python mnist_task.py score MODEL.npz", file=sys.stderr)
        sys.exit(2)
