"""Read the MNIST handwritten-digit dataset from its four IDX files.

The files are looked for, as ``<name>.gz`` or ``<name>``, in (first match wins):

1. the ``data_dir`` argument,
2. the directory in ``$FEDRUN_MNIST_DIR``,
3. ``<cwd>/data/mnist``,
4. ``<cwd>/data``,

and in torchvision's layout ``<dir>/MNIST/raw/`` under each of those. Every file is checked
against the SHA-256 of its *decompressed* content (gzip wrappers differ between mirrors, so the
``.gz`` bytes are never checked). Missing files can be downloaded from a list of mirrors into
``<cwd>/data/mnist``; a download is written to a temporary file, verified, then renamed into
place, so a half-written or wrong file never takes the real name.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedrun.errors import DataError

#: The four MNIST files and the SHA-256 of their decompressed content.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Base URLs tried in order; ``<base><name>.gz`` is fetched from each.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: Environment variable naming a directory that holds the MNIST files.
MNIST_DIR_ENV = "FEDRUN_MNIST_DIR"
#: Environment variable overriding the mirror list (comma- or space-separated base URLs).
MNIST_MIRROR_ENV = "FEDRUN_MNIST_MIRROR"

#: Seconds to wait on one connection or read before trying the next mirror.
DOWNLOAD_TIMEOUT_SECONDS = 60.0
#: A download larger than this is refused (the largest real ``.gz`` is about 9.9 MB).
MAX_DOWNLOAD_BYTES = 64 << 20

NOT_FOUND_CODE = "FX-DATA-001"
CHECKSUM_CODE = "FX-DATA-002"
BAD_FILE_CODE = "FX-DATA-003"

_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK_BYTES = 1 << 20

# IDX type byte -> big-endian numpy dtype
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# (resolved path, size, mtime_ns) -> sha256 hex of the decompressed content
_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_cache_lock = threading.Lock()

MnistArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _read_bytes(path: Path) -> bytes:
    """Return the content of ``path``, decompressed when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            NOT_FOUND_CODE,
            f"cannot read {path}: {exc.strerror or exc}",
            "check that the file exists and is readable by this user",
        ) from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            BAD_FILE_CODE,
            f"{path} starts like a gzip file but cannot be decompressed ({exc}); "
            "it is truncated or corrupt",
            f"delete {path} and fetch it again",
        ) from exc


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file; ``source`` names it in errors."""
    fix = f"delete {source} and fetch it again; it is not a valid IDX file"
    if len(data) < 4:
        raise DataError(
            BAD_FILE_CODE,
            f"{source} is {len(data)} bytes long, too short for an IDX header",
            fix,
        )
    zero0, zero1, type_byte, ndims = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            BAD_FILE_CODE,
            f"{source} does not start with the IDX magic (two zero bytes); "
            f"first bytes are {data[:4].hex()}",
            fix,
        )
    dtype = _IDX_TYPES.get(type_byte)
    if dtype is None:
        raise DataError(
            BAD_FILE_CODE,
            f"{source} has unknown IDX element type 0x{type_byte:02x}",
            fix,
        )
    if ndims < 1:
        raise DataError(BAD_FILE_CODE, f"{source} declares 0 dimensions", fix)
    header = 4 + 4 * ndims
    if len(data) < header:
        raise DataError(
            BAD_FILE_CODE,
            f"{source} is truncated: its header declares {ndims} dimensions "
            f"({header} header bytes) but the file has {len(data)} bytes",
            fix,
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndims))
    count = 1
    for d in dims:
        count *= d
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            BAD_FILE_CODE,
            f"{source} is {state}: header declares shape {dims} of {dtype.name} "
            f"({expected} bytes with the header) but the file has {len(data)} bytes",
            fix,
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    # A copy makes the array writable and converts it to native byte order.
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed (detected by its first two bytes).

    Parameters
    ----------
    path:
        The file to read.

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order with the shape the header declares.

    Raises
    ------
    DataError
        ``FX-DATA-003`` when the file is not valid gzip, not IDX, or its size does not match
        its header; ``FX-DATA-001`` when it cannot be read.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), str(path))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _remember(path: Path, digest: str) -> None:
    """Record that the unchanged ``path`` has ``digest`` (used after a verified download)."""
    key = _cache_key(path)
    with _hash_cache_lock:
        _hash_cache[key] = digest


def _forget(path: Path) -> None:
    with _hash_cache_lock:
        for key in [k for k in _hash_cache if k[0] == str(path.resolve())]:
            del _hash_cache[key]


def verify_file(path: str | Path, expected_sha256: str) -> bytes:
    """Read ``path``, decompressing gzip, and check the SHA-256 of the decompressed content.

    The digest is remembered per (path, size, modification time), so the same unchanged file is
    hashed only once per process.

    Parameters
    ----------
    path:
        The file (``.gz`` or plain).
    expected_sha256:
        Lower-case hex SHA-256 of the decompressed content.

    Returns
    -------
    bytes
        The decompressed content.

    Raises
    ------
    DataError
        ``FX-DATA-002`` on a checksum mismatch, naming the file and both hashes.
    """
    path = Path(path)
    try:
        # Stat before reading: if the file changes meanwhile, the stale key never matches again.
        key = _cache_key(path)
    except OSError as exc:
        raise DataError(
            NOT_FOUND_CODE,
            f"cannot read {path}: {exc.strerror or exc}",
            "check that the file exists and is readable by this user",
        ) from exc
    data = _read_bytes(path)
    with _hash_cache_lock:
        actual = _hash_cache.get(key)
    if actual is None:
        actual = _digest(data)
        with _hash_cache_lock:
            _hash_cache[key] = actual
    if actual != expected_sha256:
        raise DataError(
            CHECKSUM_CODE,
            f"{path} failed its sha256 check: the decompressed content should have sha256 "
            f"{expected_sha256} but has {actual}; the file is corrupt, truncated or not the "
            "MNIST file of that name",
            f"delete {path} and fetch it again (copy a good file there, or let fedrun download it)",
        )
    return data


def clear_hash_cache() -> None:
    """Forget every remembered digest (the next load hashes each file again)."""
    with _hash_cache_lock:
        _hash_cache.clear()


def default_candidates(data_dir: str | Path | None = None) -> list[Path]:
    """The directories searched for the MNIST files, most specific first.

    Parameters
    ----------
    data_dir:
        An explicit directory, searched first when given.

    Returns
    -------
    list of Path
        ``data_dir``, ``$FEDRUN_MNIST_DIR``, ``<cwd>/data/mnist`` and ``<cwd>/data`` (those that
        apply). :func:`find_mnist_dir` also looks under ``MNIST/raw`` in each.
    """
    dirs: list[Path] = []
    if data_dir is not None and str(data_dir) != "":
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get(MNIST_DIR_ENV, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    cwd = Path.cwd()
    dirs.append(cwd / "data" / "mnist")
    dirs.append(cwd / "data")
    return dirs


def _expand(candidates: Iterable[str | Path]) -> list[Path]:
    """Each candidate followed by its torchvision ``MNIST/raw`` sub-directory, without repeats."""
    seen: set[str] = set()
    out: list[Path] = []
    for c in candidates:
        base = Path(c)
        for d in (base, base / "MNIST" / "raw"):
            key = os.path.abspath(d)
            if key not in seen:
                seen.add(key)
                out.append(d)
    return out


def _locate(directory: Path, name: str) -> Path | None:
    """The plain or ``.gz`` copy of ``name`` in ``directory``; plain wins (nothing to unzip)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_files(directory: str | Path) -> dict[str, Path | None]:
    """Map each MNIST file name to its copy in ``directory`` (plain or ``.gz``), or ``None``."""
    directory = Path(directory)
    return {name: _locate(directory, name) for name in MNIST_FILES}


