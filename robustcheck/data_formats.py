"""Reading labelled images from files: ``.npz``, image folders, MNIST idx, CIFAR-10 python batches,
torchvision data sets and the sample images that ship inside foolbox.

Every loader returns an :class:`~robustcheck.data.ImageDataset`: float32 images ``(N, C, H, W)`` in
``[0, 1]`` and int64 labels ``(N,)``. Every failure is an :class:`~robustcheck.errors.InputError` (bad
file) or :class:`~robustcheck.errors.UsageError` (bad parameter) whose one-line message names the
file and the problem; errors from numpy, gzip, pickle or PIL never escape raw.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import importlib
import importlib.util
import inspect
import json
import math
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from robustcheck.data import DIGIT_CLASSES, ImageDataset
from robustcheck.errors import InputError, UsageError, suggest
from robustcheck.params import resolve_params

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
CHANNEL_COUNTS = (1, 3, 4)
LAYOUTS = ("nchw", "nhwc")
SPLITS = ("test", "train")
# PIL modes holding one grey channel; "I*" modes are 16/32-bit and need our own scaling.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"})
FOOLBOX_IMAGENET_SIZE = 224

# IDX header byte 3 -> element type (big-endian); MNIST uses 0x08 for both images and labels.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
IDX_IMAGES_NAME = re.compile(r"^(?P<split>t10k|train)-images[-.]idx3-ubyte(\.gz)?$")
CIFAR_TEST_FILES = ("test_batch",)
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_BATCH_NAME = re.compile(r"^(test_batch|data_batch_\d+)$")
CIFAR_META = "batches.meta"
CIFAR_IMAGE_SHAPE = (3, 32, 32)
FOOLBOX_SAMPLE_NAME = re.compile(r"^(?P<set>[A-Za-z0-9]+)_(?P<index>\d+)_(?P<label>\d+)\.(png|jpe?g)$")


# --------------------------------------------------------------------------------------------
# Small helpers shared by the loaders
# --------------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """One-line description of a library exception, for the tail of an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read_start(path: Path, n: int = 64) -> bytes:
    """The first ``n`` bytes of a file (for sniffing its real type)."""
    with path.open("rb") as f:
        return f.read(n)


def _describe_start(head: bytes) -> str:
    """Say what a file that is not the expected format looks like, e.g. an HTML page saved by mistake."""
    if not head:
        return "the file is empty"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "it is an HTML/XML page, not data (an error or login page saved by a download?)"
    return f"it starts with {head[:16]!r}"


def _check_limit(limit: Any) -> int | None:
    """``None`` or a positive int; anything else is a :class:`UsageError`."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise UsageError(f"limit must be a positive integer, got {limit!r}")
    return limit


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise UsageError(f"split must be 'test' or 'train', got {split!r}")
    return split


def _check_layout(layout: Any) -> str | None:
    if layout is None:
        return None
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise UsageError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    return layout.lower()


def _check_size(size: Any) -> tuple[int, int] | None:
    """``None``, an int (square) or ``[H, W]`` -> ``(H, W)``."""
    if size is None:
        return None
    items = [size, size] if isinstance(size, int) else size
    if (
        not isinstance(items, (list, tuple))
        or len(items) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)
    ):
        raise UsageError(f"size must be a positive integer or [H, W], got {size!r}")
    return int(items[0]), int(items[1])


def _unit_float(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 ``0..255`` -> float32 ``/ 255``; floats -> float32 as they are (range checked later)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    raise InputError(f"{source}: images have dtype {x.dtype}; expected uint8 (0-255) or float (0-1)")


def _labels(y: np.ndarray, n_images: int, source: str) -> np.ndarray:
    """Validate labels: shape ``(N,)`` (or ``(N, 1)``), integral values; return int64 ``(N,)``."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # column vectors are common (e.g. SVHN .mat exports)
    if y.ndim == 2 and y.shape[1] > 1:
        raise InputError(f"{source}: labels have shape {y.shape}; expected class indices (N,), not one-hot (use y.argmax(1))")
    if y.ndim != 1:
        raise InputError(f"{source}: labels must have shape (N,), got {y.shape}")
    if y.dtype.kind not in "iuf":
        raise InputError(f"{source}: labels have dtype {y.dtype}; expected integer class indices")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
        raise InputError(f"{source}: labels contain non-integer or NaN values")
    if len(y) != n_images:
        raise InputError(f"{source}: {n_images} images but {len(y)} labels")
    if len(y) and y.min() < 0:
        raise InputError(f"{source}: labels must be non-negative, got {y.min()}")
    return y.astype(np.int64)


