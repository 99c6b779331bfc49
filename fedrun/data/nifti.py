"""Read and write NIfTI volumes (``.nii`` / ``.nii.gz``) with numpy alone.

Reading covers the single-file formats medical data sets use: NIfTI-1 (348-byte header, magic
``n+1``) and NIfTI-2 (540-byte header, magic ``n+2``), either byte order, plain or gzip-compressed,
with the ``scl_slope`` / ``scl_inter`` intensity scaling applied. Writing produces NIfTI-1.

Voxels are stored with the first axis varying fastest, so a file of ``dim = (X, Y, Z)`` becomes
an array of shape ``(X, Y, Z)`` indexed ``[x, y, z]``, as nibabel returns it.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from fedrun.errors import DataError

BAD_FILE_CODE = "FX-DATA-035"

#: NIfTI datatype code -> numpy dtype (native layout; the byte order is applied on read)
NIFTI_DTYPES: dict[int, np.dtype] = {
    2: np.dtype(np.uint8),
    4: np.dtype(np.int16),
    8: np.dtype(np.int32),
    16: np.dtype(np.float32),
    64: np.dtype(np.float64),
    256: np.dtype(np.int8),
    512: np.dtype(np.uint16),
    768: np.dtype(np.uint32),
    1024: np.dtype(np.int64),
    1280: np.dtype(np.uint64),
}
_CODES = {dtype: code for code, dtype in NIFTI_DTYPES.items()}

_N1_SIZE = 348
_N2_SIZE = 540
_N1_MAGIC = b"n+1\x00"
_N2_MAGIC = b"n+2\x00\r\n\x1a\n"


@dataclass
class NiftiVolume:
    """A NIfTI image: voxel data, voxel sizes and the voxel-to-world matrix."""

    data: np.ndarray
    spacing: tuple[float, ...] = ()
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    description: str = ""


def _bad(path: str, problem: str) -> DataError:
    return DataError(
        BAD_FILE_CODE,
        f"{path} is not a readable NIfTI file: {problem}",
        "replace the file with an intact copy (.nii or .nii.gz, NIfTI-1 or NIfTI-2)",
    )


def _raw_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            "FX-DATA-001",
            f"cannot read {path}: {exc.strerror or exc}",
            "check that the file exists and is readable by this user",
        ) from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise _bad(str(path), f"gzip data is corrupt or truncated ({exc})") from exc
    return raw


ByteOrder = Literal["<", ">"]


def _byte_order(raw: bytes, path: str) -> tuple[ByteOrder, int]:
    if len(raw) < 4:
        raise _bad(path, f"only {len(raw)} bytes long")
    orders: tuple[ByteOrder, ...] = ("<", ">")
    for order in orders:
        size = struct.unpack(order + "i", raw[:4])[0]
        if size in (_N1_SIZE, _N2_SIZE):
            return order, size
    raise _bad(path, "the header size field is neither 348 (NIfTI-1) nor 540 (NIfTI-2)")


def _affine(
    rows: list[tuple[float, float, float, float]], spacing: tuple[float, ...]
) -> np.ndarray:
    matrix = np.eye(4)
    if rows and any(any(v != 0 for v in row) for row in rows):
        matrix[:3, :] = np.asarray(rows, dtype=np.float64)
    else:
        for axis, size in enumerate(spacing[:3]):
            matrix[axis, axis] = size if size else 1.0
    return matrix


def read_nifti(path: str | os.PathLike[str]) -> NiftiVolume:
    """Read a ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    NiftiVolume
        ``data`` has the file's dtype, or float (32 or 64 bit) when ``scl_slope`` asks for
        scaling; ``spacing`` the voxel sizes; ``affine`` the ``sform`` matrix (or a diagonal of
        the voxel sizes when the file has none).

    Raises
    ------
    DataError
        ``FX-DATA-035`` for a file that is not NIfTI, is truncated, or uses an unsupported
        data type; ``FX-DATA-001`` when it cannot be read.
    """
    path = Path(path)
    where = str(path)
    raw = _raw_bytes(path)
    order, size = _byte_order(raw, where)
    if len(raw) < size:
        raise _bad(where, f"the header is truncated ({len(raw)} of {size} bytes)")
    if size == _N1_SIZE:
        if raw[344:348] not in (_N1_MAGIC, b"ni1\x00"):
            raise _bad(where, f"unknown magic {raw[344:348]!r}")
        if raw[344:348] == b"ni1\x00":
            raise _bad(where, "it is the header half of a .hdr/.img pair, which is not supported")
        dims = struct.unpack(order + "8h", raw[40:56])
        datatype, bitpix = struct.unpack(order + "2h", raw[70:74])
        pixdim = struct.unpack(order + "8f", raw[76:108])
        offset = int(struct.unpack(order + "f", raw[108:112])[0])
        slope, inter = struct.unpack(order + "2f", raw[112:120])
        description = raw[148:228].split(b"\x00", 1)[0].decode("latin-1")
        sform_code = struct.unpack(order + "h", raw[254:256])[0]
        rows = [struct.unpack(order + "4f", raw[280 + 16 * i : 296 + 16 * i]) for i in range(3)]
    else:
        if raw[4:12] != _N2_MAGIC:
            raise _bad(where, f"unknown magic {raw[4:12]!r}")
        datatype, bitpix = struct.unpack(order + "2h", raw[12:16])
        dims = struct.unpack(order + "8q", raw[16:80])
        pixdim = struct.unpack(order + "8d", raw[104:168])
        offset = int(struct.unpack(order + "q", raw[168:176])[0])
        slope, inter = struct.unpack(order + "2d", raw[176:192])
        description = raw[240:320].split(b"\x00", 1)[0].decode("latin-1")
        sform_code = struct.unpack(order + "i", raw[348:352])[0]
        rows = [struct.unpack(order + "4d", raw[400 + 32 * i : 432 + 32 * i]) for i in range(3)]
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise _bad(where, f"dim[0] is {ndim}, not 1..7")
    shape = tuple(int(d) for d in dims[1 : ndim + 1])
    if any(d < 1 for d in shape):
        raise _bad(where, f"it declares the shape {shape}")
    dtype = NIFTI_DTYPES.get(int(datatype))
    if dtype is None:
        raise _bad(where, f"its data type code {datatype} is not supported")
    if bitpix != dtype.itemsize * 8:
        raise _bad(where, f"bitpix {bitpix} does not match data type code {datatype}")
    count = math.prod(shape)
    end = offset + count * dtype.itemsize
    if offset < size or len(raw) < end:
        raise _bad(
            where,
            f"it is truncated: the header declares {shape} voxels of {dtype.name} from byte "
            f"{offset}, {end} bytes in all, but the file has {len(raw)}",
        )
    flat = np.frombuffer(raw, dtype=dtype.newbyteorder(order), count=count, offset=offset)
    data = flat.reshape(shape, order="F").astype(dtype, copy=True)
    if slope and math.isfinite(slope) and (slope != 1.0 or inter != 0.0):
        kind = np.dtype(np.float64 if dtype.itemsize >= 8 else np.float32)
        data = data.astype(kind)
        data *= kind.type(slope)
        data += kind.type(inter if math.isfinite(inter) else 0.0)
    spacing = tuple(float(p) for p in pixdim[1 : ndim + 1])
    return NiftiVolume(
        data=data,
        spacing=spacing,
        affine=_affine(rows if sform_code > 0 else [], spacing),
        description=description,
    )


def load_nifti(path: str | os.PathLike[str]) -> np.ndarray:
    """The voxel array of a NIfTI file (see :func:`read_nifti`)."""
    return read_nifti(path).data


def write_nifti(
    path: str | os.PathLike[str],
    data: np.ndarray,
    spacing: tuple[float, ...] | None = None,
    affine: np.ndarray | None = None,
    description: str = "",
) -> Path:
    """Write ``data`` as a single-file NIfTI-1 image, gzip-compressed when the name ends in ``.gz``.

    Parameters
    ----------
    data:
        1 to 7 dimensions; bool is stored as uint8, other dtypes must be in :data:`NIFTI_DTYPES`.
    spacing:
        Voxel sizes (default 1 for every axis).
    affine:
        4x4 voxel-to-world matrix, stored as the ``sform`` (default: the voxel sizes on the
        diagonal).
    """
    path = Path(path)
    array = np.asarray(data)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    code = _CODES.get(np.dtype(array.dtype.name))  # .name drops the byte order
    if code is None:
        raise ValueError(f"NIfTI cannot store {array.dtype}")
    if not 1 <= array.ndim <= 7:
        raise ValueError(f"NIfTI stores 1 to 7 dimensions, not {array.ndim}")
    sizes = tuple(float(s) for s in (spacing or (1.0,) * array.ndim))
    if len(sizes) != array.ndim:
        raise ValueError(f"spacing has {len(sizes)} values for {array.ndim} dimensions")
    matrix = np.asarray(affine if affine is not None else _affine([], sizes), dtype=np.float64)
    itemsize = NIFTI_DTYPES[code].itemsize

    header = bytearray(_N1_SIZE)
    struct.pack_into("<i", header, 0, _N1_SIZE)
    header[38:39] = b"r"  # "regular", as every writer sets it
    dims = [array.ndim, *array.shape] + [1] * (7 - array.ndim)
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<2h", header, 70, code, itemsize * 8)
    pixdim = [1.0, *sizes] + [1.0] * (7 - array.ndim)
    struct.pack_into("<8f", header, 76, *pixdim)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset: header + 4-byte extension flag
    struct.pack_into("<2f", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    header[123] = 2 | 8  # xyzt_units: millimetres, seconds
    header[148 : 148 + 80] = description.encode("latin-1", "replace")[:79].ljust(80, b"\x00")
    struct.pack_into("<2h", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for row in range(3):
        struct.pack_into("<4f", header, 280 + 16 * row, *matrix[row])
    header[344:348] = _N1_MAGIC
    body = np.asarray(array, dtype=NIFTI_DTYPES[code].newbyteorder("<")).tobytes(order="F")
    payload = bytes(header) + b"\x00\x00\x00\x00" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6)
    path.write_bytes(payload)
    return path
