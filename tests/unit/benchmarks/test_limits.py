"""benchmarks.limits: the TLS copy limit is the fastest of its repetitions, measured for real."""

from __future__ import annotations

from benchmarks import limits


def test_tls_copy_reports_the_fastest_repetition(monkeypatch):
    slowest_stream = iter([0.05, 0.02, 0.09])

    def once(nbytes, streams, chunk, timeout):
        slow = next(slowest_stream)
        return {"seconds_per_stream": [0.01, slow], "per_stream_gbps": nbytes / slow / 1e9}

    monkeypatch.setattr(limits, "_tls_copy_once", once)
    result = limits.tls_copy(10**6, streams=2, repeats=3)
    assert result["seconds_per_stream"] == [0.01, 0.02]
    assert result["repeats"] == 3
    assert result["per_stream_gbps_all_runs"] == [0.02, 0.05, 10**6 / 0.09 / 1e9]


def test_a_real_mutual_tls_copy_moves_every_byte():
    result = limits.tls_copy(4 << 20, streams=2, chunk=1 << 20, repeats=2)
    assert result["repeats"] == 2 and len(result["seconds_per_stream"]) == 2
    assert result["per_stream_gbps"] > 0 and result["total_gbps"] > 0
    assert result["tls"].startswith("OpenSSL")
