"""The colorectal cancer histology tiles of Kather et al. (2016), read from their image folders.

The data set (Zenodo record 53169, ``Kather_texture_2016_image_tiles_5000.zip``, CC BY 4.0) holds
5,000 RGB tiles of 150x150 pixels in eight class folders, 625 tiles each::

    Kather_texture_2016_image_tiles_5000/
        01_TUMOR/  02_STROMA/  03_COMPLEX/  04_LYMPHO/
        05_DEBRIS/ 06_MUCOSA/  07_ADIPOSE/  08_EMPTY/     (each full of *.tif)

Any folder laid out the same way works: one sub-folder per class (classes are numbered in the
sorted order of the folder names), image files (TIFF, PNG, JPEG, BMP) inside. The data set is
looked for, as that folder or a folder holding it, in (first match wins):

1. the ``data_dir`` argument,
2. ``$FEDRUN_HISTOLOGY_DIR``,
3. ``<cwd>/data/histology`` and ``<cwd>/data``.

When it is nowhere, it is downloaded into ``<cwd>/data/histology``: the archive is streamed to a
temporary file, its SHA-384 checked, then unpacked next to its final place and renamed into it,
so no half-written data set ever takes the real name. Collaborators that share a folder take
turns through a lock file. ``$FEDRUN_HISTOLOGY_URL`` names another server for the same archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrun.data.loader import DataLoader
from fedrun.data.shards import parse_shard, shard_indices
from fedrun.errors import DataError

log = logging.getLogger("fedrun.data.histology")

#: where the archive is published (Zenodo record 53169)
HISTOLOGY_URL = (
    "https://zenodo.org/records/53169/files/Kather_texture_2016_image_tiles_5000.zip?download=1"
)
HISTOLOGY_ARCHIVE = "Kather_texture_2016_image_tiles_5000.zip"
HISTOLOGY_FOLDER = "Kather_texture_2016_image_tiles_5000"
#: SHA-384 of the archive
HISTOLOGY_SHA384 = "7d86abe1d04e68b77c055820c2a4c582a1d25d2983e38ab724eac75affce8b7cb2cbf5ba68848dcfd9d84005d87d6790"
#: the eight tissue classes, as the archive's folder names
CLASS_NAMES: tuple[str, ...] = (
    "01_TUMOR",
    "02_STROMA",
    "03_COMPLEX",
    "04_LYMPHO",
    "05_DEBRIS",
    "06_MUCOSA",
    "07_ADIPOSE",
    "08_EMPTY",
)
#: side of the published tiles, in pixels
TILE_SIZE = 150
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

HISTOLOGY_DIR_ENV = "FEDRUN_HISTOLOGY_DIR"
HISTOLOGY_URL_ENV = "FEDRUN_HISTOLOGY_URL"

DOWNLOAD_TIMEOUT_SECONDS = 60.0
#: a download larger than this is refused (the real archive is about 250 MB)
MAX_DOWNLOAD_BYTES = 1 << 30
#: an archive that unpacks to more than this is refused
MAX_UNPACKED_BYTES = 4 << 30

NOT_FOUND_CODE = "FX-DATA-030"
CHECKSUM_CODE = "FX-DATA-031"
BAD_FILE_CODE = "FX-DATA-032"
DOWNLOAD_CODE = "FX-DATA-033"
LAYOUT_CODE = "FX-DATA-034"

_CHUNK = 1 << 20


# ---------------------------------------------------------------------- finding the data
def _image_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [
        p
        for p in entries
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def _class_folders(root: Path) -> list[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith(".") and _image_files(p)]


def find_histology_root(directory: str | Path) -> Path | None:
    """The data set folder in ``directory``: itself, or its ``Kather_texture_...`` sub-folder.

    A folder counts when at least two of its sub-folders hold image files.
    """
    base = Path(directory)
    for candidate in (base / HISTOLOGY_FOLDER, base):
        if candidate.is_dir() and len(_class_folders(candidate)) >= 2:
            return candidate
    return None


def default_candidates(data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for the data set, most specific first."""
    dirs: list[Path] = []
    if data_dir is not None and str(data_dir) != "":
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get(HISTOLOGY_DIR_ENV, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    cwd = Path.cwd()
    dirs += [cwd / "data" / "histology", cwd / "data"]
    return dirs


@dataclass(frozen=True)
class HistologyFiles:
    """The image files of a data set folder and their labels."""

    root: Path
    paths: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]


