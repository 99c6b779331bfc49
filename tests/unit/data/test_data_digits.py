"""The sklearn digits dataset split into collaborator shards."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrun.data import digits
from fedrun.data.digits import load_digits_shard
from fedrun.errors import DataError

pytest.importorskip("sklearn")

REPO_ROOT = Path(__file__).resolve().parents[3]

TOTAL = 1797


def _keys(x: np.ndarray) -> list[bytes]:
    """One key per sample (its raw bytes), to compare collections of samples."""
    return [row.tobytes() for row in x.reshape(len(x), -1)]


def test_shapes_dtypes_and_scaling() -> None:
    x_tr, y_tr, x_va, y_va = load_digits_shard(1, 1)
    assert x_tr.dtype == np.float32 and x_va.dtype == np.float32
    assert y_tr.dtype == np.int64 and y_va.dtype == np.int64
    assert x_tr.shape[1:] == (1, 8, 8) and x_va.shape[1:] == (1, 8, 8)
    assert len(x_tr) == len(y_tr) and len(x_va) == len(y_va)
    assert len(x_tr) + len(x_va) == TOTAL
    assert len(x_va) == round(TOTAL * 0.2)
    both = np.concatenate([x_tr, x_va])
    assert both.min() == 0.0 and both.max() == 1.0
    assert set(np.concatenate([y_tr, y_va]).tolist()) == set(range(10))
    x_tr[0, 0, 0, 0] = 5.0  # writable, and must not leak into the next call
    assert load_digits_shard(1, 1)[0][0, 0, 0, 0] != 5.0


@pytest.mark.parametrize("count", [2, 3, 5])
def test_shards_add_up_to_the_whole_split(count: int) -> None:
    parts = [load_digits_shard(s, count) for s in range(1, count + 1)]
    n_valid = round(TOTAL * 0.2)
    assert sum(len(p[0]) for p in parts) == TOTAL - n_valid
    assert sum(len(p[2]) for p in parts) == n_valid
    whole = load_digits_shard(1, 1)
    for split in range(4):
        merged = np.concatenate([p[split] for p in parts])
        # Same samples as the unsharded split, just regrouped.
        assert sorted(_keys(merged)) == sorted(_keys(whole[split]))


def test_shards_are_disjoint_by_position() -> None:
    count = 4
    n_train = TOTAL - round(TOTAL * 0.2)
    whole_x, whole_y, _, _ = load_digits_shard(1, 1)
    seen = np.zeros(n_train, dtype=int)
    for s in range(1, count + 1):
        x, y, _, _ = load_digits_shard(s, count)
        # Shard s holds positions s-1, s-1+count, ... of the single-shard order.
        pos = np.arange(s - 1, n_train, count)
        np.testing.assert_array_equal(x, whole_x[pos])
        np.testing.assert_array_equal(y, whole_y[pos])
        seen[pos] += 1
    assert (seen == 1).all()


def test_deterministic_and_seed_dependent() -> None:
    a = load_digits_shard(2, 3, seed=7)
    b = load_digits_shard(2, 3, seed=7)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    c = load_digits_shard(2, 3, seed=8)
    assert not np.array_equal(a[1], c[1])


def test_valid_fraction() -> None:
    x_tr, _, x_va, _ = load_digits_shard(1, 1, valid_fraction=0.5)
    assert len(x_va) == round(TOTAL * 0.5) and len(x_tr) + len(x_va) == TOTAL
    x_tr, _, x_va, _ = load_digits_shard(1, 1, valid_fraction=0.0)
    assert len(x_va) == 0 and len(x_tr) == TOTAL
    assert x_va.shape == (0, 1, 8, 8)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0])
def test_bad_valid_fraction(fraction: float) -> None:
    with pytest.raises(DataError) as info:
        load_digits_shard(1, 2, valid_fraction=fraction)
    assert info.value.code == "FX-DATA-007"


def test_init_only_mode_returns_empty_arrays() -> None:
    x_tr, y_tr, x_va, y_va = load_digits_shard(None, 2)
    assert x_tr.shape == (0, 1, 8, 8) and x_va.shape == (0, 1, 8, 8)
    assert y_tr.shape == (0,) and y_va.shape == (0,)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64


def test_shard_out_of_range() -> None:
    with pytest.raises(DataError) as info:
        load_digits_shard(3, 2)
    assert info.value.code == "FX-DATA-004"


def test_missing_sklearn_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    digits._all_digits.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake_import)
    for mod in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, mod)
    try:
        with pytest.raises(DataError) as info:
            load_digits_shard(1, 2)
    finally:
        digits._all_digits.cache_clear()
    err = info.value
    assert err.code == "FX-DATA-006"
    assert "pip install scikit-learn" in err.fix
    assert "fedrun[torch]" in err.fix


def test_module_does_not_import_sklearn_eagerly() -> None:
    import subprocess

    code = (
        "import sys; import fedrun.data.digits, fedrun.data.mnist, fedrun.data.shards, "
        "fedrun.metrics; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('sklearn', 'torch', 'tensorboard', 'tensorflow')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
