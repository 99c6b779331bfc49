"""Small frames travel packed in ``batch`` frames; big data chunks travel alone, uncopied."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.internal.encoder import _VarintBytes

from fedrun.errors import ProtocolError
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import (
    BATCH_TAG,
    DataChunk,
    FrameBatch,
    batch_frames,
    decode_frames,
    encode_tensor_wire,
    expand_frames,
    parse_frame,
)

LIMIT = 1 << 16


def _model(sizes: list[int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {f"t{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}


def _wire(model: dict[str, np.ndarray], limit: int = LIMIT) -> list[bytes]:
    frames = (
        frame
        for name, array in model.items()
        for frame in encode_tensor_wire(name, array, chunk_bytes=limit)
    )
    return list(batch_frames(frames, limit))


def _receive(messages: list[bytes]) -> dict[str, np.ndarray]:
    parsed = [parse_frame(m) for m in messages]
    return {t.name: t.array.copy() for t in decode_frames(expand_frames(parsed))}


def test_a_model_of_small_tensors_goes_in_one_message_and_arrives_intact():
    model = _model([10, 300, 1, 2000])
    messages = _wire(model)
    assert len(messages) == 1 and messages[0][0] == BATCH_TAG
    received = _receive(messages)
    assert list(received) == list(model)
    for name, array in model.items():
        np.testing.assert_array_equal(received[name], array)


def test_full_chunks_go_alone_and_small_frames_around_them_are_packed():
    model = _model([8, LIMIT // 4 * 3, 8])  # 3 chunks for the middle tensor
    messages = _wire(model)
    sizes = [len(m) for m in messages]
    assert all(size <= LIMIT + 16 for size in sizes)
    assert sum(1 for m in messages if m[0] == BATCH_TAG) >= 1
    # 2 tensors' headers+data, 1 header, 3 chunks: far fewer than the 9 frames
    assert len(messages) <= 6
    received = _receive(messages)
    for name, array in model.items():
        np.testing.assert_array_equal(received[name], array)


def test_a_full_data_chunk_is_passed_through_without_a_copy():
    chunk = b"\x12" + _VarintBytes(LIMIT) + bytes(LIMIT)
    (out,) = list(batch_frames([chunk], LIMIT))
    assert out is chunk


def test_a_single_small_frame_is_not_wrapped():
    frame = pb.TensorFrame(result=pb.ResultHeader(task="train"))
    (out,) = list(batch_frames([frame], LIMIT))
    assert out == frame.SerializeToString()


def test_batches_never_exceed_the_limit():
    model = _model([500] * 200)  # 200 tensors of 2 kB
    messages = _wire(model, limit=16 << 10)
    assert len(messages) > 1
    assert max(len(m) for m in messages) <= (16 << 10)
    assert list(_receive(messages)) == list(model)


def test_a_batch_parses_as_a_plain_tensor_frame_too():
    # what the generated protobuf code sees: a TensorFrame whose body is the batch field
    (message,) = _wire(_model([4, 4]))
    frame = pb.TensorFrame.FromString(message)
    assert frame.WhichOneof("body") == "batch"
    assert isinstance(parse_frame(message), FrameBatch)


def _batch(payload: bytes) -> bytes:
    return bytes((BATCH_TAG,)) + _VarintBytes(len(payload)) + payload


@pytest.mark.parametrize(
    "payload",
    [
        _VarintBytes(50) + b"\x12\x01x",  # cut short
        b"\x00",  # an empty frame
        _VarintBytes(3) + _batch(b"\x01"),  # a batch inside a batch
        _VarintBytes(2) + b"\xff\xff",  # not a TensorFrame
    ],
)
def test_a_malformed_batch_is_refused(payload):
    with pytest.raises(ProtocolError) as raised:
        list(expand_frames([parse_frame(_batch(payload))]))
    assert raised.value.code == "FX-WIRE-014"


@pytest.mark.parametrize("message", [b"\xff\xff\xff", bytes((BATCH_TAG,)) + b"\xff"])
def test_a_message_that_is_no_frame_is_named_not_raised_inside_grpc(message):
    # parse_frame is gRPC's deserializer: raising there ended the stream with no reason given
    parsed = parse_frame(message)

    with pytest.raises(ProtocolError) as raised:
        list(expand_frames([parsed]))

    assert raised.value.code == "FX-WIRE-015"
    assert "not a TensorFrame" in raised.value.message


def test_data_frames_inside_a_batch_are_views_not_copies():
    (message,) = _wire(_model([64]))
    frames = list(expand_frames([parse_frame(message)]))
    assert isinstance(frames[0], pb.TensorFrame) and isinstance(frames[1], DataChunk)
    assert frames[1].view.obj is message