def to_nchw(x: np.ndarray, layout: str | None, source: str) -> np.ndarray:
    """Reorder images to ``(N, C, H, W)``.

    ``x`` is ``(N, H, W)`` (grey), ``(N, H, W, C)`` or ``(N, C, H, W)``. Without ``layout`` the
    channel axis is guessed: channels-last when the last axis has 1, 3 or 4 entries and axis 1 has
    not; otherwise channels-first (so the ambiguous ``(N, 3, 4, 3)`` counts as channels-first).
    """
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise InputError(f"{source}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    if layout is None:
        channels_last = x.shape[3] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS
        if not channels_last and x.shape[1] not in CHANNEL_COUNTS:
            raise InputError(
                f"{source}: cannot find the channel axis in images of shape {x.shape}: "
                "neither axis 1 nor axis 3 has 1, 3 or 4 entries"
            )
        layout = "nhwc" if channels_last else "nchw"
    if layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in CHANNEL_COUNTS:
        raise InputError(f"{source}: images of shape {x.shape} in layout {layout} have {x.shape[1]} channels, expected 1, 3 or 4")
    return x


def _make_dataset(
    x: np.ndarray, y: np.ndarray, classes: list[str] | None, name: str, meta: dict[str, Any]
) -> ImageDataset:
    """Wrap checked float32 ``(N, C, H, W)`` images and int64 labels; ImageDataset checks range and NaN."""
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)), classes, name=name, meta=meta
    )


# --------------------------------------------------------------------------------------------
# Entry point: dispatch on what the path is
# --------------------------------------------------------------------------------------------


def load_path(path: Path | str, **params: Any) -> ImageDataset:
    """Load labelled images from ``path``; the data set's name is the path string.

    Recognised (by content and name, not only by suffix):

    * ``.npz`` with ``x`` (uint8 0-255 or float 0-1; ``(N,H,W)``, ``(N,H,W,C)`` or ``(N,C,H,W)``),
      ``y`` ``(N,)`` and optional ``classes``; params ``layout="nchw"|"nhwc"``, ``limit``.
    * an image folder, one subfolder per class (class names = sorted subfolder names); params
      ``size=[H, W]`` (resize; else all images must share one size), ``limit``.
    * MNIST idx: a folder with ``t10k-``/``train-images-idx3-ubyte[.gz]`` and the labels file
      (params ``split="test"|"train"``, ``limit``) or the images file itself (``limit``).
    * CIFAR-10 python batches: a folder with ``test_batch``, ``data_batch_1..5`` and
      ``batches.meta`` (params ``split``, ``limit``), or one batch file (``limit``).

    ``limit`` keeps the first N samples and, where the format allows, reads only those.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            return _load_folder(path, params)
        return _load_file(path, params)
    except OSError as exc:
        # Safety net for I/O failures outside the format-specific wrappers (permissions, races).
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from exc


def _load_file(path: Path, params: dict[str, Any]) -> ImageDataset:
    name = path.name
    if path.suffix.lower() == ".npz":
        p = resolve_params(f"npz data {path}", {"limit": None, "layout": None}, params)
        return load_npz(path, limit=_check_limit(p["limit"]), layout=_check_layout(p["layout"]))
    if "idx3-ubyte" in name or "idx1-ubyte" in name:
        p = resolve_params(f"MNIST idx data {path}", {"limit": None}, params)
        images, labels = _idx_pair_for_file(path)
        return load_idx(images, labels, limit=_check_limit(p["limit"]), name=str(path))
    if CIFAR_BATCH_NAME.match(name):
        p = resolve_params(f"CIFAR-10 batch {path}", {"limit": None}, params)
        return load_cifar_batches([path], path.parent / CIFAR_META, limit=_check_limit(p["limit"]), name=str(path))
    raise InputError(
        f"{path}: unsupported data file; expected a .npz archive, an MNIST idx file (*-idx3-ubyte[.gz]), "
        "a CIFAR-10 batch, or a folder"
    )


def _load_folder(folder: Path, params: dict[str, Any]) -> ImageDataset:
    if (folder / "labels.csv").is_file():
        p = resolve_params(f"labelled photos {folder}", {"size": 256, "limit": None}, params)
        return load_labelled_photos(folder, size=int(p["size"]), limit=_check_limit(p["limit"]))
    # Descend into the folder that the CIFAR-10 tarball and torchvision's MNIST layout create.
    for inner in ("cifar-10-batches-py", "raw"):
        if (folder / inner).is_dir() and _folder_kind(folder / inner) in ("cifar", "idx"):
            return _load_known_folder(folder / inner, _folder_kind(folder / inner), params, name=str(folder))
    kind = _folder_kind(folder)
    if kind is None:
        raise InputError(
            f"{folder}: unknown folder layout; expected one subfolder of images per class, "
            "MNIST idx files (t10k-images-idx3-ubyte[.gz] + labels) or CIFAR-10 batches (test_batch, data_batch_1..5)"
        )
    return _load_known_folder(folder, kind, params, name=str(folder))


def _folder_kind(folder: Path) -> str | None:
    """``"cifar"``, ``"idx"``, ``"images"`` or None, from the names of the folder's entries."""
    names = {p.name for p in folder.iterdir()}
    if names & {CIFAR_META, *CIFAR_TEST_FILES, *CIFAR_TRAIN_FILES}:
        return "cifar"
    if any(IDX_IMAGES_NAME.match(n) for n in names):
        return "idx"
    if any(_image_files(sub) for sub in _class_dirs(folder)):
        return "images"
    if _image_files(folder):
        raise InputError(f"{folder}: images lie directly in the folder; expected one subfolder of images per class")
    return None


