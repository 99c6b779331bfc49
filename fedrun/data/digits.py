"""scikit-learn's bundled 8x8 handwritten digits (1797 images), split into collaborator shards.

The data ships inside scikit-learn, so this works offline. scikit-learn is imported only when the
data is loaded; it is not needed to import this module.
"""

from __future__ import annotations

import functools

import numpy as np

from fedrun.data.shards import shard_indices
from fedrun.errors import DataError

SKLEARN_MISSING_CODE = "FX-DATA-006"
BAD_SPLIT_CODE = "FX-DATA-007"

#: Pixel values in the digits data run from 0 to this.
DIGITS_MAX_PIXEL = 16.0
#: Shape of one sample: one channel of 8x8 pixels.
DIGITS_SAMPLE_SHAPE = (1, 8, 8)

DigitsArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    """Every digit image as float32 ``(N, 1, 8, 8)`` in [0, 1] and its int64 label (read-only)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(
            SKLEARN_MISSING_CODE,
            "the digits dataset comes with scikit-learn, which is not installed in this "
            f"Python environment ({exc})",
            "pip install scikit-learn   (or pip install 'fedrun[torch]')",
        ) from exc
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / np.float32(DIGITS_MAX_PIXEL)
    x = images.reshape(-1, *DIGITS_SAMPLE_SHAPE)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _empty() -> DigitsArrays:
    x = np.zeros((0, *DIGITS_SAMPLE_SHAPE), dtype=np.float32)
    y = np.zeros((0,), dtype=np.int64)
    return x, y, x.copy(), y.copy()


def load_digits_shard(
    shard: int | None, count: int, *, valid_fraction: float = 0.2, seed: int = 0
) -> DigitsArrays:
    """Return one collaborator's share of the digits data.

    All 1797 samples are put in a fixed random order (``seed``); the first
    ``round(1797 * valid_fraction)`` become the validation set and the rest the training set.
    Each set is then split into ``count`` shards with
    :func:`~fedrun.data.shards.shard_indices`, so the shards are disjoint and together cover
    the data.

    Parameters
    ----------
    shard:
        1-based shard number, or ``None`` for no data (init-only mode).
    count:
        Number of shards (collaborators).
    valid_fraction:
        Share of the samples held out for validation, in ``[0, 1)``.
    seed:
        Seed of the order; every collaborator must use the same one.

    Returns
    -------
    tuple of numpy.ndarray
        ``(X_train, y_train, X_valid, y_valid)``; ``X`` is float32 ``(n, 1, 8, 8)`` scaled to
        [0, 1], ``y`` is int64 ``(n,)`` with values 0-9. With ``shard=None`` all four are
        empty (``n = 0``) but keep those trailing shapes.

    Raises
    ------
    DataError
        ``FX-DATA-006`` when scikit-learn is missing, ``FX-DATA-004`` for a bad shard number,
        ``FX-DATA-007`` for a ``valid_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise DataError(
            BAD_SPLIT_CODE,
            f"valid_fraction must be at least 0 and below 1, got {valid_fraction!r}",
            "set the data loader's valid_fraction in plan/plan.yaml to a value such as 0.2",
        )
    if shard is None:
        return _empty()
    x_all, y_all = _all_digits()
    order = np.random.default_rng(seed).permutation(len(y_all))
    n_valid = int(round(len(y_all) * float(valid_fraction)))
    valid_order, train_order = order[:n_valid], order[n_valid:]
    train_idx = train_order[shard_indices(len(train_order), shard, count)]
    valid_idx = valid_order[shard_indices(len(valid_order), shard, count)]
    # Fancy indexing copies, so callers get writable arrays independent of the cache.
    return x_all[train_idx], y_all[train_idx], x_all[valid_idx], y_all[valid_idx]
