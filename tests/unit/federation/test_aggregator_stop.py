"""Stopping the aggregator (Ctrl-C, SIGTERM) while a round ends: the round's end is waited for,
nothing is taken after, and whatever stops a round's end makes the collaborators wait for the
aggregator, never give up on it; a result counted in a round closed since is a duplicate."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from result_uploads import make, send, trained, validate

from fedrun.errors import ProtocolError, StateError
from fedrun.federation.aggregator import ModelSink


class SlowSink(ModelSink):
    """Saving the new model takes a while (a model of gigabytes)."""

    def __init__(self, seconds: float, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.saving = threading.Event()

    def save_last(self, tensors, round_num: int) -> Path | None:
        self.saving.set()
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return None


def test_a_stop_waits_for_the_round_s_end_and_takes_nothing_after(tmp_path):
    # Prepare: b's result closes round 0 in another thread; saving its model takes 1 s
    sink = SlowSink(1.0)
    agg = make(tmp_path, sink=sink)
    for who in ("a", "b"):
        validate(agg, who)
    send(agg, "a", trained(1.0), 10, None)
    closing = threading.Thread(target=send, args=(agg, "b", trained(2.0), 10, None))
    closing.start()
    assert sink.saving.wait(10)

    # Execute: a stop asked for meanwhile
    waits = 0
    while not agg.begin_stop(timeout=0.1):
        waits += 1
    closing.join()

    # Assert: it waited for the round's end, which was committed whole
    assert waits >= 3
    assert agg.round_num == 1 and agg.broken is None
    with pytest.raises(StateError) as caught:
        agg.open_result("a", 1, "validate", 5, {"acc": 0.5}, 0)
    assert caught.value.code == "FX-STATE-032"
    assert "sends it again once the aggregator is started again" in caught.value.fix


def test_a_stopping_aggregator_closes_no_round(tmp_path):
    agg = make(tmp_path)
    for who in ("a", "b"):
        validate(agg, who)
    send(agg, "a", trained(1.0), 10, None)
    upload = agg.open_result("b", 0, "train", 10, {"loss": 1.0}, 0)  # streaming in
    assert agg.begin_stop(timeout=1.0)

    with pytest.raises(StateError) as caught:
        upload.commit()

    assert caught.value.code == "FX-STATE-032"
    agg.tick()
    assert agg.round_num == 0  # the next start closes it from the saved results


def test_a_round_s_end_failing_on_a_fault_of_its_own_keeps_the_collaborators_waiting(tmp_path):
    # a fault that is neither the disk's nor the plan's: a state error (the collaborators are
    # told the aggregator is unavailable and retry) with the traceback in the log
    agg = make(tmp_path, sink=SlowSink(0.0, fail=True))
    for who in ("a", "b"):
        validate(agg, who)
    send(agg, "a", trained(1.0), 10, None)

    with pytest.raises(StateError) as caught:
        send(agg, "b", trained(2.0), 10, None)

    assert caught.value.code == "FX-STATE-033"
    assert "round 0 could not be finished: cannot schedule new futures" in caught.value.message
    assert "resumes the round from its saved results" in caught.value.fix
    assert agg.broken is caught.value


def test_a_result_counted_in_a_round_closed_since_is_a_duplicate(tmp_path):
    # its acknowledgement was lost (the aggregator stopped after storing it and, started again,
    # closed the round from its state): the collaborator is told it counted, not "too late"
    agg = make(tmp_path)
    for who in ("a", "b"):
        validate(agg, who)
        send(agg, who, trained(1.0), 10, None)
    assert agg.round_num == 1

    with pytest.raises(ProtocolError) as counted:
        agg.open_result("b", 0, "train", 10, {"loss": 1.0}, 3)
    with pytest.raises(ProtocolError) as late:
        agg.open_result("b", 0, "other", 10, {"loss": 1.0}, 3)

    assert counted.value.code == "FX-ROUND-005"
    assert "it was counted before round 0 closed" in counted.value.message
    assert late.value.code == "FX-ROUND-002"
    assert np.isfinite(agg.global_model["conv"]).all()
