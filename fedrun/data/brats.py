"""BraTS brain-tumour MRI: subject folders of NIfTI volumes, served as 2D axial slices.

The BraTS training sets (2018-2021) ship one folder per subject::

    BraTS20_Training_001/
        BraTS20_Training_001_flair.nii.gz   BraTS20_Training_001_t1.nii.gz
        BraTS20_Training_001_t1ce.nii.gz    BraTS20_Training_001_t2.nii.gz
        BraTS20_Training_001_seg.nii.gz     (labels 1, 2, 4; 0 = background)

BraTS 2023 names the same images ``-t1n``, ``-t1c``, ``-t2w``, ``-t2f`` and ``-seg``; both namings
are recognised (``t1n`` = t1, ``t1c`` = t1ce, ``t2w`` = t2, ``t2f`` = flair). Volumes are read with
:mod:`fedrun.data.nifti`. Subjects are looked for anywhere below (first folder with any wins):

1. the ``data_dir`` argument,
2. ``$FEDRUN_BRATS_DIR``,
3. ``<cwd>/data/brats`` and ``<cwd>/data``.

BraTS cannot be downloaded automatically: its licence requires registering with the challenge,
and the error raised when the data is missing says where.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrun.data.loader import DataLoader
from fedrun.data.nifti import read_nifti
from fedrun.data.shards import parse_shard, shard_indices
from fedrun.errors import DataError

log = logging.getLogger("fedrun.data.brats")

#: the four MRI sequences, as BraTS 2018-2021 name them
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: file-name suffix -> sequence (BraTS 2023 names included); ``seg`` is the label map
SUFFIXES: dict[str, str] = {
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2f": "flair",
    "seg": "seg",
}
SLICE_MODES = ("brain", "tumor", "all")

BRATS_DIR_ENV = "FEDRUN_BRATS_DIR"

NOT_FOUND_CODE = "FX-DATA-040"
LAYOUT_CODE = "FX-DATA-041"
TOO_FEW_CODE = "FX-DATA-042"

_NAME = re.compile(
    r"^(?P<subject>.+?)[_-](?P<kind>" + "|".join(sorted(SUFFIXES, key=len, reverse=True)) + r")"
    r"\.nii(?:\.gz)?$",
    re.IGNORECASE,
)

REGISTRATION_HELP = (
    "BraTS needs registration, so fedrun cannot download it: request the training data of a "
    "BraTS challenge (BraTS 2020: https://www.med.upenn.edu/cbica/brats2020/registration.html; "
    "BraTS 2021, the RSNA-ASNR-MICCAI challenge: through its Synapse page, "
    "https://www.synapse.org), unpack the training set (one folder per subject with "
    "*_flair/_t1/_t1ce/_t2/_seg.nii.gz) into {target}, or set {env} (or the plan's "
    "data_loader.settings.data_dir) to the folder that holds it, or give each collaborator its "
    "own folder of subjects as its data path in plan/data.yaml"
)


@dataclass
class BratsSubject:
    """One subject's volumes: sequence name -> file, and the label map when present."""

    name: str
    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    seg: Path | None = None


def find_subjects(root: str | Path) -> list[BratsSubject]:
    """Every subject below ``root`` (recursively), sorted by name; label-less ones included."""
    found: dict[tuple[str, str], BratsSubject] = {}
    root = Path(root)
    if not root.is_dir():
        return []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            match = _NAME.match(filename)
            if match is None:
                continue
            key = (folder, match["subject"])
            subject = found.setdefault(key, BratsSubject(match["subject"], Path(folder)))
            kind = SUFFIXES[match["kind"].lower()]
            if kind == "seg":
                subject.seg = Path(folder) / filename
            else:
                subject.images.setdefault(kind, Path(folder) / filename)
    return sorted(found.values(), key=lambda s: (s.name, str(s.folder)))


