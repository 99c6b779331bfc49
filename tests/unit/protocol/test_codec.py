"""TensorCodec: numpy arrays to header + chunk frames and back, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest

from fedrun.constants import MAX_TENSOR_BYTES
from fedrun.errors import PlanError, ProtocolError
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol.codec import (
    ExpectedModel,
    TensorAssembler,
    check_header,
    decode_frames,
    encode_tensor,
    encode_tensors,
    encoded_limit,
    wire_dtype,
)

DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
]


def sample(dtype, shape=(3, 5)) -> np.ndarray:
    rng = np.random.default_rng(7)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return (rng.standard_normal(shape) * 1000).astype(dt)


def round_trip(array: np.ndarray, **kwargs) -> np.ndarray:
    (tensor,) = list(decode_frames(encode_tensor("t", array, **kwargs)))
    assert tensor.name == "t"
    return tensor.array


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_of_every_dtype(dtype):
    # Prepare
    array = sample(dtype)

    # Execute
    out = round_trip(array)

    # Assert
    assert out.dtype == array.dtype
    assert out.shape == array.shape
    assert out.tobytes() == array.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_header_dtype_is_little_endian(dtype):
    # Execute
    (header_frame, *_) = list(encode_tensor("t", sample(dtype)))

    # Assert
    text = header_frame.header.dtype
    assert text[0] in "<|"
    assert np.dtype(text) == np.dtype(dtype).newbyteorder("<")


@pytest.mark.parametrize(
    "array",
    [np.array(2.5), np.array(True), np.array(-7, dtype=np.int16)],
    ids=["f8", "bool", "i2"],
)
def test_round_trip_zero_dimensional(array):
    # Execute
    out = round_trip(array)

    # Assert
    assert out.shape == ()
    assert out.dtype == array.dtype
    assert out == array


def test_round_trip_empty_tensor_sends_only_a_header():
    # Prepare
    array = np.zeros((0, 3), dtype=np.float32)

    # Execute
    frames = list(encode_tensor("t", array))
    out = round_trip(array)

    # Assert
    assert [f.WhichOneof("body") for f in frames] == ["header"]
    assert frames[0].header.payload_bytes == 0
    assert out.shape == (0, 3) and out.dtype == np.float32


def test_round_trip_non_contiguous_input():
    # Prepare
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    array = base[::2, 1::3].T
    assert not array.flags.c_contiguous

    # Execute
    out = round_trip(array)

    # Assert
    np.testing.assert_array_equal(out, array)
    assert out.flags.c_contiguous


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">u2", ">f8"])
def test_round_trip_big_endian_input_arrives_little_endian(dtype):
    # Prepare
    array = np.arange(-5, 7).astype(dtype).reshape(3, 4)

    # Execute
    out = round_trip(array)

    # Assert
    assert out.dtype == np.dtype(dtype).newbyteorder("<")
    np.testing.assert_array_equal(out, array)


def test_payload_is_split_at_chunk_bytes_and_reassembled_exactly():
    # Prepare: 1000 float64 = 8000 bytes in chunks of 3000
    array = np.random.default_rng(1).standard_normal(1000)

    # Execute
    frames = list(encode_tensor("t", array, chunk_bytes=3000))
    out = round_trip(array, chunk_bytes=3000)

    # Assert
    kinds = [f.WhichOneof("body") for f in frames]
    assert kinds == ["header", "data", "data", "data"]
    assert [len(f.data) for f in frames[1:]] == [3000, 3000, 2000]
    assert frames[0].header.payload_bytes == 8000
    assert out.tobytes() == array.tobytes()


def test_several_tensors_in_one_stream():
    # Prepare
    tensors = {
        "a": np.arange(10, dtype=np.int32),
        "b": np.ones((2, 2), dtype=np.float16),
        "c": np.zeros((0,), dtype=np.uint8),
        "d": np.array(1.5),
    }

    # Execute
    out = {t.name: t for t in decode_frames(encode_tensors(tensors, chunk_bytes=7, delta=True))}

    # Assert
    assert list(out) == ["a", "b", "c", "d"]
    for name, array in tensors.items():
        np.testing.assert_array_equal(out[name].array, array)
        assert out[name].delta is True
        assert out[name].payload_bytes == array.nbytes


def test_assembler_returns_each_tensor_as_soon_as_its_last_chunk_arrives():
    # Prepare
    frames = list(encode_tensors({"a": np.arange(4.0), "b": np.arange(2.0)}, chunk_bytes=16))
    assembler = TensorAssembler()

    # Execute
    results = [assembler.feed(f) for f in frames]

    # Assert
    names = [r.name if r is not None else None for r in results]
    assert names == [None, None, "a", None, "b"]
    assert not assembler.busy


# ---------------------------------------------------------------------- refusals
def header(**fields) -> pb.TensorFrame:
    defaults = {"name": "t", "dtype": "<f4", "shape": [4], "payload_bytes": 16, "encoding": "none"}
    defaults.update(fields)
    return pb.TensorFrame(header=pb.TensorHeader(**defaults))


def feed_error(*frames: pb.TensorFrame) -> ProtocolError:
    assembler = TensorAssembler()
    with pytest.raises(ProtocolError) as caught:
        for frame in frames:
            assembler.feed(frame)
        assembler.close()
    return caught.value


@pytest.mark.parametrize(
    ("shape", "payload_bytes"),
    [([2**40], 16), ([2**40], 2**42), ([2**20, 2**20, 2**20], 0), ([4], MAX_TENSOR_BYTES + 1)],
)
def test_oversized_header_is_refused_before_allocating(shape, payload_bytes):
    # Execute
    error = feed_error(header(shape=shape, payload_bytes=payload_bytes))

    # Assert: a ProtocolError, not a MemoryError from allocating the declared size
    assert error.code == "FX-WIRE-005"
    assert "over the limit" in error.message


def test_check_header_honours_a_smaller_limit():
    # Execute
    with pytest.raises(ProtocolError) as caught:
        check_header(header().header, max_bytes=8)

    # Assert
    assert caught.value.code == "FX-WIRE-005"


@pytest.mark.parametrize("payload_bytes", [15, 17, 0])
def test_payload_length_not_matching_dtype_and_shape_is_refused(payload_bytes):
    # Execute
    error = feed_error(header(payload_bytes=payload_bytes))

    # Assert
    assert error.code == "FX-WIRE-006"
    assert "(expected 16)" in error.message


def test_more_data_than_declared_is_refused():
    # Execute
    error = feed_error(header(), pb.TensorFrame(data=b"x" * 12), pb.TensorFrame(data=b"x" * 8))

    # Assert
    assert error.code == "FX-WIRE-007"
    assert "more than its declared 16 bytes" in error.message


def test_data_frame_without_header_is_refused():
    # Execute
    error = feed_error(pb.TensorFrame(data=b"\x00" * 4))

    # Assert
    assert error.code == "FX-WIRE-008"


def test_stream_ending_mid_tensor_is_refused():
    # Prepare
    frames = list(encode_tensor("w", np.arange(8, dtype=np.float32), chunk_bytes=12))

    # Execute
    error = feed_error(*frames[:-1])

    # Assert
    assert error.code == "FX-WIRE-007"
    assert "stream ended inside tensor 'w' (24 of 32 bytes)" in error.message


def test_new_header_before_the_previous_tensor_ended_is_refused():
    # Execute
    error = feed_error(header(), pb.TensorFrame(data=b"x" * 8), header(name="u"))

    # Assert
    assert error.code == "FX-WIRE-007"
    assert "'t' ended after 8 of 16 bytes" in error.message


def test_decode_frames_refuses_a_truncated_stream():
    # Prepare
    frames = list(encode_tensor("w", np.arange(8.0), chunk_bytes=16))[:-1]

    # Execute / Assert
    with pytest.raises(ProtocolError, match="FX-WIRE-007"):
        list(decode_frames(frames))


@pytest.mark.parametrize(
    "array",
    [
        np.array(["a", None], dtype=object),
        np.array(["ab", "c"]),
        np.array([1 + 2j]),
        np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")]),
    ],
    ids=["object", "unicode", "complex", "structured"],
)
def test_non_numeric_dtypes_are_refused_on_send(array):
    # Execute
    with pytest.raises(ProtocolError) as caught:
        list(encode_tensor("t", array))

    # Assert
    assert caught.value.code == "FX-WIRE-001"
    assert caught.value.fix


@pytest.mark.parametrize("dtype", ["|O", "<U4", "<c8", "not-a-dtype", "<M8[s]"])
def test_non_numeric_dtypes_are_refused_on_receive(dtype):
    # Execute
    error = feed_error(header(dtype=dtype))

    # Assert
    assert error.code == "FX-WIRE-002"


def test_header_without_name_is_refused():
    # Execute
    error = feed_error(header(name=""))

    # Assert
    assert error.code == "FX-WIRE-003"


def test_unknown_encoding_is_refused():
    # Execute
    error = feed_error(header(encoding="zstd", payload_bytes=4), pb.TensorFrame(data=b"abcd"))

    # Assert
    assert error.code == "FX-WIRE-010"
    assert "'zstd'" in error.message


def test_unknown_encoding_is_refused_at_the_header_before_its_payload_is_buffered():
    # Prepare: a pool that records what the assembler takes from it
    taken: list[int] = []

    class Pool:
        def take(self, size: int) -> np.ndarray:
            taken.append(size)
            return np.empty(size, np.uint8)

        def give(self, buffer: np.ndarray) -> None:
            pass

    assembler = TensorAssembler(pool=Pool())  # type: ignore[arg-type]

    # Execute: the header alone
    with pytest.raises(ProtocolError) as caught:
        assembler.feed(header(encoding="bogus", shape=[1 << 20], payload_bytes=4 << 20))

    # Assert
    assert caught.value.code == "FX-WIRE-010" and taken == []


@pytest.mark.parametrize("raw", [0, 16, 4 << 20])
def test_an_encoded_payload_out_of_proportion_to_its_tensor_is_refused(raw):
    limit = encoded_limit(raw)
    shape = [raw // 4]
    assert check_header(header(encoding="stc", shape=shape, payload_bytes=limit).header)

    error = feed_error(header(encoding="stc", shape=shape, payload_bytes=limit + 1))

    assert error.code == "FX-WIRE-006" and "no pipeline makes more than" in error.message


def test_wire_dtype_of_bool_and_bytes():
    assert wire_dtype(np.dtype(bool)) == "|b1"
    assert wire_dtype(np.dtype(np.uint8)) == "|u1"
    assert wire_dtype(np.dtype(">f8")) == "<f8"


def test_negative_dimension_is_refused():
    # Execute
    error = feed_error(header(shape=[-4, -1], payload_bytes=16))

    # Assert
    assert error.code == "FX-WIRE-004"


def test_absurd_dimensions_beside_a_zero_one_are_refused_as_a_protocol_error():
    # Execute: numpy refuses the shape outright ("array is too big"), a traceback before
    error = feed_error(header(shape=[2**62, 2**62, 0], payload_bytes=0))

    # Assert
    assert error.code == "FX-WIRE-004"


# ---------------------------------------------------------------------- a download's expectation
def expected_model() -> ExpectedModel:
    return ExpectedModel.of({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})


def test_a_download_may_hold_its_own_model_and_tensors_it_does_not_know():
    # Prepare
    expected = expected_model()
    frames = [
        *encode_tensor("w", np.ones((2, 3), np.float32)),
        *encode_tensor("b", np.ones(3, np.float32)),
        *encode_tensor("__opt_0_exp_avg", np.ones(6, np.float32)),
    ]

    # Execute
    names = [t.name for t in decode_frames(frames, expected=expected)]

    # Assert
    assert names == ["w", "b", "__opt_0_exp_avg"]


def test_a_tensor_sent_twice_is_refused():
    # Prepare
    frames = [*encode_tensor("w", np.ones((2, 3), np.float32))] * 2

    # Execute
    with pytest.raises(ProtocolError) as caught:
        list(decode_frames(frames, expected=expected_model()))

    # Assert
    assert caught.value.code == "FX-WIRE-023"


def test_a_known_tensor_of_another_shape_is_refused_at_its_header():
    # Execute: the header declares 4 GiB; refused before any memory is taken
    with pytest.raises(PlanError) as caught:
        TensorAssembler(expected=expected_model()).feed(
            header(name="w", shape=[2**30], payload_bytes=2**32)
        )

    # Assert
    assert caught.value.code == "FX-MODEL-002"


def test_an_endless_stream_of_unknown_tensors_ends_at_the_budget():
    # Prepare: 1 MiB tensors of new names without end
    expected = expected_model()

    def endless():
        n = 0
        while True:
            yield from encode_tensor(f"x{n}", np.zeros(1 << 18, np.float32))
            n += 1

    # Execute
    received = 0
    with pytest.raises(ProtocolError) as caught:
        for tensor in decode_frames(endless(), expected=expected):
            received += tensor.payload_bytes

    # Assert: stopped at about the budget (64 MiB beside a 36-byte model)
    assert caught.value.code == "FX-WIRE-024"
    assert received <= expected.budget
    assert received >= expected.budget - (1 << 20)