def _load_known_folder(folder: Path, kind: str, params: dict[str, Any], name: str) -> ImageDataset:
    if kind == "cifar":
        p = resolve_params(f"CIFAR-10 data {name}", {"limit": None, "split": "test"}, params)
        split = _check_split(p["split"])
        files = [folder / f for f in (CIFAR_TEST_FILES if split == "test" else CIFAR_TRAIN_FILES)]
        return load_cifar_batches(files, folder / CIFAR_META, limit=_check_limit(p["limit"]), name=name)
    if kind == "idx":
        p = resolve_params(f"MNIST idx data {name}", {"limit": None, "split": "test"}, params)
        images, labels = _idx_pair_in_folder(folder, _check_split(p["split"]))
        return load_idx(images, labels, limit=_check_limit(p["limit"]), name=name)
    p = resolve_params(f"image folder {name}", {"limit": None, "size": None}, params)
    return load_image_folder(folder, size=_check_size(p["size"]), limit=_check_limit(p["limit"]), name=name)


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def load_npz(path: Path, limit: int | None = None, layout: str | None = None) -> ImageDataset:
    """Read ``x``, ``y`` and optional ``classes`` from an ``.npz`` archive (see :func:`load_path`)."""
    source = str(path)
    head = _read_start(path)
    if head.startswith(b"\x93NUMPY"):
        raise InputError(f"{source}: holds a single .npy array, not an .npz archive; save with np.savez(path, x=..., y=...)")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise InputError(f"{source}: not an .npz archive: {_describe_start(head)}")
    # We open the file ourselves: np.load leaks its handle when the zip directory is unreadable.
    with path.open("rb") as f, _open_npz(f, source) as npz:
        missing = [k for k in ("x", "y") if k not in npz.files]
        if missing:
            found = ", ".join(npz.files) or "nothing"
            raise InputError(f"{source}: no array {' or '.join(map(repr, missing))} in the archive (found: {found})")
        x, n_x = _npz_array(npz, "x", limit, source)
        y, n_y = _npz_array(npz, "y", limit, source)
        classes = _npz_classes(npz, source) if "classes" in npz.files else None
    if n_x != n_y:
        raise InputError(f"{source}: x has {n_x} images but y has {n_y} labels")
    images = _unit_float(to_nchw(x, layout, source), source)
    labels = _labels(y, len(images), source)
    return _make_dataset(images, labels, classes, source, {"format": "npz", "path": source})