def default_candidates(data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for subjects, most specific first."""
    dirs: list[Path] = []
    if data_dir is not None and str(data_dir) != "":
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get(BRATS_DIR_ENV, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    cwd = Path.cwd()
    dirs += [cwd / "data" / "brats", cwd / "data"]
    return dirs


def _usable(subjects: list[BratsSubject], modalities: Sequence[str]) -> list[BratsSubject]:
    return [s for s in subjects if s.seg is not None and all(m in s.images for m in modalities)]


def _not_found(searched: Sequence[Path], modalities: Sequence[str], target: Path) -> DataError:
    where = "\n".join(f"    {d}" for d in searched)
    wanted = ", ".join(f"*_{m}.nii.gz" for m in (*modalities, "seg"))
    return DataError(
        NOT_FOUND_CODE,
        f"no BraTS subjects found: looked for folders holding {wanted} below:\n{where}",
        REGISTRATION_HELP.format(target=target, env=BRATS_DIR_ENV),
    )


def find_brats(
    data_dir: str | Path | None = None, modalities: Sequence[str] = ("flair",)
) -> list[BratsSubject]:
    """The usable subjects (all ``modalities`` and a label map) of the first folder with any.

    Raises
    ------
    DataError
        ``FX-DATA-040`` naming the folders searched and how to obtain BraTS.
    """
    candidates = default_candidates(data_dir)
    for directory in candidates:
        subjects = _usable(find_subjects(directory), modalities)
        if subjects:
            return subjects
    target = candidates[0] if data_dir else Path.cwd() / "data" / "brats"
    raise _not_found(candidates, modalities, target)


# ---------------------------------------------------------------------- volumes to slices
def _normalise(volume: np.ndarray) -> np.ndarray:
    """Z-score over the non-zero (brain) voxels; background stays 0."""
    out = np.zeros(volume.shape, np.float32)
    brain = volume != 0
    if brain.any():
        values = volume[brain].astype(np.float64)
        std = values.std()
        out[brain] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def _crop_or_pad(volume: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (or zero-pad) the first two axes to ``size`` x ``size``."""
    out = volume
    for axis in (0, 1):
        length = out.shape[axis]
        if length > size:
            start = (length - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif length < size:
            before = (size - length) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, size - length - before)
            out = np.pad(out, pad)
    return out


def _resize_stack(stack: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Resize every plane of ``(n, h, w[, c])`` to ``(n, size, size[, c])`` with Pillow."""
    from PIL import Image

    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    n, height, width = stack.shape[:3]
    extra = stack.shape[3:]
    planes = stack.reshape(n, height, width, -1).astype(np.float32)
    out = np.zeros((n, size, size, planes.shape[-1]), np.float32)
    for i in range(n):
        for c in range(planes.shape[-1]):
            image = Image.fromarray(np.ascontiguousarray(planes[i, :, :, c]))
            out[i, :, :, c] = np.asarray(image.resize((size, size), method), dtype=np.float32)
    return out.reshape((n, size, size, *extra))


def subject_slices(
    subject: BratsSubject,
    modalities: Sequence[str] = ("flair",),
    crop_size: int = 192,
    image_size: int = 128,
    slices: str = "brain",
    labels: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The axial slices of one subject.

    Each sequence is z-scored over its brain voxels; slices are centre-cropped (or padded) to
    ``crop_size`` and then resized to ``image_size`` (bilinear for images, nearest for masks).
    The mask is 1 where the label map holds one of ``labels`` (default: any label, the whole
    tumour). ``slices`` keeps the slices that show brain, tumour, or all of them.

    Returns
    -------
    tuple of numpy.ndarray
        ``float16`` images ``(n, image_size, image_size, len(modalities))`` and ``uint8`` masks
        ``(n, image_size, image_size, 1)``.
    """
    if slices not in SLICE_MODES:
        raise ValueError(f"slices must be one of {SLICE_MODES}, not {slices!r}")
    if subject.seg is None:
        raise DataError(LAYOUT_CODE, f"subject {subject.name} has no *_seg label map")
    volumes = []
    for modality in modalities:
        if modality not in subject.images:
            raise DataError(
                LAYOUT_CODE,
                f"subject {subject.name} in {subject.folder} has no {modality} volume",
                f"provide *_{modality}.nii.gz or drop {modality} from data_loader modalities",
            )
        volumes.append(read_nifti(subject.images[modality]).data)
    seg = read_nifti(subject.seg).data
    shapes = {v.shape for v in volumes} | {seg.shape}
    if len(shapes) != 1 or seg.ndim != 3:
        raise DataError(
            LAYOUT_CODE,
            f"the volumes of subject {subject.name} do not share one 3D shape: {sorted(shapes)}",
            "use co-registered volumes, as BraTS distributes them",
        )
    brain = np.zeros(seg.shape, bool)
    for volume in volumes:
        brain |= volume != 0
    if labels:
        mask = np.isin(seg, np.asarray(list(labels)))
    else:
        mask = seg > 0
    if slices == "brain":
        keep = np.flatnonzero(brain.any(axis=(0, 1)))
    elif slices == "tumor":
        keep = np.flatnonzero(mask.any(axis=(0, 1)))
    else:
        keep = np.arange(seg.shape[2])
    images = np.stack([_crop_or_pad(_normalise(v), crop_size) for v in volumes], axis=-1)
    images = images[:, :, keep, :]
    masks = _crop_or_pad(mask.astype(np.float32), crop_size)[:, :, keep]
    # (x, y, slice, channel) -> (slice, x, y, channel)
    images = np.moveaxis(images, 2, 0)
    masks = np.moveaxis(masks, 2, 0)
    if crop_size != image_size:
        images = _resize_stack(images, image_size, nearest=False)
        masks = _resize_stack(masks, image_size, nearest=True)
    return images.astype(np.float16), (masks[..., None] > 0.5).astype(np.uint8)


def split_subjects(
    count: int, train_fraction: float = 0.8, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Seeded split of ``count`` subjects into training and validation (each non-empty if >= 2)."""
    if count < 2:
        raise DataError(
            TOO_FEW_CODE,
            f"{count} BraTS subject(s) for this collaborator: training and validation need at "
            "least one subject each",
            "give every collaborator at least two subjects (fewer collaborators, or more data)",
        )
    order = np.random.default_rng(seed).permutation(count)
    cut = min(max(int(round(train_fraction * count)), 1), count - 1)
    return sorted(int(i) for i in order[:cut]), sorted(int(i) for i in order[cut:])


def _is_shard(data_path: Any) -> bool:
    if isinstance(data_path, (int, np.integer)) and not isinstance(data_path, bool):
        return True
    return isinstance(data_path, str) and data_path.strip().isdigit()


class BratsSlicesInMemory(DataLoader):
    """A collaborator's BraTS subjects as 2D slices in memory, for whole-tumour segmentation.

    ``data_path`` (from ``plan/data.yaml``) is either a shard number ``s`` (1-based): the
    subjects found as the module describes, sorted by name, are split into
    ``collaborator_count`` shards and this collaborator keeps shard ``s``; or a folder holding
    this collaborator's own subjects. Either way the collaborator's subjects are split into
    training and validation subjects (``train_fraction``, seeded). ``data_path`` None builds an
    empty loader (model initialisation).

    Batches hold ``float32`` images ``(image_size, image_size, len(modalities))`` and ``float32``
    masks ``(image_size, image_size, 1)``. Memory: about ``2 * image_size**2 * channels`` bytes
    per slice (float16), e.g. 3.3 MB per subject at 128x128, one sequence, ~100 brain slices.
    """

    def __init__(
        self,
        data_path: str | None = None,
        batch_size: int = 16,
        collaborator_count: int = 2,
        data_dir: str | None = None,
        modalities: Sequence[str] = ("flair",),
        crop_size: int = 192,
        image_size: int = 128,
        slices: str = "brain",
        labels: Sequence[int] | None = None,
        train_fraction: float = 0.8,
        split_seed: int = 0,
        max_subjects: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        mods = [
            str(m).lower() for m in ([modalities] if isinstance(modalities, str) else modalities)
        ]
        unknown = [m for m in mods if m not in MODALITIES]
        if unknown or not mods:
            raise DataError(
                LAYOUT_CODE,
                f"data_loader modalities {list(modalities)!r}: unknown {unknown or 'empty list'}",
                f"choose among {', '.join(MODALITIES)}",
            )
        if slices not in SLICE_MODES:
            raise DataError(
                LAYOUT_CODE,
                f"data_loader slices is {slices!r}",
                f"use one of {', '.join(SLICE_MODES)}",
            )
        self.modalities = tuple(mods)
        self.image_size = int(image_size)
        self.num_classes = 1
        self.subjects: dict[str, list[str]] = {"train": [], "valid": []}
        channels = len(self.modalities)
        self.X_train = np.zeros((0, self.image_size, self.image_size, channels), np.float16)
        self.y_train = np.zeros((0, self.image_size, self.image_size, 1), np.uint8)
        self.X_valid, self.y_valid = self.X_train, self.y_train
        if data_path is None or (isinstance(data_path, str) and not data_path.strip()):
            return
        if _is_shard(data_path):
            shard = parse_shard(data_path)
            assert shard is not None
            everyone = find_brats(data_dir, self.modalities)
            mine = [
                everyone[int(i)]
                for i in shard_indices(len(everyone), shard, int(collaborator_count))
            ]
        else:
            folder = Path(str(data_path)).expanduser()
            if not folder.is_absolute():
                folder = Path.cwd() / folder
            mine = _usable(find_subjects(folder), self.modalities)
            if not mine:
                raise _not_found([folder], self.modalities, folder)
        mine = mine[:max_subjects]
        train, valid = split_subjects(len(mine), float(train_fraction), int(split_seed))
        options = dict(
            modalities=self.modalities,
            crop_size=int(crop_size),
            image_size=self.image_size,
            slices=slices,
            labels=labels,
        )
        self.X_train, self.y_train = self._load([mine[i] for i in train], options)
        self.X_valid, self.y_valid = self._load([mine[i] for i in valid], options)
        self.subjects = {
            "train": [mine[i].name for i in train],
            "valid": [mine[i].name for i in valid],
        }
        log.info(
            "BraTS: %d training slices (%d subjects), %d validation slices (%d subjects)",
            len(self.X_train),
            len(train),
            len(self.X_valid),
            len(valid),
        )

    def _load(
        self, subjects: list[BratsSubject], options: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        images, masks = [self.X_train[:0]], [self.y_train[:0]]
        for subject in subjects:
            x, y = subject_slices(subject, **options)
            images.append(x)
            masks.append(y)
        return np.concatenate(images), np.concatenate(masks)

    def get_feature_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, len(self.modalities))

    @staticmethod
    def _as_float(batches: Iterator[tuple[Any, Any]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for x, y in batches:
            yield x.astype(np.float32), y.astype(np.float32)

    def get_train_loader(
        self, batch_size: int | None = None, num_batches: int | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """Shuffled batches of float32 images and masks."""
        return self._as_float(super().get_train_loader(batch_size, num_batches))

    def get_valid_loader(self, batch_size: int | None = None) -> Iterator[tuple[Any, Any]]:
        """Ordered batches of float32 images and masks."""
        return self._as_float(super().get_valid_loader(batch_size))


def write_synthetic_brats(
    root: str | Path,
    subjects: int = 4,
    shape: tuple[int, int, int] = (48, 48, 12),
    seed: int = 0,
    prefix: str = "BraTS20_Training",
) -> Path:
    """Write a small stand-in data set in the real BraTS layout and format (NIfTI-1, gzip).

    Every subject gets ``<prefix>_NNN/<prefix>_NNN_{t1,t1ce,t2,flair,seg}.nii.gz``: an
    ellipsoidal "brain" of int16 intensities and a spherical tumour (labels 2 = oedema shell,
    1 = core, 4 = enhancing rim) that is bright in FLAIR. Meant for tests and offline demos of
    the real loading code; returns ``root``.
    """
    from fedrun.data.nifti import write_nifti

    root = Path(root)
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1, 1, nz), indexing="ij"
    )
    brain = (x / 0.85) ** 2 + (y / 0.75) ** 2 + (z / 0.9) ** 2 <= 1.0
    for number in range(1, subjects + 1):
        name = f"{prefix}_{number:03d}"
        folder = root / name
        centre = rng.uniform(-0.35, 0.35, 3)
        radius = rng.uniform(0.2, 0.35)
        distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
        seg = np.zeros(shape, np.uint8)
        seg[(distance <= radius) & brain] = 2
        seg[(distance <= 0.75 * radius) & brain] = 4
        seg[(distance <= 0.5 * radius) & brain] = 1
        for modality, (tissue, lesion) in {
            "t1": (500, 350),
            "t1ce": (520, 900),
            "t2": (400, 800),
            "flair": (300, 1000),
        }.items():
            volume = np.where(brain, tissue + rng.normal(0, 40, shape), 0.0)
            volume = np.where(seg > 0, lesion + rng.normal(0, 60, shape), volume)
            write_nifti(
                folder / f"{name}_{modality}.nii.gz",
                np.clip(volume, 0, 32000).astype(np.int16),
                spacing=(1.0, 1.0, 1.0),
            )
        write_nifti(folder / f"{name}_seg.nii.gz", seg, spacing=(1.0, 1.0, 1.0))
    return root
