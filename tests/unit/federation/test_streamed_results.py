"""Results spooled and checked chunk by chunk as they stream in (``ResultUpload.open_tensor``),
aggregated from the spool when the round closes (fixed order, one tensor's sums at a time), and
the global model kept as a memory map of ``last.pbuf`` instead of a resident copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from result_uploads import INITIAL, header, make, send, trained, validate

from fedrun.errors import ProtocolError
from fedrun.federation.aggregator import Aggregator
from fedrun.protocol.codec import encode_tensor_wire, mapped_file_range
from fedrun.storage.model_file import load_model, open_model_view, save_model
from fedrun.storage.model_store import ModelStore


def assert_same_model(actual: Aggregator, expected: Aggregator) -> None:
    for name in INITIAL:
        assert actual.global_model[name].tobytes() == expected.global_model[name].tobytes()


def run_round(agg: Aggregator, chunk: int | None, a_tensors=None) -> int:
    streamed = send(agg, "a", a_tensors or trained(0.25), 10, chunk)
    streamed += send(agg, "b", trained(-1.5), 30, chunk)
    validate(agg, "a")
    validate(agg, "b")
    return streamed


@pytest.mark.parametrize("chunk", [4 << 20, 64, 7])  # 7: chunks end inside float32 elements
def test_streamed_results_give_the_same_model_bit_for_bit(tmp_path, chunk):
    whole = make(tmp_path / "whole")
    streamed = make(tmp_path / "streamed")
    run_round(whole, None)
    # every raw tensor streams into the spool, the int64 counter too (its average is rounded
    # when the round closes)
    assert run_round(streamed, chunk) == 6
    for name in INITIAL:
        assert streamed.global_model[name].dtype == whole.global_model[name].dtype
        assert streamed.global_model[name].tobytes() == whole.global_model[name].tobytes()


def test_nan_in_a_late_chunk_is_refused_and_leaves_nothing(tmp_path):
    agg = make(tmp_path)
    reference = make(tmp_path / "ref")
    run_round(reference, None)
    bad = trained(0.25)
    bad["conv"] = bad["conv"].copy()
    bad["conv"].reshape(-1)[-1] = np.nan  # the last chunk: earlier chunks are already spooled
    with pytest.raises(ProtocolError) as info:
        send(agg, "a", bad, 10, 16)
    assert info.value.code == "FX-DATA-010"
    assert "NaN or inf" in info.value.message
    assert not list((tmp_path / "spool").glob("*.result")) and not agg.round.done["a"]
    # the collaborator resends a good result; only accepted results are aggregated
    run_round(agg, 16)
    assert_same_model(agg, reference)


def test_an_overflowing_but_finite_chunk_is_accepted():
    from fedrun.aggregation.base import all_finite as finite

    big = np.full(8, np.finfo(np.float32).max, dtype=np.float32)  # its float32 sum is inf
    assert finite(big)
    assert not finite(np.array([1.0, np.inf], dtype=np.float32))
    assert not finite(np.array([np.nan, 1.0], dtype=np.float64))


def test_a_stream_cut_short_leaves_nothing_and_can_be_resent(tmp_path):
    agg = make(tmp_path)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    conv = trained(0.25)["conv"]
    incoming = upload.open_tensor(header("conv", conv), conv.dtype)
    assert incoming is not None
    assert not incoming.write(memoryview(conv.tobytes())[:100])
    upload.abort()
    assert not list((tmp_path / "spool").glob("*.result"))
    reference = make(tmp_path / "ref")
    run_round(reference, None)
    run_round(agg, 1 << 10)
    assert_same_model(agg, reference)


def test_too_many_bytes_for_a_streamed_tensor_are_refused(tmp_path):
    agg = make(tmp_path)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    bias = trained(0.25)["bias"]
    incoming = upload.open_tensor(header("bias", bias), bias.dtype)
    with pytest.raises(ProtocolError) as info:
        incoming.write(memoryview(bias.tobytes() + b"\0\0\0\0"))
    assert info.value.code == "FX-WIRE-007"
    upload.abort()


def test_unknown_or_misshaped_streamed_tensor_is_refused_at_its_header(tmp_path):
    agg = make(tmp_path)
    upload = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    wrong = np.zeros((5, 3, 7), dtype=np.float32)
    with pytest.raises(ProtocolError) as info:
        upload.open_tensor(header("conv", wrong), wrong.dtype)
    assert info.value.code == "FX-DATA-014"
    with pytest.raises(ProtocolError) as info:
        upload.open_tensor(header("extra", wrong), wrong.dtype)
    assert info.value.code == "FX-DATA-013"
    upload.abort()


def test_global_model_is_served_from_last_pbuf_not_kept_in_memory(tmp_path):
    init = save_model(tmp_path / "init.pbuf", INITIAL, round_num=0)
    model = open_model_view(init).tensors
    store = ModelStore(tmp_path / "best.pbuf", tmp_path / "last.pbuf", "h" * 64)
    agg = make(tmp_path, sink=store, model=model)
    assert all(mapped_file_range(a) for a in agg.get_global_model("a", 0).values())
    whole = make(tmp_path / "whole")
    run_round(agg, 4 << 20)
    run_round(whole, None)
    assert agg.round_num == 1
    for name, array in agg.global_model.items():
        mapped = mapped_file_range(array)
        assert mapped is not None and Path(mapped[0]) == tmp_path / "last.pbuf"
        assert array.tobytes() == whole.global_model[name].tobytes()
        # what collaborators receive is byte for byte what an in-memory model would send
        served = [
            f if isinstance(f, bytes) else f.SerializeToString()
            for f in encode_tensor_wire(name, array, chunk_bytes=64)
        ]
        expected = [
            f if isinstance(f, bytes) else f.SerializeToString()
            for f in encode_tensor_wire(name, np.array(array), chunk_bytes=64)
        ]
        assert served == expected
    # round 0 validated the initial model (a map of init.pbuf): best.pbuf is a kernel copy of
    # it under a new header
    best = load_model(tmp_path / "best.pbuf")
    assert (best.kind, best.round, best.metrics) == ("best", 0, {"validate/acc": 0.5})
    for name, array in best.tensors.items():
        assert array.tobytes() == INITIAL[name].tobytes()


def test_a_result_that_cannot_be_spooled_is_refused_and_can_be_resent(tmp_path):
    import os

    from fedrun.errors import StateError

    agg = make(tmp_path)
    reference = make(tmp_path / "ref")
    run_round(reference, None)
    # the spool's next file is a full disk (a link to /dev/full: every write fails with ENOSPC)
    os.makedirs(tmp_path / "spool", exist_ok=True)
    os.symlink("/dev/full", tmp_path / "spool" / "free-9.spool")
    agg.spool._free.append((tmp_path / "spool" / "free-9.spool", 0))
    with pytest.raises(StateError) as info:
        send(agg, "a", trained(0.25), 10, 1 << 20)
    assert info.value.code == "FX-STATE-005"
    assert os.path.exists("/dev/full") and not agg.round.done["a"]
    run_round(agg, 1 << 20)  # space is back: the collaborator's retry goes through
    assert_same_model(agg, reference)


@pytest.mark.parametrize("to_file,slice_elements", [(False, None), (True, None), (True, 1000)])
def test_the_new_model_does_not_depend_on_the_order_results_arrive_in(
    tmp_path, monkeypatch, to_file, slice_elements
):
    # float64 tensors: their float64 sums round differently in different orders, so a sum
    # folded in arrival order would differ in the last bits between these runs
    if slice_elements is not None:  # "w" aggregated in slices of 1000 elements
        from fedrun.federation import round_aggregation

        monkeypatch.setattr(round_aggregation, "SUM_SLICE_ELEMENTS", slice_elements)
    rng = np.random.default_rng(3)
    model = {"w": rng.standard_normal(4096), "v": rng.standard_normal(333).astype(np.float32)}
    updates = {
        who: {k: v + rng.standard_normal(v.shape).astype(v.dtype) * 1e3 for k, v in model.items()}
        for who in "abcd"
    }
    sizes = {"a": 7, "b": 11, "c": 13, "d": 3}
    models = []
    for order in ["abcd", "dcba", "cadb", "bdac"]:
        folder = tmp_path / order
        sink = ModelStore(folder / "best.pbuf", folder / "last.pbuf", "h" * 64) if to_file else None
        agg = make(folder, sink, model, cols=tuple("abcd"))
        for who in order:
            send(agg, who, updates[who], sizes[who], 1000)
        for who in order:
            validate(agg, who)
        assert agg.round_num == 1
        models.append({k: np.asarray(v).tobytes() for k, v in agg.global_model.items()})
    assert all(m == models[0] for m in models)
    expected = sum(updates[w]["w"] * sizes[w] for w in "abcd") / sum(sizes.values())
    assert np.allclose(np.frombuffer(models[0]["w"]), expected, rtol=1e-12)


def test_round_end_holds_one_tensors_sums_not_the_models(tmp_path, monkeypatch):
    import tracemalloc

    from fedrun.buffers import POOL
    from fedrun.federation import round_aggregation

    # one thread: each further thread holds one more slice's sums (8 MiB) and buffers (2 MiB)
    monkeypatch.setattr(round_aggregation, "slice_workers", lambda: 1)

    # 6 tensors of 1 MiB and one of 16 MiB (float32), which the weighted average sums in slices
    # of 1 Mi elements (8 MiB of float64): float64 sums of the whole model would be 44 MiB, of
    # the big tensor alone 32 MiB
    rng = np.random.default_rng(5)
    model = {f"t{i}": rng.standard_normal(1 << 18).astype(np.float32) for i in range(6)}
    model["big"] = rng.standard_normal(1 << 22).astype(np.float32)
    init = save_model(tmp_path / "init.pbuf", model, round_num=0)
    store = ModelStore(tmp_path / "best.pbuf", tmp_path / "last.pbuf", "h" * 64)
    agg = make(tmp_path, store, open_model_view(init).tensors, cols=tuple("abcd"))
    updates = {who: {k: v + 1 for k, v in model.items()} for who in "abcd"}
    POOL._free.clear()  # noqa: SLF001 - buffers left by other tests would hide allocations
    POOL._idle = 0  # noqa: SLF001
    tracemalloc.start()
    try:
        for who in "abcd":
            send(agg, who, updates[who], 5, 1 << 16)
        for who in "abcd":
            validate(agg, who)  # the last one closes the round: aggregate, write last.pbuf
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert agg.round_num == 1
    assert peak < 16 << 20, f"the round allocated up to {peak / 2**20:.1f} MiB"
    last = load_model(tmp_path / "last.pbuf").tensors
    for name, array in model.items():
        np.testing.assert_array_equal(last[name], array + 1)
        assert mapped_file_range(agg.global_model[name]) is not None


def test_result_files_of_committed_rounds_left_by_a_stop_are_removed(tmp_path):
    # Prepare: files of round 0 (committed; retire_round never ran) and of round 1 (current)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "r0_a_train.result").write_bytes(b"old")
    (spool / "r1_a_train.result").write_bytes(b"current")

    # Execute: the aggregator resumes at round 1
    make(tmp_path, initial_round=1)

    # Assert
    assert not (spool / "r0_a_train.result").exists()
    assert (spool / "r1_a_train.result").read_bytes() == b"current"


@pytest.mark.parametrize("earlier_finishes", [False, True])
def test_a_result_sent_again_while_its_first_upload_is_open_replaces_it(tmp_path, earlier_finishes):
    # Prepare: `a`'s first upload is still open here when `a`, whose call failed on its side
    # (a network cut), sends the result again
    agg = make(tmp_path)
    reference = make(tmp_path / "ref")
    run_round(reference, None)
    first = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    for name, array in list(trained(0.25).items())[:-1]:
        first.add(name, array)

    # Execute: the resend is taken (before: refused as a duplicate, which the collaborator reads
    # as "accepted", while the first upload might never complete)
    run_round(agg, 64)

    # Assert: the earlier upload is dropped, and whatever it still does counts for nothing and
    # deletes nothing of the result that counts
    assert first.dropped
    with pytest.raises(ProtocolError) as refused:
        name, array = list(trained(0.25).items())[-1]
        first.add(name, array)
        if earlier_finishes:
            first.commit()
    assert refused.value.code in ("FX-ROUND-007", "FX-ROUND-002")
    first.abort()
    assert agg.round_num == 1
    assert_same_model(agg, reference)


def test_the_resent_result_counts_and_the_dropped_upload_leaves_its_file_alone(tmp_path):
    agg = make(tmp_path)
    first = agg.open_result("a", 0, "train", 10, {"loss": 1.0}, len(INITIAL))
    first.add("conv", trained(0.25)["conv"])
    send(agg, "a", trained(0.25), 10, 64)  # the resend, committed
    [kept] = (tmp_path / "spool").glob("r0_a_train-*.result")

    with pytest.raises(ProtocolError):
        first.add("bias", trained(0.25)["bias"])
    first.abort()

    assert kept.is_file() and agg.round.done["a"] == {"train"}