def _open_npz(f: IO[bytes], source: str) -> Any:
    """``np.load`` of an open archive, refusing pickles (loading a file must not run code)."""
    try:
        return np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source}: corrupt or truncated .npz archive ({_reason(exc)})") from exc


def _npz_array(npz: Any, key: str, limit: int | None, source: str) -> tuple[np.ndarray, int]:
    """``(first limit rows, full length)`` of one member; only those rows are read when that is cheap."""
    try:
        if limit is not None:
            head = _npz_head(npz, key, limit)
            if head is not None:
                return head
        arr = np.asarray(npz[key])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{source}: array {key!r} is unreadable ({_reason(exc)})") from exc
    if arr.ndim == 0:
        raise InputError(f"{source}: array {key!r} is a scalar, expected one entry per sample")
    return (arr[:limit] if limit is not None else arr), len(arr)


def _npz_head(npz: Any, key: str, limit: int) -> tuple[np.ndarray, int] | None:
    """``(first limit rows, full length)`` of a C-ordered member, read straight from the zip stream.

    Saves decompressing and holding a whole multi-GB ``x`` when only a few samples are wanted.
    Returns None (caller reads the full member) for Fortran order, object dtypes or unusual headers.
    """
    with npz.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            return None
        shape, fortran_order, dtype = readers[version](f)
        if fortran_order or dtype.hasobject or not shape:
            return None
        n = min(limit, shape[0])
        nbytes = n * math.prod(shape[1:]) * dtype.itemsize
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"member ends after {len(data)} of {nbytes} bytes")
    # bytearray keeps the result writable (torch warns on read-only numpy buffers).
    return np.frombuffer(bytearray(data), dtype=dtype).reshape((n, *shape[1:])), shape[0]


def _npz_classes(npz: Any, source: str) -> list[str]:
    try:
        classes = np.asarray(npz["classes"])
    except ValueError as exc:  # object arrays need pickle, which we refuse for untrusted files
        raise InputError(f"{source}: 'classes' must be an array of strings, not objects ({_reason(exc)})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{source}: array 'classes' is unreadable ({_reason(exc)})") from exc
    if classes.ndim != 1:
        raise InputError(f"{source}: 'classes' must be a 1-D array of names, got shape {classes.shape}")
    return [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]


# --------------------------------------------------------------------------------------------
# Image folders (and single PIL images, shared with the foolbox samples and torchvision)
# --------------------------------------------------------------------------------------------


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """Image files in ``folder`` by suffix, sorted; other files (notes, thumbnails DBs) are skipped."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """``(PIL mode, (H, W))`` from the file header, without decoding pixels."""
    try:
        with Image.open(path) as im:
            return im.mode, (im.height, im.width)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error ...) on bad files
        raise InputError(f"{path}: not a readable image ({_reason(exc)})") from exc


def pil_to_hwc(im: Image.Image, grey: bool, size: tuple[int, int] | None = None) -> np.ndarray:
    """A PIL image as float32 ``(H, W, C)`` in ``[0, 1]``: C = 1 when ``grey`` else 3 (alpha dropped).

    ``size`` is ``(H, W)`` to resize to (bicubic, as foolbox does for its ImageNet samples).
    """
    if im.mode.startswith("I"):
        # 16/32-bit grey: convert("L") would clip, not scale, so scale to [0, 1] ourselves.
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0))
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's warning about palette transparency
    if im.mode != "F":
        im = im.convert("L" if grey else "RGB")
    if size is not None and (im.height, im.width) != size:
        im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32)
    arr = np.clip(arr, 0.0, 1.0) if im.mode == "F" else arr / np.float32(255.0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if not grey and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def _decode_image(path: Path, grey: bool, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one file with :func:`pil_to_hwc`; any decoder failure becomes an InputError naming it."""
    try:
        with Image.open(path) as im:
            return pil_to_hwc(im, grey, size)
    except Exception as exc:  # truncated JPEG/PNG data surfaces only here, as OSError, SyntaxError, ...
        raise InputError(f"{path}: unreadable image ({_reason(exc)})") from exc


