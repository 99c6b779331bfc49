"""An upload that breaks off keeps the tensors that arrived whole, for an upload of the same
result (its id) to resume with the rest (``ResultUpload.suspend``, ``Aggregator.result_progress``,
``open_result(held=...)``); another result, a changed one or the round's end start over."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from result_uploads import INITIAL, header, make, send, trained, validate

from fedrun.errors import ProtocolError
from fedrun.federation.result_upload import ResultUpload
from fedrun.federation.stragglers import PercentagePolicy

RESULT = "r1"
ORDER = list(INITIAL)  # conv, bias, steps


def break_off(agg, who: str, tensors: dict, whole: int, result_id: str = RESULT) -> ResultUpload:
    """Stream ``tensors`` until ``whole`` of them arrived, then half of the next one, and break
    off as a lost connection does (the server's stream thread calls ``suspend``)."""
    upload = agg.open_result(
        who, agg.round_num, "train", 10, {"loss": 1.0}, len(tensors), result_id=result_id
    )
    names = list(tensors)
    for name in names[:whole]:
        array = tensors[name]
        incoming = upload.open_tensor(header(name, array), array.dtype)
        assert incoming is not None and incoming.write(memoryview(array.tobytes()))
    name = names[whole]
    array = tensors[name]
    incoming = upload.open_tensor(header(name, array), array.dtype)
    assert incoming is not None
    assert not incoming.write(memoryview(array.tobytes())[: array.nbytes // 2])
    upload.suspend()
    return upload


def resume(agg, who: str, tensors: dict, held: list[str], result_id: str = RESULT) -> None:
    upload = agg.open_result(
        who,
        agg.round_num,
        "train",
        10,
        {"loss": 1.0},
        len(tensors),
        result_id=result_id,
        held=held,
    )
    for name, array in tensors.items():
        if name in held:
            continue
        incoming = upload.open_tensor(header(name, array), array.dtype)
        assert incoming is not None and incoming.write(memoryview(array.tobytes()))
    upload.commit()


def spooled(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "spool").iterdir() if not p.name.startswith("free"))


def test_a_broken_off_upload_resumes_and_gives_the_model_an_unbroken_one_gives(tmp_path, caplog):
    # Prepare: the same round twice, once with a's upload broken after its first tensor
    caplog.set_level(logging.INFO, logger="fedrun")
    agg = make(tmp_path / "resumed")
    reference = make(tmp_path / "reference")
    send(reference, "a", trained(0.25), 10, 64)
    send(reference, "b", trained(-1.5), 30, 64)
    upload = break_off(agg, "a", trained(0.25), whole=1)

    # Execute: the collaborator asks what was kept and sends the rest
    held, nbytes = agg.result_progress("a", RESULT, 0, "train")
    resume(agg, "a", trained(0.25), held)
    send(agg, "b", trained(-1.5), 30, 64)
    for aggregator in (agg, reference):
        validate(aggregator, "a")
        validate(aggregator, "b")

    # Assert: the first tensor was kept, and the new model is bit for bit the reference's
    assert upload.suspended is False and held == ["conv"]
    assert nbytes == INITIAL["conv"].nbytes
    assert agg.round_num == reference.round_num == 1
    for name in INITIAL:
        assert agg.global_model[name].tobytes() == reference.global_model[name].tobytes()
    said = [r.getMessage() for r in caplog.records if "resumes its upload" in r.getMessage()]
    assert said == [
        "round 0: a resumes its upload of train: 1 of 3 tensors (420 B) were already here"
    ]


def test_nothing_is_kept_of_an_upload_broken_inside_its_first_tensor(tmp_path):
    agg = make(tmp_path)
    upload = break_off(agg, "a", trained(0.25), whole=0)

    assert upload.suspended is False
    assert agg.result_progress("a", RESULT, 0, "train") == ([], 0)
    assert spooled(tmp_path) == []


def test_another_result_of_the_collaborator_is_not_given_the_kept_tensors(tmp_path):
    # a collaborator restarted without the result kept trains again: another result
    agg = make(tmp_path)
    break_off(agg, "a", trained(0.25), whole=2)

    assert agg.result_progress("a", "r2", 0, "train") == ([], 0)
    with pytest.raises(ProtocolError) as caught:
        resume(agg, "a", trained(0.5), ["conv", "bias"], result_id="r2")

    assert caught.value.code == "FX-ROUND-021"
    assert "sends the whole result again" in caught.value.fix
    assert spooled(tmp_path) == []  # what was kept is dropped with the refusal
    send(agg, "a", trained(0.5), 10, 64)  # the whole result is taken
    assert agg.round.done["a"] == {"train"}


@pytest.mark.parametrize(
    "change",
    [
        {"held": ["conv", "bias"]},  # claims more than arrived
        {"data_size": 11},
        {"metrics": {"loss": 2.0}},
    ],
)
def test_a_resume_that_does_not_match_what_was_kept_is_refused(tmp_path, change):
    agg = make(tmp_path)
    break_off(agg, "a", trained(0.25), whole=1)
    held = change.get("held", ["conv"])

    with pytest.raises(ProtocolError) as caught:
        agg.open_result(
            "a",
            0,
            "train",
            change.get("data_size", 10),
            change.get("metrics", {"loss": 1.0}),
            len(INITIAL),
            result_id=RESULT,
            held=held,
        )

    assert caught.value.code == "FX-ROUND-021"
    assert agg.result_progress("a", RESULT, 0, "train") == ([], 0)


def test_a_whole_resend_replaces_what_was_kept(tmp_path):
    agg = make(tmp_path)
    break_off(agg, "a", trained(0.25), whole=2)

    send(agg, "a", trained(0.25), 10, 64)  # sent whole (an older collaborator)

    assert agg.round.done["a"] == {"train"}
    assert agg.result_progress("a", RESULT, 0, "train") == ([], 0)
    assert len(spooled(tmp_path)) == 1  # the accepted result only


def test_the_round_s_end_deletes_what_was_kept_of_a_straggler_s_upload(tmp_path):
    # Prepare: a cut-off policy closes round 0 without b, whose upload broke off
    agg = make(tmp_path, straggler_policy=PercentagePolicy(0.5))
    agg.get_tasks("a")
    break_off(agg, "b", trained(0.25), whole=2)
    assert agg.result_progress("b", RESULT, 0, "train")[0] == ["bias", "conv"]

    # Execute
    send(agg, "a", trained(0.5), 10, 64)
    validate(agg, "a")

    # Assert
    assert agg.round_num == 1
    assert agg.result_progress("b", RESULT, 0, "train") == ([], 0)
    assert not list((tmp_path / "spool").glob(".r0_b_*")), spooled(tmp_path)


def test_asking_what_was_kept_ends_an_upload_still_open_here(tmp_path):
    # the collaborator's side of the call failed, the aggregator's has not noticed yet: it is
    # dropped, and what arrived whole is kept (the stream thread suspends it)
    agg = make(tmp_path)
    tensors = trained(0.25)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(tensors), result_id=RESULT)
    conv = tensors["conv"]
    incoming = upload.open_tensor(header("conv", conv), conv.dtype)
    assert incoming is not None and incoming.write(memoryview(conv.tobytes()))
    upload.on_drop = upload.suspend  # what the transport's cancelled call leads to

    held, _ = agg.result_progress("a", RESULT, 0, "train")

    assert held == ["conv"] and upload.dropped == "the collaborator resumes it"
    resume(agg, "a", tensors, held)
    assert agg.round.done["a"] == {"train"}


def test_a_kept_upload_resumes_with_its_optimizer_state_budget_recounted(tmp_path):
    # the tensor cut off midway does not count against the optimizer-state budget twice
    agg = make(tmp_path, accept_optimizer_state=True)
    tensors = trained(0.25)
    tensors["__opt_state_0_exp_avg"] = np.full((3, 5, 7), 0.5, dtype=np.float32)
    tensors = {"__opt_state_0_exp_avg": tensors.pop("__opt_state_0_exp_avg"), **tensors}
    upload = break_off(agg, "a", tensors, whole=1)
    assert upload.optimizer_bytes == 3 * 5 * 7 * 4 and upload.optimizer_tensors == 1

    held, _ = agg.result_progress("a", RESULT, 0, "train")
    resume(agg, "a", tensors, held)

    assert held == ["__opt_state_0_exp_avg"]
    assert agg.round.done["a"] == {"train"}


def test_a_stopping_aggregator_keeps_nothing(tmp_path):
    # a restarted aggregator keeps nothing: files kept at the stop were left behind until then
    agg = make(tmp_path)
    break_off(agg, "a", trained(0.25), whole=1)
    upload = agg.open_result("b", 0, "train", 10, {"loss": 1.0}, 3, result_id="rb")
    conv = trained(0.5)["conv"]
    incoming = upload.open_tensor(header("conv", conv), conv.dtype)
    assert incoming is not None and incoming.write(memoryview(conv.tobytes()))

    assert agg.begin_stop(timeout=1.0)
    agg.discard_kept()
    kept_at_stop = upload.suspend()  # its stream ends with the server

    assert not kept_at_stop
    assert agg.result_progress("a", RESULT, 0, "train") == ([], 0)
    assert spooled(tmp_path) == []


def test_a_collaborator_started_again_takes_over_its_earlier_process_s_upload(tmp_path, caplog):
    # Prepare: process p1's upload is open (its host froze after two tensors)
    caplog.set_level(logging.INFO, logger="fedrun")
    agg = make(tmp_path)
    tensors = trained(0.25)
    upload = agg.open_result(
        "a", 0, "train", 10, {"loss": 1.0}, len(tensors), result_id=RESULT, process="p1"
    )
    for name in ("conv", "bias"):
        incoming = upload.open_tensor(header(name, tensors[name]), tensors[name].dtype)
        assert incoming is not None and incoming.write(memoryview(tensors[name].tobytes()))
    upload.on_drop = upload.suspend  # what the transport's cancelled call leads to
    validate(agg, "a")

    # Execute: process p2 (started again, the result kept on its disk) asks for tasks
    assignment = agg.get_tasks("a", process="p2")
    held, _ = agg.result_progress("a", RESULT, 0, "train")
    resume(agg, "a", tensors, held)

    # Assert: the task handed out again at once, resumed with what p1 sent
    assert "train" in assignment.tasks
    assert held == ["bias", "conv"]
    assert agg.round.done["a"] >= {"train"}
    assert "a was started again: its earlier process's upload of train is ended" in caplog.text
