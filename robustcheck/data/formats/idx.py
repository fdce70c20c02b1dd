"""Reading MNIST-style IDX files, plain or gzip: one file (:func:`read_idx`) or an images/labels pair
(:func:`load_idx`), and finding the pair in a folder or beside one of its files.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from robustcheck.data.builtin import DIGIT_CLASSES
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.common import describe_start, make_dataset, read_start, reason, unit_float
from robustcheck.errors import InputError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
IDX_IMAGES_NAME = re.compile(r"^(?P<split>t10k|train)-images[-.]idx3-ubyte(\.gz)?$")

# IDX header byte 3 -> element type (big-endian); MNIST uses 0x08 for both images and labels.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_maybe_gzip(path: Path) -> IO[bytes]:
    """Open for reading, decompressing when the content (not the suffix) is gzip."""
    if read_start(path, 2) == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return path.open("rb")


def read_idx(path: Path, magic: int, limit: int | None = None) -> tuple[np.ndarray, int]:
    """Read an IDX file (plain or gzip) whose magic number must be ``magic``.

    Returns ``(array, n)``: the first ``limit`` entries along axis 0 (all when None) in native byte
    order, and the number of entries the header announces. Only the needed bytes are decompressed.
    """
    ndim = magic & 0xFF
    try:
        with _open_maybe_gzip(path) as f:
            header = f.read(4)
            found = int.from_bytes(header, "big") if len(header) == 4 else None
            if found != magic:
                # IDX magic numbers start with two zero bytes; anything else is not IDX at all.
                what = f"magic number 0x{found:08x}" if header[:2] == b"\0\0" else describe_start(header + f.read(60))
                raise InputError(f"{path}: not an IDX file of the expected kind: {what}, expected 0x{magic:08x}")
            dims_bytes = f.read(4 * ndim)
            if len(dims_bytes) != 4 * ndim:
                raise InputError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            dtype = IDX_TYPES[(magic >> 8) & 0xFF]
            n = dims[0] if limit is None else min(limit, dims[0])
            nbytes = n * math.prod(dims[1:]) * dtype.itemsize
            data = f.read(nbytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: unreadable or truncated ({reason(exc)})") from exc
    if len(data) != nbytes:
        raise InputError(f"{path}: truncated: header announces {dims[0]} entries but the data ends after {len(data)} bytes")
    arr = np.frombuffer(bytearray(data), dtype=dtype).reshape((n, *dims[1:]))
    return arr.astype(dtype.newbyteorder("=")), dims[0]


def idx_pair_in_folder(folder: Path, split: str) -> tuple[Path, Path]:
    prefix = "t10k" if split == "test" else "train"
    names = sorted(p.name for p in folder.iterdir())
    images = [n for n in names if (m := IDX_IMAGES_NAME.match(n)) and m["split"] == prefix]
    if not images:
        other = "train" if split == "test" else "test"
        raise InputError(
            f"{folder}: no {split} images ({prefix}-images-idx3-ubyte[.gz]); "
            f"found only the other split, pass split={other}"
        )
    return idx_pair_for_file(folder / images[0])


def idx_pair_for_file(path: Path) -> tuple[Path, Path]:
    """``(images, labels)`` for an idx images or labels file, finding its partner beside it."""
    images_name = path.name.replace("labels", "images").replace("idx1", "idx3")
    labels_name = path.name.replace("images", "labels").replace("idx3", "idx1")
    images = path.with_name(images_name)
    stem = labels_name.removesuffix(".gz")
    for candidate in (labels_name, stem, stem + ".gz"):
        if (path.parent / candidate).is_file():
            if not images.is_file():
                raise InputError(f"{images}: no such file (the images beside labels {path.name})")
            return images, path.parent / candidate
    raise InputError(f"{path}: no labels file {stem}[.gz] beside it")


def load_idx(images: Path, labels: Path, limit: int | None = None, name: str | None = None) -> ImageDataset:
    """MNIST-style idx pair: uint8 images ``(N, 28, 28)`` -> ``(N, 1, 28, 28)`` in [0, 1]; classes "0".."9"
    when every label is a digit (also right for Fashion-/K-MNIST indices), else unnamed."""
    x, n_images = read_idx(images, IDX_IMAGES_MAGIC, limit)
    y, n_labels = read_idx(labels, IDX_LABELS_MAGIC, limit)
    if n_images != n_labels:
        raise InputError(f"{labels}: {n_labels} labels but {images.name} holds {n_images} images")
    classes = DIGIT_CLASSES if len(y) == 0 or int(y.max()) < len(DIGIT_CLASSES) else None
    meta = {"format": "idx", "path": str(images), "labels": str(labels)}
    return make_dataset(unit_float(x[:, None], str(images)), y.astype(np.int64), classes, name or str(images), meta)

