"""A collaborator's finished results, kept until their round is over: found again only for the
same run, plan, round and task, whole; damaged or foreign files are not used."""

from __future__ import annotations

import numpy as np
import pytest

from fedrun.storage.finished_results import FinishedResult, FinishedResults

TENSORS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([4], np.int64)}


def kept(tmp_path, plan_hash: str = "h" * 64) -> FinishedResults:
    results = FinishedResults(tmp_path / "kept", plan_hash)
    results.keep("run1", FinishedResult(3, "train", 60, {"loss": 0.25}, dict(TENSORS)))
    results.keep("run1", FinishedResult(3, "validate", 10, {"acc": 0.5}))
    return results


def test_a_kept_result_is_found_whole(tmp_path):
    results = kept(tmp_path)

    train = results.find("run1", 3, "train")
    validate = results.find("run1", 3, "validate")

    assert train is not None and validate is not None
    assert (train.data_size, train.metrics) == (60, {"loss": 0.25})
    assert sorted(train.tensors) == ["n", "w"]
    for name, array in TENSORS.items():
        assert train.tensors[name].dtype == array.dtype
        np.testing.assert_array_equal(train.tensors[name], array)
    assert (validate.data_size, validate.metrics, validate.tensors) == (10, {"acc": 0.5}, {})


@pytest.mark.parametrize(
    ("run", "round_num", "task", "plan_hash"),
    [
        ("run2", 3, "train", "h" * 64),  # the aggregator was started over since
        ("run1", 4, "train", "h" * 64),
        ("run1", 3, "other", "h" * 64),
        ("run1", 3, "train", "g" * 64),  # another plan
    ],
)
def test_a_result_of_another_run_round_task_or_plan_is_not_found(
    tmp_path, run, round_num, task, plan_hash
):
    kept(tmp_path)
    results = FinishedResults(tmp_path / "kept", plan_hash)

    assert results.find(run, round_num, task) is None


def test_a_damaged_result_is_computed_again(tmp_path, caplog):
    results = kept(tmp_path)
    tensors = tmp_path / "kept" / "r3_train.pbuf"
    tensors.write_bytes(tensors.read_bytes()[:-8])  # cut short (a power cut)

    assert results.find("run1", 3, "train") is None
    assert "damaged" in caplog.text and "computing it again" in caplog.text


def test_a_result_without_its_description_does_not_exist(tmp_path):
    # the description is written last: a stop in between leaves tensors nobody uses
    results = kept(tmp_path)
    (tmp_path / "kept" / "r3_train.json").unlink()

    assert results.find("run1", 3, "train") is None


def test_other_rounds_are_forgotten(tmp_path):
    results = kept(tmp_path)
    results.keep("run1", FinishedResult(4, "train", 60, {}, dict(TENSORS)))

    results.forget_except(4)
    assert results.find("run1", 3, "train") is None
    assert results.find("run1", 4, "train") is not None
    results.forget_except(None)
    assert list((tmp_path / "kept").iterdir()) == []


def test_only_results_that_took_a_while_are_worth_writing():
    assert not FinishedResults.worth_keeping(0.5, 0)
    assert FinishedResults.worth_keeping(10.0, 2_000_000)
    assert not FinishedResults.worth_keeping(10.0, 4_000_000_000)  # 4 GB for 10 s of work


def test_a_result_that_cannot_be_written_is_said_once(tmp_path, caplog):
    (tmp_path / "kept").write_text("a file where the folder should be")
    results = FinishedResults(tmp_path / "kept", "h" * 64)

    results.keep("run1", FinishedResult(3, "train", 60, {}, dict(TENSORS)))
    results.keep("run1", FinishedResult(3, "validate", 60, {}))

    assert caplog.text.count("could not keep the result") == 1
    assert "fix:" not in caplog.text
    assert results.find("run1", 3, "train") is None


@pytest.mark.parametrize(("value", "keeps"), [("0", True), ("abc", False), ("nan", False)])
def test_the_least_compute_time_can_be_set_and_a_bad_value_is_said(
    monkeypatch, caplog, value, keeps
):
    monkeypatch.setenv("FEDRUN_KEEP_RESULTS_AFTER_SECONDS", value)

    assert FinishedResults.worth_keeping(0.5, 10) is keeps
    assert ("is not a number of seconds" in caplog.text) is (not keeps)