def find_mnist_dir(candidates: Iterable[str | Path]) -> Path | None:
    """Return the first directory that holds all four MNIST files.

    Parameters
    ----------
    candidates:
        Directories to try in order; for each, ``<dir>`` and then ``<dir>/MNIST/raw`` are tried.
        Each file may be present as ``<name>`` or ``<name>.gz``.

    Returns
    -------
    Path or None
        The directory, or ``None`` when no candidate holds all four files.
    """
    for directory in _expand(candidates):
        if directory.is_dir() and all(p is not None for p in find_mnist_files(directory).values()):
            return directory
    return None


def _mirror_list(mirrors: Sequence[str] | None) -> list[str]:
    if mirrors is not None:
        chosen = list(mirrors)
    else:
        env = os.environ.get(MNIST_MIRROR_ENV, "").replace(",", " ").split()
        chosen = env or list(MNIST_MIRRORS)
    return [m if m.endswith("/") else m + "/" for m in chosen if m]


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``; refuse bodies above :data:`MAX_DOWNLOAD_BYTES`."""
    written = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
        while True:
            chunk = response.read(_READ_CHUNK_BYTES)
            if not chunk:
                break
            written += len(chunk)
            if written > MAX_DOWNLOAD_BYTES:
                raise OSError(f"response is larger than {MAX_DOWNLOAD_BYTES} bytes")
            out.write(chunk)


def _download_one(
    name: str,
    cache_dir: Path,
    mirrors: Sequence[str],
    timeout: float,
    failures: list[str],
    unreachable: set[str],
) -> Path | None:
    """Fetch ``name`` from the first mirror that serves a copy with the right checksum.

    A mirror that cannot be reached at all (refused, DNS failure, timeout) is added to
    ``unreachable`` and skipped for the remaining files, so an offline machine does not wait
    out one timeout per file and mirror.
    """
    target = cache_dir / f"{name}.gz"
    for base in mirrors:
        if base in unreachable:
            continue
        url = f"{base}{name}.gz"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, timeout)
            verify_file(tmp, MNIST_FILES[name])
            _forget(tmp)
            os.replace(tmp, target)
            _remember(target, MNIST_FILES[name])
        except DataError as exc:
            failures.append(f"{url}: {exc.message}")
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:
            unreachable.add(base)
            failures.append(f"{url}: {exc.reason} (not trying this mirror again)")
        except TimeoutError as exc:
            unreachable.add(base)
            failures.append(f"{url}: timed out after {timeout:g} s ({exc})")
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
        else:
            return target
        finally:
            _forget(tmp)
            tmp.unlink(missing_ok=True)
    return None


def download_mnist(
    cache_dir: str | Path,
    names: Iterable[str] | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
) -> tuple[dict[str, Path], list[str]]:
    """Download MNIST files into ``cache_dir`` as ``<name>.gz``, each verified before it lands.

    Parameters
    ----------
    cache_dir:
        Destination directory (created if needed).
    names:
        Which of :data:`MNIST_FILES` to fetch; all four by default.
    mirrors:
        Base URLs to try in order. Default: ``$FEDRUN_MNIST_MIRROR`` if set, else
        :data:`MNIST_MIRRORS`.
    timeout:
        Seconds per connection / read.

    Returns
    -------
    tuple
        ``(fetched, failures)``: the files that arrived, by name, and one line per failed
        attempt (``"<url>: <reason>"``).
    """
    cache_dir = Path(cache_dir)
    failures: list[str] = []
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        failures.append(f"cannot create {cache_dir}: {exc.strerror or exc}")
        return {}, failures
    bases = _mirror_list(mirrors)
    if not bases:
        failures.append("no download mirrors are configured")
        return {}, failures
    fetched: dict[str, Path] = {}
    unreachable: set[str] = set()
    for name in MNIST_FILES if names is None else names:
        path = _download_one(name, cache_dir, bases, timeout, failures, unreachable)
        if path is not None:
            fetched[name] = path
    return fetched, failures


def _not_found(searched: list[Path], missing: list[str], failures: list[str]) -> DataError:
    where = "\n".join(f"    {os.path.abspath(d)}" for d in searched)
    files = ", ".join(f"{n}[.gz]" for n in MNIST_FILES)
    message = (
        f"MNIST files not found: need the four files {files}; missing {', '.join(missing)}. "
        f"Looked in these directories (and in MNIST/raw under each):\n{where}"
    )
    if failures:
        message += "\n  downloads failed:\n" + "\n".join(f"    {f}" for f in failures)
    fix = (
        f"copy the four files (gzipped or not) into {Path.cwd() / 'data' / 'mnist'} or one of "
        f"the directories above, or set {MNIST_DIR_ENV} to the directory that holds them; "
        f"to download from another server, set {MNIST_MIRROR_ENV} to its base URL"
    )
    return DataError(NOT_FOUND_CODE, message, fix)


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
) -> MnistArrays:
    """Load MNIST, verifying every file, downloading missing ones when allowed.

    Parameters
    ----------
    data_dir:
        Directory searched before the defaults (see the module docstring).
    download:
        When no directory holds all four files, fetch the missing ones into ``cache_dir``.
    cache_dir:
        Where downloads go; default ``<cwd>/data/mnist``. Files already there are reused.
    mirrors:
        Base URLs for downloads; default ``$FEDRUN_MNIST_MIRROR`` or :data:`MNIST_MIRRORS`.
    timeout:
        Seconds per connection / read while downloading.

    Returns
    -------
    tuple of numpy.ndarray
        ``(x_train, y_train, x_test, y_test)``: images are ``uint8`` of shape ``(N, 28, 28)``
        (N = 60000 and 10000), labels ``uint8`` of shape ``(N,)`` with values 0-9.

    Raises
    ------
    DataError
        ``FX-DATA-001`` when the files cannot be found or fetched (listing the names and the
        directories searched), ``FX-DATA-002`` on a checksum mismatch, ``FX-DATA-003`` for a
        malformed file.
    """
    candidates = default_candidates(data_dir)
    directory = find_mnist_dir(candidates)
    if directory is not None:
        paths = {name: p for name, p in find_mnist_files(directory).items() if p is not None}
    else:
        cache = Path(cache_dir) if cache_dir is not None else Path.cwd() / "data" / "mnist"
        found = find_mnist_files(cache) if cache.is_dir() else dict.fromkeys(MNIST_FILES)
        paths = {name: p for name, p in found.items() if p is not None}
        missing = [name for name in MNIST_FILES if name not in paths]
        failures: list[str] = []
        if download:
            fetched, failures = download_mnist(cache, missing, mirrors=mirrors, timeout=timeout)
            paths.update(fetched)
            missing = [name for name in MNIST_FILES if name not in paths]
        if missing:
            searched = list(candidates)
            if all(os.path.abspath(cache) != os.path.abspath(d) for d in searched):
                searched.append(cache)
            raise _not_found(searched, missing, failures)

    arrays = {}
    for name, expected in MNIST_FILES.items():
        path = paths[name]
        arrays[name] = _parse_idx(verify_file(path, expected), str(path))
    return (
        arrays["train-images-idx3-ubyte"],
        arrays["train-labels-idx1-ubyte"],
        arrays["t10k-images-idx3-ubyte"],
        arrays["t10k-labels-idx1-ubyte"],
    )
