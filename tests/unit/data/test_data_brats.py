"""NIfTI reading/writing and the BraTS slice loader on small data sets in the real format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fedrun.data.brats import (
    BratsSlicesInMemory,
    find_brats,
    find_subjects,
    split_subjects,
    subject_slices,
    write_synthetic_brats,
)
from fedrun.data.nifti import read_nifti, write_nifti
from fedrun.errors import DataError

pytest.importorskip("PIL", reason="slice resizing uses Pillow")


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    """Six subjects of 40x40x10 voxels in the BraTS 2020 layout."""
    root = tmp_path_factory.mktemp("brats") / "MICCAI_BraTS2020_TrainingData"
    return write_synthetic_brats(root, subjects=6, shape=(40, 40, 10))


# ---------------------------------------------------------------------- NIfTI
@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.int64]
)
@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_round_trip(tmp_path, dtype, name):
    data = (np.random.default_rng(0).random((5, 6, 7)) * 100).astype(dtype)
    write_nifti(tmp_path / name, data, spacing=(1.5, 2.0, 3.0), description="test volume")
    volume = read_nifti(tmp_path / name)
    assert volume.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(volume.data, data)
    assert volume.spacing == (1.5, 2.0, 3.0) and volume.description == "test volume"
    np.testing.assert_allclose(volume.affine, np.diag([1.5, 2.0, 3.0, 1.0]))


def test_nifti_file_layout_is_nifti1(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    raw = gzip.decompress(write_nifti(tmp_path / "v.nii.gz", data).read_bytes())
    assert struct.unpack("<i", raw[:4])[0] == 348 and raw[344:348] == b"n+1\x00"
    assert struct.unpack("<8h", raw[40:56])[:4] == (3, 2, 3, 4)
    assert struct.unpack("<f", raw[108:112])[0] == 352.0
    # voxels in Fortran order: x varies fastest
    voxels = np.frombuffer(raw[352:], "<i2")
    np.testing.assert_array_equal(voxels, data.ravel(order="F"))


def _patch(path: Path, offset: int, fmt: str, *values) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


def test_nifti_scaling_and_big_endian_files(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    path = write_nifti(tmp_path / "s.nii", data)
    _patch(path, 112, "<2f", 2.0, 10.0)  # scl_slope, scl_inter
    scaled = read_nifti(path).data
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, data * 2.0 + 10.0)
    # the same volume written big-endian by hand
    little = (tmp_path / "s.nii").read_bytes()
    header = bytearray(348)
    for offset, fmt in [(0, "i"), (40, "8h"), (70, "2h"), (76, "8f"), (108, "f"), (112, "2f")]:
        values = struct.unpack_from("<" + fmt, little, offset)
        struct.pack_into(">" + fmt, header, offset, *values)
    header[344:348] = b"n+1\x00"
    big = tmp_path / "b.nii"
    big.write_bytes(bytes(header) + b"\x00" * 4 + data.astype(">i2").tobytes(order="F"))
    np.testing.assert_allclose(read_nifti(big).data, data * 2.0 + 10.0)


def test_nifti2_files_are_read(tmp_path):
    data = np.random.default_rng(1).random((4, 3, 2)).astype(np.float32)
    header = bytearray(540)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    struct.pack_into("<2h", header, 12, 16, 32)
    struct.pack_into("<8q", header, 16, 3, 4, 3, 2, 1, 1, 1, 1)
    struct.pack_into("<8d", header, 104, 1, 0.5, 0.5, 2, 1, 1, 1, 1)
    struct.pack_into("<q", header, 168, 544)
    path = tmp_path / "v2.nii"
    path.write_bytes(bytes(header) + b"\x00" * 4 + data.tobytes(order="F"))
    volume = read_nifti(path)
    np.testing.assert_array_equal(volume.data, data)
    assert volume.spacing == (0.5, 0.5, 2.0)


def test_nifti_agrees_with_nibabel(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = (np.random.default_rng(2).random((6, 5, 4)) * 1000).astype(np.int16)
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    affine[:3, 3] = [-90.0, 120.0, -60.0]
    write_nifti(tmp_path / "ours.nii.gz", data, spacing=(1.2, 1.2, 2.5), affine=affine)
    theirs = nib.load(str(tmp_path / "ours.nii.gz"))
    np.testing.assert_array_equal(np.asarray(theirs.dataobj), data)
    np.testing.assert_allclose(theirs.affine, affine, atol=1e-5)
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        image = cls(data.astype(np.float32) * 0.5, affine)
        nib.save(image, str(tmp_path / "theirs.nii.gz"))
        volume = read_nifti(tmp_path / "theirs.nii.gz")
        np.testing.assert_allclose(volume.data, data * 0.5)
        np.testing.assert_allclose(volume.affine, affine, atol=1e-5)


def test_broken_nifti_files_are_refused(tmp_path):
    good = write_nifti(tmp_path / "g.nii", np.zeros((4, 4, 4), np.float32)).read_bytes()
    cases = {
        "short.nii": good[:100],
        "truncated.nii": good[:-10],
        "magic.nii": good[:344] + b"xyz\x00" + good[348:],
        "size.nii": b"\x00" * 400,
        "gzip.nii.gz": b"\x1f\x8b" + b"garbage" * 10,
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(DataError) as err:
            read_nifti(tmp_path / name)
        assert err.value.code == "FX-DATA-035", name
        assert name in err.value.message
    odd = bytearray(good)
    struct.pack_into("<2h", odd, 70, 32, 64)  # complex64: not supported
    (tmp_path / "complex.nii").write_bytes(bytes(odd))
    with pytest.raises(DataError, match="data type code 32"):
        read_nifti(tmp_path / "complex.nii")
    with pytest.raises(ValueError):
        write_nifti(tmp_path / "c.nii", np.zeros((2, 2), np.complex64))


# ---------------------------------------------------------------------- subjects
def test_subjects_are_found_with_both_namings(tmp_path, brats):
    subjects = find_subjects(brats)
    assert [s.name for s in subjects] == [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]
    assert set(subjects[0].images) == {"t1", "t1ce", "t2", "flair"}
    assert subjects[0].seg.name == "BraTS20_Training_001_seg.nii.gz"
    # BraTS 2023 names: BraTS-GLI-00000-000-t2f.nii.gz ...
    case = tmp_path / "BraTS-GLI-00000-000"
    volume = np.ones((4, 4, 4), np.int16)
    for suffix in ("t1n", "t1c", "t2w", "t2f", "seg"):
        write_nifti(case / f"BraTS-GLI-00000-000-{suffix}.nii.gz", volume)
    (new,) = find_subjects(tmp_path / "BraTS-GLI-00000-000")
    assert new.name == "BraTS-GLI-00000-000"
    assert set(new.images) == {"t1", "t1ce", "t2", "flair"} and new.seg is not None


def test_subjects_without_labels_are_not_used(tmp_path):
    write_synthetic_brats(tmp_path, subjects=3, shape=(16, 16, 4))
    (tmp_path / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz").unlink()
    assert [s.name for s in find_brats(tmp_path)] == [
        "BraTS20_Training_001",
        "BraTS20_Training_003",
    ]
    (tmp_path / "BraTS20_Training_003" / "BraTS20_Training_003_t2.nii.gz").unlink()
    assert len(find_brats(tmp_path, modalities=("t2", "flair"))) == 1


def test_slices_are_normalised_cropped_and_masked(brats):
    subject = find_subjects(brats)[0]
    images, masks = subject_slices(
        subject, ("flair", "t1"), crop_size=32, image_size=32, slices="all"
    )
    assert images.shape == (10, 32, 32, 2) and images.dtype == np.float16
    assert masks.shape == (10, 32, 32, 1) and masks.dtype == np.uint8
    brain = images[..., 0] != 0
    assert abs(float(images[..., 0][brain].mean())) < 0.1
    assert abs(float(images[..., 0][brain].astype(np.float32).std()) - 1.0) < 0.1
    assert set(np.unique(masks)) <= {0, 1} and masks.any()
    tumour, _ = subject_slices(subject, crop_size=32, image_size=32, slices="tumor")
    brain_only, _ = subject_slices(subject, crop_size=32, image_size=32, slices="brain")
    assert 0 < len(tumour) <= len(brain_only) <= 10
    whole = subject_slices(subject, crop_size=32, image_size=32, slices="all")[1]
    _, core_masks = subject_slices(subject, crop_size=32, image_size=32, slices="all", labels=[1])
    assert 0 < core_masks.sum() < whole.sum()


def test_slices_are_padded_and_resized(brats):
    subject = find_subjects(brats)[1]
    padded, masks = subject_slices(subject, crop_size=48, image_size=48)
    assert padded.shape[1:] == (48, 48, 1) and not padded[:, :4].any()
    small, small_masks = subject_slices(subject, crop_size=40, image_size=20)
    assert small.shape[1:] == (20, 20, 1) and small_masks.shape[1:] == (20, 20, 1)
    assert set(np.unique(small_masks)) <= {0, 1}


def test_mismatched_volumes_are_refused(tmp_path):
    write_synthetic_brats(tmp_path, subjects=1, shape=(16, 16, 4))
    seg = tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz"
    write_nifti(seg, np.zeros((16, 16, 5), np.uint8))
    with pytest.raises(DataError) as err:
        subject_slices(find_subjects(tmp_path)[0], crop_size=16, image_size=16)
    assert err.value.code == "FX-DATA-041"


# ---------------------------------------------------------------------- the loader
def test_shards_give_each_collaborator_its_own_subjects(brats):
    settings = dict(collaborator_count=2, data_dir=str(brats), crop_size=32, image_size=32)
    one = BratsSlicesInMemory("1", **settings)
    two = BratsSlicesInMemory("2", **settings)
    mine = set(one.subjects["train"]) | set(one.subjects["valid"])
    theirs = set(two.subjects["train"]) | set(two.subjects["valid"])
    assert len(mine) == len(theirs) == 3 and mine.isdisjoint(theirs)
    assert len(one.subjects["train"]) == 2 and len(one.subjects["valid"]) == 1
    assert one.get_feature_shape() == (32, 32, 1) and one.get_train_data_size() > 0
    x, y = next(one.get_train_loader(batch_size=4))
    assert x.dtype == np.float32 and y.dtype == np.float32 and x.shape == (4, 32, 32, 1)
    assert y.shape == (4, 32, 32, 1)
    vx, _ = next(one.get_valid_loader())
    assert vx.dtype == np.float32


def test_a_folder_data_path_and_several_modalities(brats):
    loader = BratsSlicesInMemory(
        str(brats), modalities=["t1", "t1ce", "t2", "flair"], crop_size=40, image_size=16
    )
    assert loader.get_feature_shape() == (16, 16, 4)
    assert len(loader.subjects["train"]) == 5 and len(loader.subjects["valid"]) == 1
    assert loader.X_train.shape[1:] == (16, 16, 4)
    capped = BratsSlicesInMemory(str(brats), crop_size=40, image_size=16, max_subjects=2)
    assert len(capped.subjects["train"]) + len(capped.subjects["valid"]) == 2


def test_no_data_path_builds_an_empty_loader_with_known_shapes():
    loader = BratsSlicesInMemory(None, modalities=["flair", "t2"], image_size=64)
    assert loader.get_feature_shape() == (64, 64, 2) and loader.get_train_data_size() == 0
    assert loader.num_classes == 1


def test_missing_brats_explains_registration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDRUN_BRATS_DIR", raising=False)
    with pytest.raises(DataError) as err:
        BratsSlicesInMemory("1")
    assert err.value.code == "FX-DATA-040"
    assert "registration" in err.value.fix and "cbica" in err.value.fix
    assert str(tmp_path / "data" / "brats") in err.value.fix
    assert "*_flair.nii.gz" in err.value.message and "*_seg.nii.gz" in err.value.message
    with pytest.raises(DataError) as folder:
        BratsSlicesInMemory(str(tmp_path))
    assert folder.value.code == "FX-DATA-040"


def test_data_is_found_through_the_environment(brats, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDRUN_BRATS_DIR", str(brats))
    loader = BratsSlicesInMemory("3", collaborator_count=3, crop_size=32, image_size=32)
    assert len(loader.subjects["train"]) == 1 and len(loader.subjects["valid"]) == 1


def test_too_few_subjects_and_bad_settings_are_refused(brats):
    with pytest.raises(DataError) as err:
        BratsSlicesInMemory("1", collaborator_count=6, data_dir=str(brats))
    assert err.value.code == "FX-DATA-042"
    with pytest.raises(DataError, match="unknown"):
        BratsSlicesInMemory(None, modalities=["dwi"])
    with pytest.raises(DataError, match="slices"):
        BratsSlicesInMemory(None, slices="some")
    assert split_subjects(5, 0.8, seed=0) == split_subjects(5, 0.8, seed=0)