def _interleave(per_class: list[list[Path]]) -> list[tuple[Path, int]]:
    """Round-robin over classes (file 0 of each class, then file 1, ...) so every prefix is balanced."""
    order: list[tuple[Path, int]] = []
    for i in range(max((len(files) for files in per_class), default=0)):
        order.extend((files[i], label) for label, files in enumerate(per_class) if i < len(files))
    return order


def load_image_folder(
    folder: Path, size: tuple[int, int] | None = None, limit: int | None = None, name: str | None = None
) -> ImageDataset:
    """Images in ``folder/<class>/<file>``; classes are the sorted subfolder names (empty ones included).

    Samples are ordered round-robin over classes, so ``limit`` (and ``head``) give balanced subsets;
    ``meta["files"]`` lists each sample's path relative to ``folder``. Images are kept grey
    (1 channel) when every one is grey, else converted to RGB. Without ``size`` all images must
    share one size; with ``size=(H, W)`` each is resized.
    """
    name = name or str(folder)
    class_dirs = _class_dirs(folder)
    samples = _interleave([_image_files(d) for d in class_dirs])[:limit]
    if not samples:
        raise InputError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class subfolders")
    headers = [_image_header(path) for path, _ in samples]
    grey = all(mode in GREY_MODES for mode, _ in headers)
    if size is None:
        first_size = headers[0][1]
        for (path, _), (_, hw) in zip(samples, headers, strict=True):
            if hw != first_size:
                raise InputError(
                    f"{path}: size {hw[0]}x{hw[1]} differs from {first_size[0]}x{first_size[1]} of "
                    f"{samples[0][0]}; pass size=[H,W] to resize"
                )
    height, width = size or headers[0][1]
    # Preallocate: the headers told us the final shape, so peak memory is one copy of the data.
    x = np.empty((len(samples), height, width, 1 if grey else 3), dtype=np.float32)
    for i, (path, _) in enumerate(samples):
        x[i] = _decode_image(path, grey, size)
    y = np.array([label for _, label in samples], dtype=np.int64)
    meta = {"format": "image-folder", "path": str(folder), "files": [str(p.relative_to(folder)) for p, _ in samples]}
    return _make_dataset(x.transpose(0, 3, 1, 2), y, [d.name for d in class_dirs], name, meta)


# --------------------------------------------------------------------------------------------
# MNIST idx
# --------------------------------------------------------------------------------------------


def _open_maybe_gzip(path: Path) -> IO[bytes]:
    """Open for reading, decompressing when the content (not the suffix) is gzip."""
    if _read_start(path, 2) == b"\x1f\x8b":
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
                what = f"magic number 0x{found:08x}" if header[:2] == b"\0\0" else _describe_start(header + f.read(60))
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
        raise InputError(f"{path}: unreadable or truncated ({_reason(exc)})") from exc
    if len(data) != nbytes:
        raise InputError(f"{path}: truncated: header announces {dims[0]} entries but the data ends after {len(data)} bytes")
    arr = np.frombuffer(bytearray(data), dtype=dtype).reshape((n, *dims[1:]))
    return arr.astype(dtype.newbyteorder("=")), dims[0]


def _idx_pair_in_folder(folder: Path, split: str) -> tuple[Path, Path]:
    prefix = "t10k" if split == "test" else "train"
    names = sorted(p.name for p in folder.iterdir())
    images = [n for n in names if (m := IDX_IMAGES_NAME.match(n)) and m["split"] == prefix]
    if not images:
        other = "train" if split == "test" else "test"
        raise InputError(
            f"{folder}: no {split} images ({prefix}-images-idx3-ubyte[.gz]); "
            f"found only the other split, pass split={other}"
        )
    return _idx_pair_for_file(folder / images[0])


