"""Decoders never trust what they are given: damaged payloads or meta raise ValueError."""

from __future__ import annotations

import struct
import zlib

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

ALL = sorted(available_pipelines())
COMPRESSED = ["stc", "skc", "kc"]
FLOAT = np.random.default_rng(11).standard_normal((20, 30)).astype(np.float32)
INTS = np.arange(24, dtype=np.int32).reshape(4, 6)


def encoded(name: str, tensor: np.ndarray = FLOAT):
    pipeline = available_pipelines()[name]()
    payload, meta = pipeline.encode(tensor)
    return pipeline, bytes(payload), meta


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("tensor", [FLOAT, INTS], ids=["float", "int"])
def test_truncated_payload(name, tensor):
    pipeline, payload, meta = encoded(name, tensor)

    with pytest.raises(ValueError):
        pipeline.decode(payload[:-1], meta, tensor.dtype, tensor.shape)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("tensor", [FLOAT, INTS], ids=["float", "int"])
def test_payload_with_trailing_bytes(name, tensor):
    pipeline, payload, meta = encoded(name, tensor)

    with pytest.raises(ValueError):
        pipeline.decode(payload + b"\x00", meta, tensor.dtype, tensor.shape)


@pytest.mark.parametrize("name", ALL)
def test_empty_payload(name):
    pipeline, _, meta = encoded(name)

    with pytest.raises(ValueError):
        pipeline.decode(b"", meta, FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("name", COMPRESSED)
def test_garbled_compressed_payload(name):
    pipeline, payload, meta = encoded(name)
    garbled = bytearray(payload)
    for i in range(2, len(garbled) - 4, 7):
        garbled[i] ^= 0x5A

    with pytest.raises(ValueError):
        pipeline.decode(bytes(garbled), meta, FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("name", [n for n in ALL if n != "none"])
def test_truncated_meta(name):
    pipeline, payload, meta = encoded(name)

    for cut in range(len(meta)):
        with pytest.raises(ValueError):
            pipeline.decode(payload, meta[:cut], FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("name", ALL)
def test_meta_with_trailing_bytes(name):
    pipeline, payload, meta = encoded(name)

    with pytest.raises(ValueError):
        pipeline.decode(payload, meta + b"\x01", FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("name", [n for n in ALL if n != "none"])
def test_wrong_kind_or_version(name):
    pipeline, payload, meta = encoded(name)

    with pytest.raises(ValueError, match="kind"):
        pipeline.decode(payload, b"Z" + meta[1:], FLOAT.dtype, FLOAT.shape)
    with pytest.raises(ValueError, match="version"):
        pipeline.decode(payload, meta[:1] + b"\x09" + meta[2:], FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize(("writer", "reader"), [(w, r) for w in ALL for r in ALL if w != r])
def test_meta_of_another_pipeline(writer, reader):
    _, payload, meta = encoded(writer)
    pipeline = available_pipelines()[reader]()

    with pytest.raises(ValueError):
        pipeline.decode(payload, meta, FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(20, 31), (601,), (599,), (0,), ()])
def test_shape_with_another_element_count(name, shape):
    pipeline, payload, meta = encoded(name)

    with pytest.raises(ValueError):
        pipeline.decode(payload, meta, FLOAT.dtype, shape)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "shape", [(-1, 600), (2.5,), "abc", (True, 3), None, (2**62, 2**62)], ids=repr
)
def test_nonsense_shape(name, shape):
    pipeline, payload, meta = encoded(name)

    with pytest.raises(ValueError):
        pipeline.decode(payload, meta, FLOAT.dtype, shape)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [object, "U4", "datetime64[s]", "not-a-dtype", [("a", "f4")]])
def test_nonsense_dtype(name, dtype):
    pipeline, payload, meta = encoded(name)

    with pytest.raises(ValueError):
        pipeline.decode(payload, meta, dtype, FLOAT.shape)


@pytest.mark.parametrize("name", [n for n in ALL if n != "none"])
def test_transformed_meta_with_an_integer_dtype(name):
    pipeline, payload, meta = encoded(name)

    with pytest.raises(ValueError, match="does not belong"):
        pipeline.decode(payload, meta, np.int32, FLOAT.shape)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [None, 12, "text", [1, 2]])
def test_payload_and_meta_must_be_bytes(name, bad):
    pipeline, payload, meta = encoded(name)

    with pytest.raises(ValueError):
        pipeline.decode(bad, meta, FLOAT.dtype, FLOAT.shape)
    with pytest.raises(ValueError):
        pipeline.decode(payload, bad, FLOAT.dtype, FLOAT.shape)


def test_bool_payload_with_bytes_other_than_0_and_1():
    with pytest.raises(ValueError, match="bool"):
        NoCompressionPipeline().decode(b"\x00\x01\x02", b"", np.bool_, (3,))


def test_compression_bomb_is_cut_short():
    bomb = zlib.compress(b"\x00" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    meta = b"K\x01" + struct.pack("<QH", 600, 1) + struct.pack("<d", 0.0)

    with pytest.raises(ValueError, match="expand"):
        KCPipeline().decode(bomb, meta, np.float32, (20, 30))


def test_stc_meta_claiming_more_kept_entries_than_exist():
    pipeline, payload, meta = encoded("stc")
    forged = meta[:2] + struct.pack("<QQd", 600, 601, 1.0)

    with pytest.raises(ValueError, match="garbled"):
        pipeline.decode(payload, forged, FLOAT.dtype, FLOAT.shape)


def test_stc_meta_with_a_kept_count_that_disagrees_with_the_mask():
    pipeline, payload, meta = encoded("stc")
    _, kept, mu = struct.unpack_from("<QQd", meta, 2)
    forged = meta[:2] + struct.pack("<QQd", 600, kept - 8, mu)
    mask_bytes = 75
    data = zlib.decompress(payload)[: mask_bytes + (kept - 8 + 7) // 8]

    with pytest.raises(ValueError):
        pipeline.decode(zlib.compress(data), forged, FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("mu", [float("nan"), float("inf"), -1.0, 1e300])
def test_stc_meta_with_a_bad_magnitude(mu):
    pipeline, payload, meta = encoded("stc")
    n, kept, _ = struct.unpack_from("<QQd", meta, 2)

    with pytest.raises(ValueError):
        pipeline.decode(payload, meta[:2] + struct.pack("<QQd", n, kept, mu), np.float32, (20, 30))


def test_kc_codes_pointing_past_the_centroids():
    pipeline, payload, meta = encoded("kc")
    n, clusters = struct.unpack_from("<QH", meta, 2)
    forged = meta[:2] + struct.pack("<QH", n, clusters - 1) + meta[12 : 12 + 8 * (clusters - 1)]

    with pytest.raises(ValueError, match="centroid"):
        pipeline.decode(payload, forged, FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("bad", [float("nan"), 1e300])
def test_kc_centroid_that_does_not_fit_the_dtype(bad):
    pipeline, payload, meta = encoded("kc")
    forged = meta[:12] + struct.pack("<d", bad) + meta[20:]

    with pytest.raises(ValueError, match="centroid"):
        pipeline.decode(payload, forged, np.float32, FLOAT.shape)


def test_skc_meta_with_too_many_centroids():
    pipeline, payload, meta = encoded("skc")
    n, kept, _ = struct.unpack_from("<QQH", meta, 2)
    forged = meta[:2] + struct.pack("<QQH", n, kept, 5000) + b"\x00" * 8 * 5000

    with pytest.raises(ValueError):
        pipeline.decode(payload, forged, FLOAT.dtype, FLOAT.shape)


@pytest.mark.parametrize("name", ALL)
def test_random_garbage_only_ever_raises_value_error(name):
    rng = np.random.default_rng(12)
    pipeline, payload, meta = encoded(name)
    for _ in range(150):
        junk_meta = bytearray(meta)
        junk_payload = bytearray(payload)
        for buffer in (junk_meta, junk_payload):
            for _ in range(int(rng.integers(1, 4))):
                if buffer:
                    buffer[int(rng.integers(len(buffer)))] = int(rng.integers(256))
        try:
            decoded = pipeline.decode(bytes(junk_payload), bytes(junk_meta), np.float32, (20, 30))
        except ValueError:
            continue
        assert decoded.shape == (20, 30) and decoded.dtype == np.float32


def test_pipelines_decode_their_own_output_after_a_bytes_copy():
    for pipeline in (RandomShiftPipeline(), STCPipeline(), SKCPipeline(), KCPipeline()):
        payload, meta = pipeline.encode(FLOAT)
        decoded = pipeline.decode(bytearray(bytes(payload)), bytes(meta), np.float32, (20, 30))
        assert decoded.shape == (20, 30)
