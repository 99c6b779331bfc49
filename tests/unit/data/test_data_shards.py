"""Shard numbers from data.yaml and the indices of each shard."""

from __future__ import annotations

import numpy as np
import pytest

from fedrun.data.shards import parse_shard, shard_indices
from fedrun.errors import DataError


def test_shard_indices_stride_from_one_based_shard() -> None:
    assert shard_indices(10, 1, 3).tolist() == [0, 3, 6, 9]
    assert shard_indices(10, 2, 3).tolist() == [1, 4, 7]
    assert shard_indices(10, 3, 3).tolist() == [2, 5, 8]
    assert shard_indices(10, 1, 3).dtype == np.int64


@pytest.mark.parametrize(("n", "count"), [(0, 1), (1, 4), (7, 7), (100, 3), (1797, 8)])
def test_shards_partition_the_data(n: int, count: int) -> None:
    parts = [shard_indices(n, s, count) for s in range(1, count + 1)]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_single_shard_is_everything() -> None:
    assert shard_indices(5, 1, 1).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("shard", "count"), [(3, 2), (0, 2), (-1, 2)])
def test_shard_out_of_range_is_explained(shard: int, count: int) -> None:
    with pytest.raises(DataError) as info:
        shard_indices(10, shard, count)
    err = info.value
    assert err.code == "FX-DATA-004"
    assert f"shard {shard}" in err.message
    assert f"1 to {count}" in err.message
    assert "plan/data.yaml" in err.fix


def test_shard_three_of_two_names_collaborator_count() -> None:
    with pytest.raises(DataError) as info:
        shard_indices(10, 3, 2)
    assert "collaborator_count" in info.value.fix


@pytest.mark.parametrize("count", [0, -2])
def test_bad_shard_count(count: int) -> None:
    with pytest.raises(DataError) as info:
        shard_indices(10, 1, count)
    assert info.value.code == "FX-DATA-004"


def test_non_integer_shard_rejected() -> None:
    with pytest.raises(DataError):
        shard_indices(10, 1.5, 2)  # type: ignore[arg-type]


def test_negative_n_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        shard_indices(-1, 1, 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1),
        ("2", 2),
        (" 3 ", 3),
        (4, 4),
        (np.int64(5), 5),
        (None, None),
        ("", None),
        ("  ", None),
    ],
)
def test_parse_shard(value: object, expected: int | None) -> None:
    assert parse_shard(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["data/mnist", "one", "1.5", "1,2", True, 2.0, ["1"]])
def test_parse_shard_rejects_non_numbers(value: object) -> None:
    with pytest.raises(DataError) as info:
        parse_shard(value)  # type: ignore[arg-type]
    err = info.value
    assert err.code == "FX-DATA-005"
    assert "shard number" in err.message
    assert "plan/data.yaml" in err.message
    assert "MNIST" in err.message


@pytest.mark.parametrize("value", ["0", "-1", 0])
def test_parse_shard_rejects_zero_and_negative(value: object) -> None:
    with pytest.raises(DataError) as info:
        parse_shard(value)  # type: ignore[arg-type]
    assert info.value.code == "FX-DATA-004"
    assert "start at 1" in info.value.message


@pytest.mark.parametrize("value", ["abc", "0"])
def test_the_fix_shows_a_data_yaml_line_fedrun_reads(value: str, tmp_path) -> None:
    from fedrun.plan.loader import read_data_paths

    with pytest.raises(DataError) as info:
        parse_shard(value)
    assert "`NAME,1`" in info.value.fix
    data = tmp_path / "data.yaml"
    data.write_text("NAME,1\n")  # the line the fix shows
    assert parse_shard(read_data_paths(data)["NAME"]) == 1