def list_histology(root: str | Path) -> HistologyFiles:
    """Every image of the class folders in ``root``, in (class, file name) order.

    Raises
    ------
    DataError
        ``FX-DATA-034`` when ``root`` does not hold class folders with images.
    """
    root = Path(root)
    folders = _class_folders(root)
    if len(folders) < 2:
        raise DataError(
            LAYOUT_CODE,
            f"{root} is not an image-classification folder: it needs one sub-folder per class "
            f"(e.g. {', '.join(CLASS_NAMES[:2])}, ...) holding image files "
            f"({', '.join(IMAGE_EXTENSIONS)}); found {len(folders)} such sub-folder(s)",
            f"point data_dir (or ${HISTOLOGY_DIR_ENV}) at the {HISTOLOGY_FOLDER} folder",
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = _image_files(folder)
        paths += files
        labels += [label] * len(files)
    return HistologyFiles(
        root, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(f.name for f in folders)
    )


def read_image(path: str | Path, size: int = TILE_SIZE) -> np.ndarray:
    """One image as ``uint8`` RGB of shape ``(size, size, 3)`` (resized when it differs).

    Raises
    ------
    DataError
        ``FX-DATA-032`` when the file cannot be decoded as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(
            BAD_FILE_CODE,
            f"cannot read the image {path}: {exc}",
            "delete or replace the damaged file (or download the data set again)",
        ) from exc


# ---------------------------------------------------------------------- download
@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.histology.lock`` (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".histology.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into ``dest``; returns the SHA-384 of what was written."""
    digest = hashlib.sha384()
    written = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_DOWNLOAD_BYTES:
            raise OSError(f"the server announces {int(length)} bytes, more than the data set")
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > MAX_DOWNLOAD_BYTES:
                raise OSError(f"response is larger than {MAX_DOWNLOAD_BYTES} bytes")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _unpack(archive: Path, target: Path) -> None:
    """Unpack ``archive`` into the empty folder ``target``, refusing unsafe member names."""
    base = target.resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
            raise DataError(
                BAD_FILE_CODE,
                f"{archive} would unpack to more than {MAX_UNPACKED_BYTES} bytes",
                "this is not the histology archive; check the download URL",
            )
        for member in members:
            dest = (base / member.filename).resolve()
            if member.filename.startswith(("/", "\\")) or not dest.is_relative_to(base):
                raise DataError(
                    BAD_FILE_CODE,
                    f"{archive} holds the unsafe path {member.filename!r}",
                    "this is not the histology archive; check the download URL",
                )
        zf.extractall(base)


def download_histology(
    dest_dir: str | Path,
    *,
    url: str | None = None,
    sha384: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
    keep_archive: bool = False,
) -> Path:
    """Download, check and unpack the data set into ``dest_dir``; return its root folder.

    Parameters
    ----------
    dest_dir:
        Folder that receives ``Kather_texture_2016_image_tiles_5000/`` (created if needed).
    url:
        Where to fetch the archive; default ``$FEDRUN_HISTOLOGY_URL`` or :data:`HISTOLOGY_URL`.
    sha384:
        Expected SHA-384 of the archive (hex); default :data:`HISTOLOGY_SHA384`.
    timeout:
        Seconds per connection / read.
    keep_archive:
        Keep the checked ``.zip`` next to the unpacked folder.

    Raises
    ------
    DataError
        ``FX-DATA-033`` when the download fails, ``FX-DATA-031`` when the archive's checksum is
        wrong (nothing is kept), ``FX-DATA-032`` when it is not a usable zip archive.
    """
    dest = Path(dest_dir).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            DOWNLOAD_CODE,
            f"cannot create {dest} for the histology data set: {exc.strerror or exc}",
            "choose a writable data_dir",
        ) from exc
    source = url or os.environ.get(HISTOLOGY_URL_ENV, "").strip() or HISTOLOGY_URL
    expected = (sha384 or HISTOLOGY_SHA384).lower()
    with _locked(dest):
        found = find_histology_root(dest)
        if found is not None:  # another process finished the download while we waited
            return found
        fd, tmp_name = tempfile.mkstemp(prefix=".histology.", suffix=".zip.part", dir=dest)
        os.close(fd)
        archive = Path(tmp_name)
        unpack_dir = Path(tempfile.mkdtemp(prefix=".histology.", dir=dest))
        try:
            log.info("downloading the histology data set from %s into %s", source, dest)
            try:
                actual = _fetch(source, archive, timeout)
            except urllib.error.HTTPError as exc:
                raise DataError(
                    DOWNLOAD_CODE,
                    f"downloading {source} failed: HTTP {exc.code} {exc.reason}",
                    _manual_fix(dest),
                ) from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise DataError(
                    DOWNLOAD_CODE, f"downloading {source} failed: {reason}", _manual_fix(dest)
                ) from exc
            if actual != expected:
                raise DataError(
                    CHECKSUM_CODE,
                    f"the archive from {source} failed its SHA-384 check: expected {expected}, "
                    f"got {actual}; it is corrupt, truncated or another file (it was deleted)",
                    "download again; if it keeps failing, fetch "
                    f"{HISTOLOGY_ARCHIVE} yourself and unpack it into {dest}",
                )
            try:
                _unpack(archive, unpack_dir)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(
                    BAD_FILE_CODE,
                    f"the archive from {source} cannot be unpacked: {exc}",
                    _manual_fix(dest),
                ) from exc
            root = find_histology_root(unpack_dir)
            if root is None:
                subdirs = [p for p in unpack_dir.iterdir() if p.is_dir()]
                root = find_histology_root(subdirs[0]) if len(subdirs) == 1 else None
            if root is None:
                raise DataError(
                    LAYOUT_CODE,
                    f"the archive from {source} holds no class folders of images",
                    _manual_fix(dest),
                )
            final = dest / HISTOLOGY_FOLDER
            if final.exists():
                with contextlib.suppress(OSError):
                    final.rmdir()  # an empty leftover; anything else is the user's to look at
            if final.exists():
                raise DataError(
                    LAYOUT_CODE,
                    f"{final} exists but holds no class folders of images",
                    f"move {final} away and run again",
                )
            os.replace(root, final)
            if keep_archive:
                os.replace(archive, dest / HISTOLOGY_ARCHIVE)
            log.info("histology data set ready in %s", final)
            return final
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(unpack_dir, ignore_errors=True)


