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


def test_a_follower_returns_only_whole_lines_written_since_its_last_call(tmp_path):
    from fedrun.metrics.records import MetricsFollower

    path = tmp_path / "metrics.jsonl"
    lines = [
        MetricRecord(r, "aggregator", "t", "acc", r / 10, float(r)).to_json() for r in range(4)
    ]
    follower = MetricsFollower(path)
    assert follower.new_records() == []  # no file yet

    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:9])  # the third half-written
    assert [r.round for r in follower.new_records()] == [0, 1]
    assert follower.new_records() == []  # nothing new: nothing read again

    with path.open("a") as file:
        file.write(lines[2][9:] + "\n" + lines[3] + "\n")
    assert [r.round for r in follower.new_records()] == [2, 3]

    path.write_text(lines[0] + "\n")  # replaced by a new, shorter file: read from its start
    assert [r.round for r in follower.new_records()] == [0]


def test_a_damaged_file_is_read_back_without_its_damaged_lines(tmp_path):
    # a disk error or a stray write left bytes that are no UTF-8 (the aggregator stopped at
    # resume with a UnicodeDecodeError traceback)
    from fedrun.metrics.records import read_metrics

    path = tmp_path / "metrics.jsonl"
    good = MetricRecord(0, "aggregator", "aggregated_model_validation", "acc", 0.5, 1.0)
    path.write_bytes(
        (good.to_json() + "\n").encode() + b"\x9d\xff{not json\n" + b"[1, 2]\n" + b"\x00\x81"
    )

    assert list(read_metrics(path)) == [good]


def test_records_a_full_disk_cannot_take_are_written_once_it_takes_them_again(
    tmp_path, monkeypatch
):
    # a full disk lost records for good (round 4 kept 8 of its 13 in the audit's run); a
    # partly written line must not be written twice either
    import errno
    import os as real_os

    from fedrun.metrics import records
    from fedrun.metrics.records import MetricHub, read_metrics

    full = {"now": False, "partial": False}
    real_write = real_os.write

    def disk(fd, data):
        if full["partial"]:  # the disk takes 10 bytes, then is full
            full["partial"], full["now"] = False, True
            return real_write(fd, bytes(data[:10]))
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(records.os, "write", disk)
    warnings: list[str] = []
    path = tmp_path / "metrics.jsonl"
    hub = MetricHub([JsonlMetricWriter(path)], on_error=warnings.append)
    sent = [MetricRecord(r, "aggregator", "validate", "acc", r / 10, float(r)) for r in range(6)]

    hub(sent[0])
    full["partial"] = True
    hub(sent[1])
    hub(sent[2])
    full["now"] = False
    hub(sent[3])
    full["now"] = True
    hub(sent[4])
    full["now"] = False
    hub.close()  # the last held-back record is written at the end

    assert list(read_metrics(path)) == sent[:5]
    assert len(warnings) == 2  # once per spell of failures, naming the file
    assert str(path) in warnings[0] and "held back" in warnings[0]


def test_a_record_after_a_cut_off_line_starts_a_line_of_its_own(tmp_path):
    # a kill mid-write left half a line; the next record was glued to it and lost with it
    from fedrun.metrics.records import read_metrics

    path = tmp_path / "metrics.jsonl"
    kept = MetricRecord(0, "aggregator", "validate", "acc", 0.25, 1.0)
    path.write_text(kept.to_json() + '\n{"round": 1, "origin": "collabor')
    record = MetricRecord(1, "aggregator", "validate", "acc", 0.5, 2.0)

    writer = JsonlMetricWriter(path)
    writer(record)
    writer.close()

    assert list(read_metrics(path)) == [kept, record]
