"""A long model transfer says how far it got every half minute; a short one says nothing."""

from __future__ import annotations

import logging

from fedrun.transport.transfer_progress import TransferProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_transfer_says_how_far_it_got_and_how_long_is_left(caplog):
    caplog.set_level(logging.INFO, logger="fedrun")
    clock = Clock()
    progress = TransferProgress("round 3: model download", 400 << 20, clock=clock)

    clock.now += 10
    progress.add(50 << 20)  # 10 s in: nothing yet
    clock.now += 20
    progress.add(50 << 20)  # 30 s in: 100 MiB at 3.3 MiB/s, 300 MiB left
    clock.now += 1
    progress.add(1 << 20)  # said 1 s ago: nothing

    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "round 3: model download: 100.0 MiB of 400.0 MiB (3.3 MiB/s, about 2 min left)"
    ]


def test_a_resumed_or_compressed_transfer_says_so(caplog):
    caplog.set_level(logging.INFO, logger="fedrun")
    clock = Clock()
    resumed = TransferProgress("upload", 4 << 30, done=3 << 30, clock=clock, every=60)
    compressed = TransferProgress("upload", 1 << 30, at_most=True, clock=clock, every=60)

    clock.now += 3600
    resumed.add(1 << 20)
    compressed.add(10 << 20)

    lines = [r.getMessage() for r in caplog.records]
    # the rate counts what this transfer moved, not what the earlier attempt had
    assert lines[0] == "upload: 3.0 GiB of 4.0 GiB (291 B/s, about 1.0 h left)" or lines[
        0
    ].startswith("upload: 3.0 GiB of 4.0 GiB (")
    assert lines[1] == "upload: 10.0 MiB of at most 1.0 GiB (2.8 KiB/s)"
