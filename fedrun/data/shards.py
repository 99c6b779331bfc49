"""Split a dataset between collaborators by shard number.

The MNIST and digits templates name each collaborator's data in ``plan/data.yaml`` by a 1-based
shard number (a ``collaborator1,1`` line). Shard ``s`` of ``count`` holds the samples at positions
``s-1, s-1+count, s-1+2*count, ...``, so every sample belongs to exactly one shard and shard sizes
differ by at most one.
"""

from __future__ import annotations

import numpy as np

from fedrun.errors import DataError

#: Error code for a shard number outside ``1..count`` (or a non-positive count).
SHARD_RANGE_CODE = "FX-DATA-004"
#: Error code for a data path that is not a shard number.
SHARD_PARSE_CODE = "FX-DATA-005"


def shard_indices(n: int, shard: int, count: int) -> np.ndarray:
    """Return the sample indices of one shard.

    Parameters
    ----------
    n:
        Number of samples in the whole dataset (``>= 0``).
    shard:
        1-based shard number, ``1 <= shard <= count``.
    count:
        Number of shards, normally the number of collaborators.

    Returns
    -------
    numpy.ndarray
        ``int64`` indices ``shard-1, shard-1+count, ...`` below ``n``, in increasing order.

    Raises
    ------
    DataError
        ``FX-DATA-004`` when ``count < 1`` or ``shard`` is not in ``1..count``.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise DataError(
            SHARD_RANGE_CODE,
            f"cannot split the data into {count!r} shards: the shard count (the number of "
            "collaborators) must be an integer of at least 1",
            "list at least one collaborator in plan/cols.yaml (or set collaborator_count "
            "to 1 or more)",
        )
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)):
        raise DataError(
            SHARD_RANGE_CODE,
            f"shard number must be an integer from 1 to {count}, got {shard!r}",
            f"set this collaborator's entry in plan/data.yaml to a number from 1 to {count}, "
            'e.g. "1"',
        )
    if not 1 <= shard <= count:
        raise DataError(
            SHARD_RANGE_CODE,
            f"shard {shard} does not exist: the data is split into {count} shard(s) "
            f"(one per collaborator), numbered 1 to {count}; shard numbers start at 1",
            f"set this collaborator's entry in plan/data.yaml to a number from 1 to {count}, "
            f"or raise the number of collaborators (collaborator_count) to at least {shard}",
        )
    return np.arange(int(shard) - 1, int(n), int(count), dtype=np.int64)


def parse_shard(data_path: str | int | None) -> int | None:
    """Turn a collaborator's data path from ``plan/data.yaml`` into a shard number.

    Parameters
    ----------
    data_path:
        The value from ``data.yaml``: a string such as ``"1"``, an integer, or ``None``.

    Returns
    -------
    int or None
        The shard number (``>= 1``), or ``None`` for ``None`` / an empty string, which means
        "no data" (the init-only mode used to build the initial model).

    Raises
    ------
    DataError
        ``FX-DATA-005`` when the value is not an integer; ``FX-DATA-004`` when it is below 1.
    """
    if data_path is None:
        return None
    if isinstance(data_path, bool):
        value: int | None = None
    elif isinstance(data_path, (int, np.integer)):
        value = int(data_path)
    elif isinstance(data_path, str):
        text = data_path.strip()
        if not text:
            return None
        try:
            value = int(text, 10)
        except ValueError:
            value = None
    else:
        value = None
    if value is None:
        raise DataError(
            SHARD_PARSE_CODE,
            f"data path {data_path!r} is not a shard number; the MNIST and digits templates "
            "expect each collaborator's entry in plan/data.yaml to be a shard number such as 1",
            "set it with `fx collaborator create -n NAME -d 1` (a `NAME,1` line in "
            "plan/data.yaml; 2 for the next collaborator), or use a data loader that reads a "
            "directory path",
        )
    if value < 1:
        raise DataError(
            SHARD_RANGE_CODE,
            f"data path {data_path!r} is not a valid shard number: shard numbers start at 1",
            "number the collaborators' shards 1, 2, ... (`fx collaborator create -n NAME -d 1`, "
            "a `NAME,1` line in plan/data.yaml)",
        )
    return value
