"""The end-of-experiment rounds table."""

from __future__ import annotations

from rich.console import Console

from fedrun.federation.round_state import RoundSummary
from fedrun.metrics.summary import round_table


def _render(table) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def _summary(number: int, cpu: float | None, final: bool = False) -> RoundSummary:
    return RoundSummary(
        number=number,
        metrics={"train/loss": 0.5},
        duration=1.25,
        collaborators=["one"],
        stragglers=[],
        bytes_received=2048,
        final_validation=final,
        cpu_seconds=cpu,
    )


def test_rounds_table_shows_the_aggregator_cpu_when_measured():
    text = _render(round_table([_summary(0, 0.42), _summary(1, None, final=True)]))

    assert "CPU s" in text
    assert "0.42" in text
    rows = [line for line in text.splitlines() if line.strip().startswith(("│", "┃"))]
    assert any("final" in row and "1.2" in row for row in rows)


def test_rounds_table_has_no_cpu_column_without_measurements():
    text = _render(round_table([_summary(0, None)]))

    assert "CPU" not in text
    assert "2.0 KiB" in text


def test_rounds_the_table_no_longer_holds_are_counted_in_its_caption():
    text = _render(round_table([_summary(118, None), _summary(119, None)]))

    assert "118 earlier rounds are in logs/metrics.jsonl" in " ".join(text.split())  # wrapped


def test_rounds_table_has_the_new_model_time_of_the_round_log_line():
    summary = _summary(0, 0.42)
    summary.aggregation_seconds = 0.37

    text = _render(round_table([summary]))

    assert "new model s" in text and "0.37" in text


def test_byte_counts_are_whole_numbers_and_other_metrics_keep_four_decimals():
    summary = _summary(0, None)
    summary.metrics = {
        "train/loss": 0.5,
        "communication/bytes_received": 109648.0,
        "communication/compression_ratio": 1.0,
    }

    text = _render(round_table([summary]))

    assert "109648 " in text and "109648.0000" not in text
    assert "0.5000" in text and "1.0000" in text