def _manual_fix(dest: Path) -> str:
    return (
        f"check the network, or download {HISTOLOGY_ARCHIVE} from Zenodo record 53169 "
        f"(https://zenodo.org/records/53169) yourself and unpack it into {dest}; "
        f"${HISTOLOGY_URL_ENV} names another server for the same file"
    )


def find_or_download(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    url: str | None = None,
    sha384: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
) -> Path:
    """The data set root: the first candidate folder holding it, else a fresh download.

    Downloads go to ``data_dir`` when given, else ``<cwd>/data/histology``.

    Raises
    ------
    DataError
        ``FX-DATA-030`` when the data set is missing and ``download`` is False; the download's
        errors otherwise.
    """
    candidates = default_candidates(data_dir)
    for directory in candidates:
        root = find_histology_root(directory)
        if root is not None:
            return root
    target = candidates[0] if data_dir else Path.cwd() / "data" / "histology"
    if not download:
        where = "\n".join(f"    {d}" for d in candidates)
        raise DataError(
            NOT_FOUND_CODE,
            "the colorectal histology data set was not found; looked for class folders "
            f"({', '.join(CLASS_NAMES[:2])}, ...) in these folders and in their "
            f"{HISTOLOGY_FOLDER} sub-folder:\n{where}",
            f"download {HISTOLOGY_ARCHIVE} from https://zenodo.org/records/53169 and unpack it "
            f"into {target}, or set {HISTOLOGY_DIR_ENV} to where it is, or allow the download",
        )
    return download_histology(target, url=url, sha384=sha384, timeout=timeout)


