"""Reading image files: class-per-subfolder image folders (:func:`load_image_folder`), photos listed in a
``labels.csv`` (:func:`load_labelled_photos`), the single-image decoding the other readers share
(:func:`pil_to_hwc`, :func:`decode_image`) and the folder listings that tell a folder's layout
(:func:`class_dirs`, :func:`image_files`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.common import make_dataset, reason
from robustcheck.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
# PIL modes holding one grey channel; "I*" modes are 16/32-bit and need our own scaling.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"})


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
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
        raise InputError(f"{path}: not a readable image ({reason(exc)})") from exc


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


def decode_image(path: Path, grey: bool, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one file with :func:`pil_to_hwc`; any decoder failure becomes an InputError naming it."""
    try:
        with Image.open(path) as im:
            return pil_to_hwc(im, grey, size)
    except Exception as exc:  # truncated JPEG/PNG data surfaces only here, as OSError, SyntaxError, ...
        raise InputError(f"{path}: unreadable image ({reason(exc)})") from exc


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
    dirs = class_dirs(folder)
    samples = _interleave([image_files(d) for d in dirs])[:limit]
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
        x[i] = decode_image(path, grey, size)
    y = np.array([label for _, label in samples], dtype=np.int64)
    meta = {"format": "image-folder", "path": str(folder), "files": [str(p.relative_to(folder)) for p, _ in samples]}
    return make_dataset(x.transpose(0, 3, 1, 2), y, [d.name for d in dirs], name, meta)


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

