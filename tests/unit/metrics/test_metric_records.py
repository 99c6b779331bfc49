"""metrics.jsonl lines: one JSON object per record, every field, in field order."""

from __future__ import annotations

import dataclasses
import json

from fedrun.metrics.records import JsonlMetricWriter, MetricRecord


def test_json_line_carries_every_field_in_order():
    record = MetricRecord(3, "collaborator1", "train", "loss", 0.25, 1795968602.5)
    decoded = json.loads(record.to_json())
    assert list(decoded) == [f.name for f in dataclasses.fields(MetricRecord)]
    assert decoded == dataclasses.asdict(record)


def test_writer_appends_one_line_per_record(tmp_path):
    writer = JsonlMetricWriter(tmp_path / "logs" / "metrics.jsonl")
    try:
        writer(MetricRecord(0, "aggregator", "aggregated_model_validation", "acc", 0.5, 1.0))
        writer(MetricRecord(1, "aggregator", "aggregated_model_validation", "acc", 0.75, 2.0))
    finally:
        writer.close()
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["value"] for line in lines] == [0.5, 0.75]