# ---------------------------------------------------------------------- splits and loader
def split_train_valid(
    labels: np.ndarray, train_fraction: float = 0.8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: in every class, a seeded shuffle, the first ``train_fraction`` train.

    Returns sorted index arrays; the same labels and seed give the same split in every process.
    """
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        cut = int(round(train_fraction * len(members)))
        if train_fraction < 1.0 and len(members) > 1:
            cut = min(max(cut, 1), len(members) - 1)
        train.append(members[:cut])
        valid.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def _is_shard(data_path: Any) -> bool:
    if isinstance(data_path, (int, np.integer)) and not isinstance(data_path, bool):
        return True
    return isinstance(data_path, str) and data_path.strip().isdigit()


class HistologyInMemory(DataLoader):
    """A collaborator's part of the histology tiles, held in memory as ``uint8``.

    ``data_path`` (from ``plan/data.yaml``) is either a shard number ``s`` (1-based): the data
    set found or downloaded as the module describes is split into training and validation
    tiles (``train_fraction`` of every class, the same split everywhere) and the collaborator
    keeps shard ``s`` of ``collaborator_count`` of each; or a folder: that folder's class folders
    are this collaborator's whole data set, split the same way. ``data_path`` None builds an
    empty loader (model initialisation).

    Batches hold ``float32`` images in [0, 1] of shape ``(image_size, image_size, 3)`` and
    integer labels (``sparse_categorical_crossentropy``).
    """

    def __init__(
        self,
        data_path: str | None = None,
        batch_size: int = 32,
        collaborator_count: int = 2,
        data_dir: str | None = None,
        image_size: int = TILE_SIZE,
        num_classes: int = len(CLASS_NAMES),
        train_fraction: float = 0.8,
        split_seed: int = 0,
        download: bool = True,
        max_train_samples: int | None = None,
        max_valid_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.class_names: tuple[str, ...] = CLASS_NAMES[: self.num_classes]
        shape = (self.image_size, self.image_size, 3)
        self.X_train = np.zeros((0, *shape), np.uint8)
        self.y_train = np.zeros((0,), np.int64)
        self.X_valid, self.y_valid = self.X_train, self.y_train
        if data_path is None or (isinstance(data_path, str) and not data_path.strip()):
            return
        if _is_shard(data_path):
            shard = parse_shard(data_path)
            files = list_histology(find_or_download(data_dir, download=download))
        else:
            shard = None
            folder = Path(str(data_path)).expanduser()
            if not folder.is_absolute():
                folder = Path.cwd() / folder
            root = find_histology_root(folder)
            files = list_histology(root if root is not None else folder)
        if len(files.classes) != self.num_classes:
            raise DataError(
                LAYOUT_CODE,
                f"{files.root} has {len(files.classes)} class folders "
                f"({', '.join(files.classes)}); the model is built for {self.num_classes}",
                f"set data_loader.settings.num_classes: {len(files.classes)} in the plan, or "
                "fix the folders",
            )
        self.class_names = files.classes
        train, valid = split_train_valid(files.labels, float(train_fraction), int(split_seed))
        if shard is not None:
            count = int(collaborator_count)
            train = train[shard_indices(len(train), shard, count)]
            valid = valid[shard_indices(len(valid), shard, count)]
        train, valid = train[:max_train_samples], valid[:max_valid_samples]
        self.X_train = self._read(files.paths, train)
        self.y_train = files.labels[train]
        self.X_valid = self._read(files.paths, valid)
        self.y_valid = files.labels[valid]
        log.info(
            "histology: %d training and %d validation tiles from %s",
            len(train),
            len(valid),
            files.root,
        )

    def _read(self, paths: Sequence[Path], indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        for row, index in enumerate(indices):
            out[row] = read_image(paths[int(index)], self.image_size)
        return out

    def get_feature_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    @staticmethod
    def _scaled(batches: Iterator[tuple[Any, Any]]) -> Iterator[tuple[np.ndarray, Any]]:
        for x, y in batches:
            yield x.astype(np.float32) / np.float32(255.0), y

    def get_train_loader(
        self, batch_size: int | None = None, num_batches: int | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """Shuffled batches of float images in [0, 1] and integer labels."""
        return self._scaled(super().get_train_loader(batch_size, num_batches))

    def get_valid_loader(self, batch_size: int | None = None) -> Iterator[tuple[Any, Any]]:
        """Ordered batches of float images in [0, 1] and integer labels."""
        return self._scaled(super().get_valid_loader(batch_size))


def write_synthetic_histology(
    root: str | Path,
    per_class: int = 10,
    size: int = TILE_SIZE,
    classes: Sequence[str] = CLASS_NAMES,
    seed: int = 0,
) -> Path:
    """Write a small stand-in data set in the real layout: ``root/<class>/*.tif`` RGB tiles.

    Each class gets its own colour and stripe frequency plus noise, so a model can learn it.
    Meant for tests and offline demos of the real loading code; returns ``root``.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array(
            [80 + 20 * (label % 4), 60 + 40 * (label // 4), 200 - 15 * label], np.float32
        )
        stripes = np.sin((xx + yy) * (label + 1) * np.pi / size)[..., None]
        for index in range(per_class):
            noise = rng.normal(0.0, 20.0, (size, size, 3))
            pixels = np.clip(colour + 40.0 * stripes + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(
                folder / f"synthetic_{label + 1:02d}_{index:04d}.tif", format="TIFF"
            )
    return root
