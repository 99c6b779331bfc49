"""What one collaborator, buggy or hostile but holding a valid certificate, can send: every
header is checked against the global model before its payload is taken, a stalled upload is
dropped, optimizer state is bounded and never gets the others' results refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from result_uploads import INITIAL, header, make, send, trained, validate

from fedrun.errors import ProtocolError
from fedrun.federation.stragglers import CutoffTimePolicy
from fedrun.protocol import federation_pb2 as pb

GIB = 1 << 30


def big_header(
    name: str, shape: tuple[int, ...], encoding: str = "none", delta: bool = True
) -> pb.TensorHeader:
    count = int(np.prod(shape))
    return pb.TensorHeader(
        name=name,
        dtype="<f4",
        shape=list(shape),
        payload_bytes=4 * count,
        encoding=encoding,
        delta=delta and encoding == "none",
    )


@pytest.mark.parametrize(
    ("name", "shape", "code"),
    [
        ("evil", (GIB // 4,), "FX-DATA-013"),  # not in the model: a 1 GiB buffer otherwise
        ("conv", (GIB // 4,), "FX-DATA-014"),  # a model tensor claiming another shape
    ],
)
@pytest.mark.parametrize("encoding", ["none", "stc"])
def test_a_delta_or_compressed_tensor_is_checked_at_its_header(
    tmp_path, name, shape, code, encoding
):
    # Prepare: an open upload
    agg = make(tmp_path)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))

    # Execute: only the header arrives (the whole payload used to be buffered before any check)
    with pytest.raises(ProtocolError) as info:
        upload.open_tensor(big_header(name, shape, encoding), np.dtype("<f4"))

    # Assert
    assert info.value.code == code
    upload.abort()


def test_a_stalled_upload_is_dropped_so_a_cut_off_round_closes(tmp_path, caplog):
    # Prepare: a cut-off of 10 s; `b` finishes, `a` starts an upload and goes silent
    now = [0.0]
    agg = make(
        tmp_path,
        straggler_policy=CutoffTimePolicy(straggler_cutoff_time=10, minimum_reporting=1),
        collaborator_timeout=300,
        clock=lambda: now[0],
    )
    agg.get_tasks("a", wait=0)
    agg.get_tasks("b", wait=0)
    send(agg, "b", trained(0.5), 30, 1 << 10)
    validate(agg, "b")
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    cancelled = []
    upload.on_drop = lambda: cancelled.append(True)
    conv = trained(0.25)["conv"]
    incoming = upload.open_tensor(header("conv", conv), conv.dtype)
    assert incoming is not None
    incoming.write(memoryview(conv.tobytes())[:16])

    # Execute: past the cut-off the round waits for the upload while it moves...
    now[0] = 20.0
    incoming.write(memoryview(conv.tobytes())[16:32])
    agg.tick()
    assert agg.round_num == 0 and not cancelled
    # ...and drops it once it has sent nothing for 30 s
    now[0] = 51.0
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        agg.tick()

    # Assert: the round closed without `a`; its call is ended; late data is refused
    assert agg.round_num == 1 and cancelled == [True]
    assert "dropped a's upload of train: no data for 31 s" in caplog.text
    with pytest.raises(ProtocolError) as info:
        incoming.write(memoryview(conv.tobytes())[32:48])
    assert info.value.code == "FX-ROUND-007"
    upload.abort()
    assert not list((tmp_path / "spool").glob("*.result*"))


def test_without_a_cut_off_a_stalled_upload_is_dropped_after_collaborator_timeout(tmp_path):
    now = [0.0]
    agg = make(tmp_path, collaborator_timeout=60, clock=lambda: now[0])
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    conv = trained(0.25)["conv"]
    incoming = upload.open_tensor(header("conv", conv), conv.dtype)
    assert incoming is not None

    now[0] = 59.0
    agg.tick()
    incoming.write(memoryview(conv.tobytes())[:16])  # still accepted: not idle 60 s yet
    now[0] = 121.0
    agg.tick()

    with pytest.raises(ProtocolError) as info:
        incoming.write(memoryview(conv.tobytes())[16:32])
    assert info.value.code == "FX-ROUND-007"
    upload.abort()
    # the collaborator sends its result again while the round is open: it counts
    send(agg, "a", trained(0.25), 10, 1 << 10)
    assert "train" in agg.round.done["a"]


def with_optimizer_state(offset: float, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    tensors = trained(offset)
    tensors["__opt_state_0_exp_avg"] = np.full(shape, offset, dtype=np.float32)
    return tensors


def test_odd_optimizer_state_from_one_collaborator_does_not_refuse_the_others(tmp_path, caplog):
    # Prepare: CONTINUE_GLOBAL; `a` (first, and first in name order) sends optimizer state of
    # another shape than `b` and `c`
    agg = make(tmp_path, cols=("a", "b", "c"), accept_optimizer_state=True)

    # Execute: the honest results used to be refused (FX-DATA-014) after `a` set the shape
    send(agg, "a", with_optimizer_state(9.0, (1,)), 10, 1 << 10)
    send(agg, "b", with_optimizer_state(1.0, (3, 5, 7)), 10, 1 << 10)
    send(agg, "c", with_optimizer_state(3.0, (3, 5, 7)), 30, None)
    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        for who in ("a", "b", "c"):
            validate(agg, who)

    # Assert: the layout most results hold is aggregated, from those results only
    assert agg.round_num == 1
    state = np.asarray(agg.global_model["__opt_state_0_exp_avg"])
    assert state.shape == (3, 5, 7)
    np.testing.assert_allclose(state, (1.0 * 10 + 3.0 * 30) / 40)
    assert "'__opt_state_0_exp_avg': a sent shape/dtype other than (3, 5, 7)" in caplog.text


def test_optimizer_state_out_of_proportion_to_the_model_is_refused(tmp_path):
    agg = make(tmp_path, accept_optimizer_state=True)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, 2)
    weights = sum(a.nbytes for a in INITIAL.values())
    huge = (2 * ((8 * weights + (1 << 20)) // 4),)  # over 8x the weights (+1 MiB slack)

    with pytest.raises(ProtocolError) as info:
        upload.open_tensor(
            big_header("__opt_/../../../etc/evil", huge, delta=False), np.dtype("<f4")
        )

    assert info.value.code == "FX-DATA-020"
    assert "8x the model's weights" in info.value.message
    upload.abort()


def test_optimizer_state_of_a_round_replaces_the_previous_one(tmp_path):
    # Prepare: round 0 brings an optimizer-state name that round 1 no longer has
    agg = make(tmp_path, accept_optimizer_state=True)
    for who in ("a", "b"):
        tensors = with_optimizer_state(1.0, (3,))
        tensors["__opt_state_9_old"] = np.ones(4, dtype=np.float32)
        send(agg, who, tensors, 10, 1 << 10)
        validate(agg, who)
    assert "__opt_state_9_old" in agg.global_model

    # Execute
    for who in ("a", "b"):
        send(agg, who, with_optimizer_state(2.0, (3,)), 10, 1 << 10)
        validate(agg, who)

    # Assert: names no result holds any more do not pile up in the model
    assert "__opt_state_9_old" not in agg.global_model
    assert "__opt_state_0_exp_avg" in agg.global_model


def test_a_result_lacking_model_tensors_is_said_once(tmp_path, caplog):
    agg = make(tmp_path)
    partial = {k: v for k, v in trained(0.25).items() if k != "bias"}

    with caplog.at_level(logging.WARNING, logger="fedrun.aggregator"):
        send(agg, "a", partial, 10, 1 << 10)

    assert "a's result for train lacks 1 of the model's 3 tensors (e.g. 'bias')" in caplog.text


def test_names_a_peer_chooses_are_quoted_escaped_and_cut_in_refusals(tmp_path):
    # a tensor or task name with a line break, a terminal escape and a megabyte of text went
    # into the aggregator's log as it was
    agg = make(tmp_path)
    forged = "w\n2026-01-01 ERROR fedrun.aggregator: forged\x1b[31m" + "x" * 1_000_000
    with pytest.raises(ProtocolError) as task:
        agg.open_result("a", 0, forged, 10, {"loss": 1.0}, 1)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, 1)
    with pytest.raises(ProtocolError) as tensor:
        upload.open_tensor(header(forged, np.zeros(3, np.float32)), np.dtype(np.float32))
    upload.abort()

    for caught in (task, tensor):
        message = caught.value.message
        assert len(message) < 400 and "\n" not in message and "\x1b" not in message, message
        assert "'w\\n2026-01-01 ERROR" in message
