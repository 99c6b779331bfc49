"""SilenceWatchdog: ends calls whose first message does not come, with one thread for all."""

from __future__ import annotations

import threading
import time

from fedrun.transport.admission import SilenceWatchdog


def test_a_silent_call_is_ended_and_one_heard_from_is_left_alone():
    watchdog = SilenceWatchdog()
    ended: list[str] = []
    done = threading.Event()

    def end(name: str):
        def on_silence() -> None:
            ended.append(name)
            if name == "silent-late":
                done.set()

        return on_silence

    heard = watchdog.watch(0.1, end("heard"))
    watchdog.watch(0.2, end("silent"))
    watchdog.watch(0.4, end("silent-late"))
    watchdog.heard(heard)

    assert done.wait(5)
    time.sleep(0.05)
    assert ended == ["silent", "silent-late"]


def test_one_thread_watches_every_call():
    watchdog = SilenceWatchdog()
    before = threading.active_count()
    tokens = [watchdog.watch(30, lambda: None) for _ in range(200)]
    for token in tokens:
        watchdog.heard(token)
    assert threading.active_count() <= before + 1
