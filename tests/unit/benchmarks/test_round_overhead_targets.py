"""round_overhead's arithmetic: how often the TLS copy runs, the limit a round is held to, and
which cells meet the issue's targets."""

from __future__ import annotations

import pytest

from benchmarks.round_overhead import copy_repeats, round_limit_s, target_rows


@pytest.mark.parametrize(
    ("size", "streams", "repeats"),
    [(10**7, 2, 5), (10**8, 2, 5), (10**8, 8, 3), (10**9, 2, 1), (4 * 10**9, 2, 1)],
)
def test_short_copies_are_repeated_long_ones_run_once(size, streams, repeats):
    assert copy_repeats(size, streams) == repeats


def test_limit_is_the_model_down_and_up_at_the_per_stream_rate():
    assert round_limit_s(10**9, 0.5) == pytest.approx(4.0)
    assert round_limit_s(10**9, None) is None
    assert round_limit_s(10**9, 0.0) is None


def cell(size, n, steady, limit, rss_mib, ok=True):
    return {
        "system": "fedrun",
        "bytes": size,
        "collaborators": n,
        "summary": {
            "ok": ok,
            "steady_round_s": steady,
            "round_to_limit": steady / limit,
            "per_stream_gbps": 2 * size / steady / 1e9,
            "aggregator_peak_rss_mib": rss_mib,
            "model_mib": size / 2**20,
        },
    }


def test_targets_are_judged_per_cell():
    rows = target_rows(
        [
            cell(10**9, 2, steady=5.0, limit=3.0, rss_mib=2000),  # 1.67x, 2.1x, 0.4 GB/s
            cell(10**8, 8, steady=2.5, limit=1.0, rss_mib=500),  # 2.5x, 5.2x
            cell(4 * 10**9, 2, steady=24.0, limit=10.0, rss_mib=8000, ok=True),
            {"system": "fedrun", "bytes": 10**7, "collaborators": 2, "skipped": "no memory"},
            {**cell(10**7, 2, 1.0, 1.0, 10), "system": "openfl"},  # only fedrun is judged
        ]
    )
    met = {(target, where): ok for target, where, _value, _limit, ok in rows}
    assert met == {
        ("round <= 2x the TLS copy", "1 GB x2"): True,
        ("aggregator RSS <= 3x model", "1 GB x2"): True,
        ("GB/s per stream at 1 GB >= 1", "1 GB x2"): False,
        ("round <= 2x the TLS copy", "100 MB x8"): False,
        ("aggregator RSS <= 3x model", "100 MB x8"): False,
        ("round <= 2x the TLS copy", "4 GB x2"): False,
        ("aggregator RSS <= 3x model", "4 GB x2"): True,
        ("4 GB model completes", "4 GB x2"): True,
    }
