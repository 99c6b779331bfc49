"""Lossless paths: NoCompressionPipeline and every lossy pipeline's raw pass-through."""

from __future__ import annotations

import numpy as np
import pytest

from fedrun.compression import (
    KCPipeline,
    NoCompressionPipeline,
    RandomShiftPipeline,
    SKCPipeline,
    STCPipeline,
    available_pipelines,
)

DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"]
DTYPES += ["uint16", "uint32", "uint64", "bool", "complex64", "complex128"]
SHAPES = [(), (0,), (3, 0, 2), (7,), (4, 5), (2, 3, 4)]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values = rng.standard_normal(shape) * 100
    if kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return np.asarray(values).astype(dtype)


def assert_identical(decoded: np.ndarray, original: np.ndarray) -> None:
    assert decoded.dtype == original.dtype
    assert decoded.shape == original.shape
    assert decoded.tobytes() == np.ascontiguousarray(original).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_none_round_trip_is_exact(dtype, shape):
    pipeline = NoCompressionPipeline()
    tensor = sample(dtype, shape)

    payload, meta = pipeline.encode(tensor)
    decoded = pipeline.decode(payload, meta, tensor.dtype, tensor.shape)

    assert meta == b""
    assert len(memoryview(payload).cast("B")) == tensor.nbytes
    assert_identical(decoded, tensor)


def test_none_keeps_nan_and_inf_bit_for_bit():
    tensor = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32)
    pipeline = NoCompressionPipeline()

    decoded = pipeline.decode(*pipeline.encode(tensor), np.float32, (5,))

    assert decoded.tobytes() == tensor.tobytes()


def test_none_payload_is_a_view_of_a_contiguous_tensor():
    tensor = np.arange(12, dtype=np.float32).reshape(3, 4)

    payload, _ = NoCompressionPipeline().encode(tensor)

    assert isinstance(payload, memoryview)
    assert np.shares_memory(np.frombuffer(payload, dtype=np.uint8), tensor)


def test_none_payload_is_little_endian_raw_bytes():
    tensor = np.array([1.0, -2.5], dtype=">f8")

    payload, _ = NoCompressionPipeline().encode(tensor)

    assert bytes(payload) == np.array([1.0, -2.5], dtype="<f8").tobytes()
    decoded = NoCompressionPipeline().decode(payload, b"", np.dtype(">f8"), (2,))
    assert decoded.dtype == np.dtype(">f8")
    np.testing.assert_array_equal(decoded, tensor)


def test_none_handles_non_contiguous_input():
    tensor = np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2]

    pipeline = NoCompressionPipeline()
    decoded = pipeline.decode(*pipeline.encode(tensor), tensor.dtype, tensor.shape)

    np.testing.assert_array_equal(decoded, tensor)


def test_decoded_arrays_are_writable_and_independent():
    payload = bytearray(np.arange(4, dtype=np.float32).tobytes())

    decoded = NoCompressionPipeline().decode(bytes(payload), b"", np.float32, (4,))
    decoded[0] = 42.0

    assert decoded.flags.writeable
    assert np.frombuffer(payload, dtype=np.float32)[0] == 0.0


LOSSY = [RandomShiftPipeline, STCPipeline, SKCPipeline, KCPipeline]


@pytest.mark.parametrize("pipeline_cls", LOSSY)
@pytest.mark.parametrize("dtype", [d for d in DTYPES if not d.startswith("float")])
@pytest.mark.parametrize("shape", [(), (0,), (6, 7)])
def test_lossy_pipelines_pass_non_float_tensors_through_exactly(pipeline_cls, dtype, shape):
    pipeline = pipeline_cls()
    tensor = sample(dtype, shape)

    payload, meta = pipeline.encode(tensor)
    decoded = pipeline.decode(payload, meta, tensor.dtype, tensor.shape)

    assert_identical(decoded, tensor)


@pytest.mark.parametrize("pipeline_cls", LOSSY)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_lossy_pipelines_pass_empty_float_tensors_through(pipeline_cls, dtype):
    pipeline = pipeline_cls()
    tensor = np.zeros((3, 0), dtype=dtype)

    decoded = pipeline.decode(*pipeline.encode(tensor), tensor.dtype, tensor.shape)

    assert_identical(decoded, tensor)


def test_lossy_flags():
    pipelines = available_pipelines()

    assert not pipelines["none"].lossy and not pipelines["none"]().is_lossy()
    for name in ("random_shift", "stc", "skc", "kc"):
        assert pipelines[name].lossy and pipelines[name]().is_lossy()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("shape", [(), (1,), (50, 40)])
def test_random_shift_is_within_its_stated_error(dtype, shape):
    tensor = sample(dtype, shape, seed=3)
    pipeline = RandomShiftPipeline()

    payload, meta = pipeline.encode(tensor)
    decoded = pipeline.decode(payload, meta, tensor.dtype, tensor.shape)

    assert decoded.dtype == tensor.dtype and decoded.shape == tensor.shape
    wire = np.float32 if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)
    eps = float(np.finfo(wire).eps)
    original = tensor.astype(np.float64)
    bound = 2 * eps * (np.abs(original) + 20.0)
    assert np.all(np.abs(decoded.astype(np.float64) - original) <= bound)
    if dtype == "float16":
        np.testing.assert_array_equal(decoded, tensor)  # the float32 wire error is below float16


def test_random_shift_hides_values_and_keeps_the_payload_size():
    tensor = np.zeros(1000, dtype=np.float32)
    pipeline = RandomShiftPipeline()

    payload, meta = pipeline.encode(tensor)
    shifted = np.frombuffer(payload, dtype=np.float32)

    assert len(meta) == 10  # kind, version, 64-bit seed
    assert len(memoryview(payload).cast("B")) == tensor.nbytes
    assert np.all(np.abs(shifted) <= 20) and np.std(shifted) > 5
    assert pipeline.encode(tensor)[1] != meta  # a fresh seed each time


def test_random_shift_keeps_nan_and_inf():
    tensor = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    pipeline = RandomShiftPipeline()

    decoded = pipeline.decode(*pipeline.encode(tensor), np.float32, (4,))

    assert np.isnan(decoded[0]) and decoded[1] == np.inf and decoded[2] == -np.inf
    assert abs(decoded[3] - 1.0) < 1e-5