def _idx_pair_for_file(path: Path) -> tuple[Path, Path]:
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
    return _make_dataset(_unit_float(x[:, None], str(images)), y.astype(np.int64), classes, name or str(images), meta)


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# --------------------------------------------------------------------------------------------


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch pickle may name: numpy array/dtype/scalar rebuilders.

    Taken from live objects rather than imported by module path, because the path differs between
    numpy 1 (``numpy.core``) and 2 (``numpy._core``) and importing ``numpy.core`` warns in numpy 2.
    """
    rebuild = np.empty(0).__reduce__()[0]
    frombuffer = np.empty(0).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = rebuild
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy rebuilders: loading a file must not run code."""

    allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}; only numpy arrays are allowed") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR python-batch dict with str keys (Python 2 pickles give bytes keys)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (CIFAR-10 batches are test_batch, data_batch_1..5, batches.meta)")
    try:
        with path.open("rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # unpickling raises almost any type on a corrupt or foreign file
        raise InputError(f"{path}: not a CIFAR-10 python batch ({_reason(exc)}; {_describe_start(_read_start(path))})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a CIFAR-10 python batch (holds {type(obj).__name__}, expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch_arrays(path: Path, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``data`` uint8 ``(n, 3072)`` (R, G, B planes of 32x32) -> ``(n, 3, 32, 32)``; ``labels`` -> int64 ``(n,)``."""
    if "data" not in batch or "labels" not in batch:
        hint = " (CIFAR-100 has fine_labels; not supported)" if "fine_labels" in batch else ""
        raise InputError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys: {', '.join(batch)}){hint}")
    data = np.asarray(batch["data"])
    size = math.prod(CIFAR_IMAGE_SHAPE)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        raise InputError(f"{path}: 'data' must be uint8 (n, {size}), got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(batch["labels"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: 'labels' is not a list of integers ({_reason(exc)})") from exc
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE), _labels(labels, len(data), str(path))


