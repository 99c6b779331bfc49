"""MNIST IDX reading, discovery, checksum verification and downloading (from local servers only)."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedrun.data import mnist
from fedrun.data.mnist import (
    MNIST_FILES,
    find_mnist_dir,
    load_mnist,
    read_idx,
    verify_file,
)
from fedrun.errors import DataError

REAL_DIR = Path("/work/shared/data/mnist")
LABELS = "t10k-labels-idx1-ubyte"  # the smallest file, used wherever one file is enough

pytestmark = pytest.mark.skipif(
    not all((REAL_DIR / f"{n}.gz").is_file() for n in MNIST_FILES),
    reason=f"real MNIST files not present in {REAL_DIR}",
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty cwd, no env overrides, no proxies, and no default mirrors: never the real internet."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for var in (
        mnist.MNIST_DIR_ENV,
        mnist.MNIST_MIRROR_ENV,
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", ())
    return cwd


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_mnist(REAL_DIR, download=False)


def _link_real(dest: Path, names: list[str] | None = None) -> Path:
    """Populate ``dest`` with symlinks to the real ``.gz`` files (no copying of 11 MB)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES if names is None else names:
        (dest / f"{name}.gz").symlink_to(REAL_DIR / f"{name}.gz")
    return dest


def _corrupt_gz(src: Path, dest: Path, offset: int = 100) -> None:
    """Decompress ``src``, flip one byte after the header, and gzip it again into ``dest``."""
    data = bytearray(gzip.decompress(src.read_bytes()))
    data[offset] ^= 0x01
    dest.write_bytes(gzip.compress(bytes(data)))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yield the base URL and the requested paths."""
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ---------------------------------------------------------------- the real data


def test_real_mnist_shapes_dtypes_and_statistics(real: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, x_test, y_test = real
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and x_test.dtype == np.uint8
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer)
    assert int(y_train.min()) == 0 and int(y_train.max()) == 9
    assert set(np.unique(y_test).tolist()) == set(range(10))
    assert float(x_train.mean()) == pytest.approx(33.318421449829934, abs=1e-6)
    assert x_train.flags.writeable


def test_read_idx_gz_and_plain_agree(tmp_path: Path) -> None:
    gz = REAL_DIR / f"{LABELS}.gz"
    plain = tmp_path / LABELS
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    a, b = read_idx(gz), read_idx(plain)
    assert a.shape == (10000,) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_read_idx_big_endian_types(tmp_path: Path) -> None:
    values = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big"))
    with path.open("ab") as f:
        f.write(values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.dtype(np.int32) and out.dtype.isnative
    np.testing.assert_array_equal(out, values.astype(np.int32))

    floats = np.array([1.5, -2.25], dtype=">f8")
    path2 = tmp_path / "floats.idx.gz"
    path2.write_bytes(
        gzip.compress(bytes([0, 0, 0x0E, 1]) + (2).to_bytes(4, "big") + floats.tobytes())
    )
    np.testing.assert_array_equal(read_idx(path2), [1.5, -2.25])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(5), "truncated"),
        (bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes(5), "longer"),
        (bytes([0, 0, 8, 3]) + (1).to_bytes(4, "big"), "truncated"),
        (b"\x00\x00", "too short"),
        (b"PK\x03\x04 not idx at all", "magic"),
        (bytes([0, 0, 0x42, 1]) + (1).to_bytes(4, "big") + b"x", "element type"),
    ],
)
def test_read_idx_rejects_garbage(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert info.value.code == "FX-DATA-003"
    assert words in info.value.message
    assert str(path) in info.value.message


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    raw = (REAL_DIR / f"{LABELS}.gz").read_bytes()
    path = tmp_path / f"{LABELS}.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert info.value.code == "FX-DATA-003"
    assert "gzip" in info.value.message


def test_truncated_file_in_dataset_dir_is_rejected(tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    _link_real(data, [n for n in MNIST_FILES if n != LABELS])
    plain = gzip.decompress((REAL_DIR / f"{LABELS}.gz").read_bytes())
    (data / LABELS).write_bytes(plain[:-10])
    with pytest.raises(DataError) as info:
        load_mnist(data, download=False)
    # The checksum catches it first; either way the file is named.
    assert info.value.code in {"FX-DATA-002", "FX-DATA-003"}
    assert LABELS in info.value.message


# ---------------------------------------------------------------- verification


def test_corrupt_copy_fails_sha256(tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    _link_real(data, [n for n in MNIST_FILES if n != LABELS])
    bad = data / f"{LABELS}.gz"
    _corrupt_gz(REAL_DIR / f"{LABELS}.gz", bad)
    read_idx(bad)  # still well-formed IDX: only the checksum can tell
    with pytest.raises(DataError) as info:
        load_mnist(data, download=False)
    err = info.value
    assert err.code == "FX-DATA-002"
    assert "sha256" in err.message
    assert str(bad) in err.message
    assert MNIST_FILES[LABELS] in err.message
    plain = bytearray(gzip.decompress((REAL_DIR / f"{LABELS}.gz").read_bytes()))
    plain[100] ^= 0x01
    import hashlib

    assert hashlib.sha256(bytes(plain)).hexdigest() in err.message
    assert "delete" in err.fix and str(bad) in err.fix


def test_hash_is_cached_per_path_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"{LABELS}.gz"
    shutil.copyfile(REAL_DIR / f"{LABELS}.gz", path)
    calls: list[int] = []
    real_digest = mnist._digest

    def counting(data: bytes) -> str:
        calls.append(len(data))
        return real_digest(data)

    monkeypatch.setattr(mnist, "_digest", counting)
    verify_file(path, MNIST_FILES[LABELS])
    verify_file(path, MNIST_FILES[LABELS])
    assert len(calls) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    verify_file(path, MNIST_FILES[LABELS])
    assert len(calls) == 2


def test_verify_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        verify_file(tmp_path / "nope.gz", MNIST_FILES[LABELS])
    assert info.value.code == "FX-DATA-001"


# ---------------------------------------------------------------- discovery


def test_missing_files_error_lists_names_and_places(_isolated: Path, tmp_path: Path) -> None:
    explicit = tmp_path / "explicit"
    with pytest.raises(DataError) as info:
        load_mnist(explicit, download=False)
    err = info.value
    assert err.code == "FX-DATA-001"
    for name in MNIST_FILES:
        assert name in err.message
    assert str(explicit) in err.message
    assert str(_isolated / "data" / "mnist") in err.message
    assert str(_isolated / "data") in err.message
    assert "MNIST/raw" in err.message
    assert "FEDRUN_MNIST_DIR" in err.fix


def test_partial_directory_reports_what_is_missing(tmp_path: Path) -> None:
    data = _link_real(tmp_path / "mnist", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
    with pytest.raises(DataError) as info:
        load_mnist(data, download=False, cache_dir=data)
    missing = info.value.message.split("missing ", 1)[1].split(".", 1)[0]
    assert "t10k-images-idx3-ubyte" in missing and LABELS in missing
    assert "train-images" not in missing


def test_no_mirrors_configured_is_reported() -> None:
    with pytest.raises(DataError) as info:
        load_mnist()  # the fixture emptied MNIST_MIRRORS
    assert "no download mirrors" in info.value.message


def test_find_mnist_dir_search_order(
    _isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = _isolated
    assert find_mnist_dir(mnist.default_candidates()) is None

    torchvision = _link_real(cwd / "data" / "MNIST" / "raw")
    assert find_mnist_dir(mnist.default_candidates()) == cwd / "data" / "MNIST" / "raw"

    plain_data = _link_real(cwd / "data")
    assert find_mnist_dir(mnist.default_candidates()) == plain_data

    data_mnist = _link_real(cwd / "data" / "mnist")
    assert find_mnist_dir(mnist.default_candidates()) == data_mnist

    env_dir = _link_real(tmp_path / "env" / "MNIST" / "raw")
    monkeypatch.setenv(mnist.MNIST_DIR_ENV, str(tmp_path / "env"))
    assert find_mnist_dir(mnist.default_candidates()) == env_dir

    explicit = _link_real(tmp_path / "explicit")
    assert find_mnist_dir(mnist.default_candidates(explicit)) == explicit
    assert torchvision.is_dir()


def test_plain_and_gz_files_can_be_mixed(tmp_path: Path) -> None:
    data = _link_real(tmp_path / "mixed", [n for n in MNIST_FILES if n != LABELS])
    (data / LABELS).write_bytes(gzip.decompress((REAL_DIR / f"{LABELS}.gz").read_bytes()))
    assert find_mnist_dir([data]) == data
    assert mnist.find_mnist_files(data)[LABELS] == data / LABELS


def test_load_via_env_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, real: tuple[np.ndarray, ...]
) -> None:
    _link_real(tmp_path / "envdata" / "MNIST" / "raw")
    monkeypatch.setenv(mnist.MNIST_DIR_ENV, str(tmp_path / "envdata"))
    _, y_train, _, y_test = load_mnist(download=False)
    np.testing.assert_array_equal(y_train, real[1])
    np.testing.assert_array_equal(y_test, real[3])


# ---------------------------------------------------------------- downloading


def test_download_lands_verified_in_default_cache(
    _isolated: Path, tmp_path: Path, real: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "mirror"
    served.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(REAL_DIR / f"{name}.gz", served / f"{name}.gz")
    with _serve(served) as (url, requests):
        arrays = load_mnist(mirrors=[url])
    assert sorted(requests) == sorted(f"/{n}.gz" for n in MNIST_FILES)
    cache = _isolated / "data" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in MNIST_FILES)
    for got, want in zip(arrays, real, strict=True):
        np.testing.assert_array_equal(got, want)

    # The second load finds the cache, and the digests remembered at download time skip hashing.
    calls: list[int] = []
    monkeypatch.setattr(mnist, "_digest", lambda data: calls.append(1) or "")
    again = load_mnist(download=False)
    assert calls == []
    np.testing.assert_array_equal(again[3], real[3])


def test_corrupt_mirror_is_skipped_for_the_next(tmp_path: Path) -> None:
    bad_dir = tmp_path / "bad-mirror"
    bad_dir.mkdir()
    _corrupt_gz(REAL_DIR / f"{LABELS}.gz", bad_dir / f"{LABELS}.gz")
    good_dir = _link_real(tmp_path / "good-mirror", [LABELS])
    cache = _link_real(tmp_path / "cache", [n for n in MNIST_FILES if n != LABELS])
    with _serve(bad_dir) as (bad_url, bad_requests), _serve(good_dir) as (good_url, good_requests):
        _, _, _, y_test = load_mnist(mirrors=[bad_url, good_url], cache_dir=cache)
    assert bad_requests == [f"/{LABELS}.gz"]
    assert good_requests == [f"/{LABELS}.gz"]
    landed = cache / f"{LABELS}.gz"
    assert landed.is_file() and not landed.is_symlink()
    assert gzip.decompress(landed.read_bytes()) == gzip.decompress(
        (REAL_DIR / f"{LABELS}.gz").read_bytes()
    )
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]
    assert y_test.shape == (10000,)


def test_all_mirrors_failing_is_reported(tmp_path: Path) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    bad_dir = tmp_path / "bad-mirror"
    bad_dir.mkdir()
    _corrupt_gz(REAL_DIR / f"{LABELS}.gz", bad_dir / f"{LABELS}.gz")
    cache = _link_real(tmp_path / "cache", [n for n in MNIST_FILES if n != LABELS])
    closed = _closed_port_url()
    with (
        _serve(empty) as (url404, _),
        _serve(bad_dir) as (bad_url, _),
        pytest.raises(DataError) as info,
    ):
        load_mnist(mirrors=[url404, closed, bad_url], cache_dir=cache, timeout=5)
    err = info.value
    assert err.code == "FX-DATA-001"
    for name in MNIST_FILES:
        assert name in err.message
    assert "404" in err.message
    assert closed in err.message
    assert "sha256" in err.message
    assert str(cache) in err.message
    assert not (cache / f"{LABELS}.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_mirror_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good_dir = _link_real(tmp_path / "good-mirror", [LABELS])
    cache = _link_real(tmp_path / "cache", [n for n in MNIST_FILES if n != LABELS])
    with _serve(good_dir) as (url, requests):
        monkeypatch.setenv(mnist.MNIST_MIRROR_ENV, url.rstrip("/"))  # trailing slash optional
        load_mnist(cache_dir=cache)
    assert requests == [f"/{LABELS}.gz"]
    assert (cache / f"{LABELS}.gz").is_file()


def test_oversized_download_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good_dir = _link_real(tmp_path / "good-mirror", [LABELS])
    cache = tmp_path / "cache"
    monkeypatch.setattr(mnist, "MAX_DOWNLOAD_BYTES", 1000)
    with _serve(good_dir) as (url, _):
        fetched, failures = mnist.download_mnist(cache, [LABELS], mirrors=[url])
    assert fetched == {}
    assert len(failures) == 1 and "larger than 1000 bytes" in failures[0]
    assert list(cache.iterdir()) == []


def test_download_false_never_fetches(tmp_path: Path) -> None:
    good_dir = _link_real(tmp_path / "good-mirror")
    with _serve(good_dir) as (url, requests), pytest.raises(DataError):
        load_mnist(download=False, mirrors=[url])
    assert requests == []


def test_unreachable_mirror_is_tried_once(tmp_path: Path) -> None:
    small = [LABELS, "train-labels-idx1-ubyte"]
    good_dir = _link_real(tmp_path / "good-mirror", small)
    closed = _closed_port_url()
    with _serve(good_dir) as (url, requests):
        fetched, failures = mnist.download_mnist(tmp_path / "cache", small, mirrors=[closed, url])
    assert sorted(fetched) == sorted(small)
    assert sorted(requests) == sorted(f"/{n}.gz" for n in small)
    assert len(failures) == 1 and closed in failures[0]
