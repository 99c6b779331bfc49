"""The process's seed (``aggregator.settings.seed`` / ``fx simulate --seed``), and reseeding
every generator before each task so that a seeded run's result does not depend on restarts."""

from __future__ import annotations

from typing import Any

import numpy as np

_SEED: int | None = None


def set_seed(seed: int | None) -> None:
    """Seed Python's and numpy's generators; framework runners seed themselves from it."""
    global _SEED
    _SEED = seed
    if seed is None:
        return
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))


def seed_task(round_num: int, task: str, data_loader: Any = None) -> None:
    """In a seeded run, reseed every generator from the process seed, the round and the task
    before the task runs: a collaborator restarted mid-experiment then draws the same shuffles
    and dropout masks as one that ran through, so the federation's result does not depend on
    the restart (with opt_treatment RESET or CONTINUE_GLOBAL; CONTINUE_LOCAL keeps optimizer
    state only in memory)."""
    if _SEED is None:
        return
    import random
    import sys
    import zlib

    derived = (_SEED * 1_000_003 + round_num * 7_919 + zlib.crc32(task.encode())) % (2**31)
    random.seed(derived)
    np.random.seed(derived)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(derived)
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "utils"):
        keras.utils.set_random_seed(derived)
    reseed = getattr(data_loader, "reseed", None)
    if callable(reseed):
        reseed(derived)


def current_seed() -> int | None:
    """The seed set by :func:`set_seed` (None: unseeded)."""
    return _SEED