def _cifar_classes(meta_path: Path) -> list[str]:
    """Class names from ``batches.meta``; the standard CIFAR-10 names when the file is absent."""
    if not meta_path.exists():
        return list(CIFAR10_CLASSES)
    names = _read_pickle(meta_path).get("label_names")
    if not isinstance(names, list) or not names:
        raise InputError(f"{meta_path}: no 'label_names' list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar_batches(
    files: Sequence[Path], meta_path: Path, limit: int | None = None, name: str | None = None
) -> ImageDataset:
    """Concatenate CIFAR-10 python batches (3x32x32 in [0, 1]); stops reading once ``limit`` samples are in."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    total = 0
    for path in files:
        if limit is not None and total >= limit:
            break  # later batches are never opened
        x, y = _cifar_batch_arrays(path, _read_pickle(path))
        keep = len(x) if limit is None else min(len(x), limit - total)
        xs.append(x[:keep])
        ys.append(y[:keep])
        total += keep
    images = _unit_float(np.concatenate(xs), str(files[0]))
    meta = {"format": "cifar10-batches", "path": str(files[0].parent), "files": [p.name for p in files]}
    return _make_dataset(images, np.concatenate(ys), _cifar_classes(meta_path), name or str(files[0]), meta)


# --------------------------------------------------------------------------------------------
# Generic (image, label) sequences and torchvision
# --------------------------------------------------------------------------------------------


def _item_to_chw(image: Any, index: int, source: str) -> np.ndarray:
    """One data-set item as float32 ``(C, H, W)`` in [0, 1]: a PIL image, or an HW/HWC/CHW array or tensor."""
    if isinstance(image, Image.Image):
        return pil_to_hwc(image, grey=image.mode in GREY_MODES).transpose(2, 0, 1)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise InputError(f"{source}: item {index} is a {type(image).__name__}, expected a PIL image, array or tensor")
    if image.ndim not in (2, 3):
        raise InputError(f"{source}: item {index} has shape {image.shape}, expected (H, W), (H, W, C) or (C, H, W)")
    return _unit_float(to_nchw(image[None], None, f"{source} item {index}"), f"{source} item {index}")[0]


def _item_label(label: Any, index: int, source: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    raise InputError(f"{source}: item {index} has label {label!r}; expected an integer class index")


def dataset_from_pairs(
    items: Sequence[tuple[Any, Any]] | Any,
    name: str,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
) -> ImageDataset:
    """Convert an indexable sequence of ``(image, label)`` pairs (a torchvision data set, a list) to an ImageDataset.

    Images are PIL images or arrays/tensors ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` (uint8 0-255 or
    float 0-1) and must all share one size; grey items are widened to RGB when others are colour.
    """
    limit = _check_limit(limit)
    try:
        count = len(items)
    except TypeError as exc:
        raise InputError(f"{name}: data set has no length ({_reason(exc)})") from exc
    count = count if limit is None else min(limit, count)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for i in range(count):
        try:
            image, label = items[i]
        except Exception as exc:  # a data set's __getitem__ may fail in any way (missing file, bad transform)
            raise InputError(f"{name}: item {i} is not an (image, label) pair ({_reason(exc)})") from exc
        images.append(_item_to_chw(image, i, name))
        labels.append(_item_label(label, i, name))
    if not images:
        raise InputError(f"{name}: the data set is empty")
    channels = {a.shape[0] for a in images}
    if channels == {1, 3}:
        images = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in images]
    for i, a in enumerate(images):
        if a.shape != images[0].shape:
            raise InputError(f"{name}: item {i} has shape {a.shape} but item 0 has {images[0].shape}; resize in a transform")
    class_list = [str(c) for c in classes] if classes is not None else None
    return _make_dataset(np.stack(images), np.array(labels, dtype=np.int64), class_list, name, {"format": "pairs"})


def _import_torchvision() -> Any:
    try:
        return importlib.import_module("torchvision")
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError/OSError, not ImportError
        raise InputError(
            f"torchvision is not importable ({_reason(exc)}); install the torchvision build matching torch {torch.__version__}"
        ) from exc


def torchvision_dataset(name: str, root: str | None = None, train: bool = False, **kw: Any) -> ImageDataset:
    """``torchvision.datasets.<name>(root, train=train, download=False, **kw)`` as an ImageDataset.

    Nothing is downloaded: ``root`` must already hold the data. ``limit`` keeps the first N items.
    Data sets with a ``split`` argument instead of ``train`` (SVHN, ImageNet) take ``split=...`` in ``kw``.
    """
    source = f"torchvision:{name}"
    limit = _check_limit(kw.pop("limit", None))
    if root is None:
        raise InputError(f"{source}: needs root=DIR, the folder holding the already downloaded data (downloads are off)")
    if not Path(root).is_dir():
        raise InputError(f"{source}: root folder {root} does not exist")
    datasets = _import_torchvision().datasets
    factory: Callable[..., Any] | None = getattr(datasets, name, None)
    if not isinstance(factory, type):
        known = [n for n in dir(datasets) if isinstance(getattr(datasets, n), type)]
        raise UsageError(f"torchvision has no data set {name!r}{suggest(name, known)}")
    args = _torchvision_kwargs(factory, train, kw)
    try:
        ds = factory(root, **args)
    except Exception as exc:  # torchvision reports missing/corrupt files as RuntimeError, OSError, ...
        raise InputError(f"{source}: cannot load from {root} ({_reason(exc)})") from exc
    classes = getattr(ds, "classes", None)
    return dataset_from_pairs(ds, source, classes if isinstance(classes, (list, tuple)) else None, limit)


def _torchvision_kwargs(factory: Callable[..., Any], train: bool, kw: dict[str, Any]) -> dict[str, Any]:
    """Pass ``train`` and ``download=False`` only to data sets whose signature accepts them."""
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        accepted = {"train", "download"}
    args = dict(kw)
    if "train" in accepted and "split" not in kw:
        args["train"] = train
    if "download" in accepted:
        args["download"] = False
    return args


# --------------------------------------------------------------------------------------------
# Sample images shipped inside foolbox
# --------------------------------------------------------------------------------------------


def _foolbox_data_dir() -> Path:
    """``foolbox/data`` located without importing foolbox (its import has side effects and warnings)."""
    spec = importlib.util.find_spec("foolbox")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise InputError("foolbox is not installed; its sample images come with it (pip install foolbox)")
    return Path(locations[0]) / "data"


def _foolbox_files(dataset: str) -> list[tuple[int, int, Path]]:
    """foolbox's ``<dataset>_<index>_<label>.<ext>`` files as ``(index, label, path)``, in index order."""
    folder = _foolbox_data_dir()
    found: list[tuple[int, int, Path]] = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = FOOLBOX_SAMPLE_NAME.match(path.name)
            if match and match["set"] == dataset:
                found.append((int(match["index"]), int(match["label"]), path))
    if not found:
        raise InputError(f"{folder}: no {dataset} sample images (expected {dataset}_00_<label>.png and so on)")
    return sorted(found)


def foolbox_photos(dataset: str = "imagenet") -> list[np.ndarray]:
    """foolbox's ``dataset`` sample images as float32 ``(H, W, 3)`` arrays in ``[0, 1]``, each at its stored size."""
    return [_decode_image(path, False, None) for _, _, path in _foolbox_files(dataset)]


def _foolbox_samples(dataset: str, classes: list[str] | None, name: str, size: tuple[int, int] | None = None) -> ImageDataset:
    """foolbox's ``<dataset>_<index>_<label>.<ext>`` files, in index order; label = last number."""
    folder = _foolbox_data_dir()
    found = _foolbox_files(dataset)
    grey = dataset == "mnist"
    x = np.stack([_decode_image(path, grey, size) for _, _, path in found]).transpose(0, 3, 1, 2)
    y = np.array([label for _, label, _ in found], dtype=np.int64)
    meta = {"format": "foolbox-samples", "path": str(folder), "files": [p.name for _, _, p in found]}
    return _make_dataset(x, y, classes, name, meta)


def foolbox_imagenet(size: int = FOOLBOX_IMAGENET_SIZE) -> ImageDataset:
    """foolbox's 20 labelled ImageNet samples resized to 3x224x224 in [0, 1] (labels 0-999, unnamed)."""
    checked = _check_size(size)
    return _foolbox_samples("imagenet", None, "foolbox-imagenet", checked)


def foolbox_cifar10() -> ImageDataset:
    """foolbox's 20 labelled CIFAR-10 test samples, 3x32x32 in [0, 1]."""
    return _foolbox_samples("cifar10", list(CIFAR10_CLASSES), "foolbox-cifar10")


def foolbox_cifar100() -> ImageDataset:
    """foolbox's 20 CIFAR-100 samples, 3x32x32 in [0, 1] (labels 0-99, unnamed)."""
    return _foolbox_samples("cifar100", None, "foolbox-cifar100")


def foolbox_mnist() -> ImageDataset:
    """foolbox's 20 labelled MNIST test digits, 1x28x28 in [0, 1]."""
    return _foolbox_samples("mnist", list(DIGIT_CLASSES), "foolbox-mnist")


def load_labelled_photos(folder: Path | str, size: int = 256, limit: int | None = None) -> ImageDataset:
    """Photos listed in ``folder/labels.csv`` (columns ``class_index`` and ``file``), each resized *once*
    so its shorter side is ``size`` px (bicubic) and centre-cropped to ``size x size``: ``(N, 3, size, size)``
    in [0, 1], labels = ``class_index``; class names from ``imagenet_class_index.json`` when present.

    For realistic shifts of a 224x224 classifier (the ``translation`` probe): ``size=256`` leaves 16 px
    of real scene on every side of the 224 window. ``load_path`` picks this format for any folder with
    a ``labels.csv`` (params ``size``, ``limit``), e.g. the ImageNet sample photos.
    """
    folder = Path(folder)
    listing = folder / "labels.csv"
    if not listing.is_file():
        raise InputError(f"{folder}: no labels.csv (columns class_index,file) listing the photos")
    with listing.open(newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    if not rows or not {"class_index", "file"} <= set(rows[0]):
        raise InputError(f"{listing}: expected columns class_index and file and at least one row")
    images = np.stack([_photo_square(folder / row["file"], size) for row in rows])
    labels = np.array([int(row["class_index"]) for row in rows], dtype=np.int64)
    index = folder / "imagenet_class_index.json"
    classes = None
    if index.is_file():
        table = json.loads(index.read_text())
        classes = [str(table[str(i)][1]) for i in range(len(table))]
    meta = {
        "format": "labelled-photos",
        "path": str(folder),
        "files": [row["file"] for row in rows],
        "resized_to": size,
    }
    return ImageDataset(
        torch.from_numpy(images), torch.from_numpy(labels), classes, name=str(folder), meta=meta
    )


def _photo_square(path: Path, size: int) -> np.ndarray:
    """One photo as ``(3, size, size)`` float32: shorter side resized to ``size``, then centre-cropped."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / min(im.width, im.height)
            width, height = max(size, round(im.width * scale)), max(size, round(im.height * scale))
            im = im.resize((width, height), Image.Resampling.BICUBIC)
            left, top = (width - size) // 2, (height - size) // 2
            arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    except OSError as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from exc
    return arr.transpose(2, 0, 1).copy()
