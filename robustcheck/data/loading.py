"""Resolving data specs into an :class:`~robustcheck.data.dataset.ImageDataset`: :func:`load_data` (registry
names, paths, ``torchvision:NAME``) and :func:`load_path`, which recognises a file or folder's format and
hands it to its reader in :mod:`robustcheck.data.formats`.

Every failure is an :class:`~robustcheck.errors.InputError` (bad file) or
:class:`~robustcheck.errors.UsageError` (bad parameter) whose one-line message names the file and the
problem; errors from numpy, gzip, pickle or PIL never escape raw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustcheck import registry
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.cifar import (
    CIFAR_BATCH_NAME,
    CIFAR_META,
    CIFAR_TEST_FILES,
    CIFAR_TRAIN_FILES,
    load_cifar_batches,
)
from robustcheck.data.formats.common import check_layout, check_limit, check_size, check_split, reason
from robustcheck.data.formats.corrupted import is_corruption_folder, load_corruption_folder
from robustcheck.data.formats.folders import (
    class_dirs,
    image_files,
    load_image_folder,
    load_labelled_photos,
)
from robustcheck.data.formats.idx import IDX_IMAGES_NAME, idx_pair_for_file, idx_pair_in_folder, load_idx
from robustcheck.data.formats.npz import load_npz
from robustcheck.data.formats.torchvision import torchvision_dataset
from robustcheck.errors import InputError, UnknownPluginError, UsageError
from robustcheck.params import parse_spec, resolve_params


def load_data(spec: str | ImageDataset, **params: Any) -> ImageDataset:
    """Resolve a data spec: a registry name (``digits``, ``digits-rgb32:split=train``), a path
    (``.npz``, image folder, MNIST idx folder/file, CIFAR-10 batch folder) or ``torchvision:NAME:root=DIR``."""
    if isinstance(spec, ImageDataset):
        return spec
    name, spec_params = parse_spec(spec)
    params = {**spec_params, **params}
    if name in registry.names("data"):
        factory = registry.get("data", name).obj
        try:
            return factory(**params)
        except TypeError as exc:
            raise UsageError(f"data source {name!r}: {exc}") from exc
    if name.startswith("torchvision:"):
        return torchvision_dataset(name.split(":", 1)[1], **params)
    if Path(name).exists() or any(ch in name for ch in "/\\."):  # a path, even a missing one: say so
        return load_path(Path(name), **params)
    raise UnknownPluginError("data source", name, registry.names("data"))



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
    * CIFAR-10-C / ImageNet-C: a folder with ``labels.npy`` and ``<corruption>.npy`` files (params
      ``clean`` = a data source with the clean images unless ``clean.npy`` lies beside them, ``limit``);
      see :mod:`robustcheck.data.formats.corrupted`.

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
        raise InputError(f"{path}: cannot read ({reason(exc)})") from exc


def _load_file(path: Path, params: dict[str, Any]) -> ImageDataset:
    name = path.name
    if path.suffix.lower() == ".npz":
        p = resolve_params(f"npz data {path}", {"limit": None, "layout": None}, params)
        return load_npz(path, limit=check_limit(p["limit"]), layout=check_layout(p["layout"]))
    if "idx3-ubyte" in name or "idx1-ubyte" in name:
        p = resolve_params(f"MNIST idx data {path}", {"limit": None}, params)
        images, labels = idx_pair_for_file(path)
        return load_idx(images, labels, limit=check_limit(p["limit"]), name=str(path))
    if CIFAR_BATCH_NAME.match(name):
        p = resolve_params(f"CIFAR-10 batch {path}", {"limit": None}, params)
        return load_cifar_batches([path], path.parent / CIFAR_META, limit=check_limit(p["limit"]), name=str(path))
    raise InputError(
        f"{path}: unsupported data file; expected a .npz archive, an MNIST idx file (*-idx3-ubyte[.gz]), "
        "a CIFAR-10 batch, or a folder"
    )


def _load_folder(folder: Path, params: dict[str, Any]) -> ImageDataset:
    if is_corruption_folder(folder):
        p = resolve_params(f"corruption data {folder}", {"limit": None, "clean": None}, params)
        clean = load_data(str(p["clean"])) if p["clean"] is not None else None
        return load_corruption_folder(folder, clean=clean, limit=check_limit(p["limit"]))
    if (folder / "labels.csv").is_file():
        p = resolve_params(f"labelled photos {folder}", {"size": 256, "limit": None}, params)
        return load_labelled_photos(folder, size=int(p["size"]), limit=check_limit(p["limit"]))
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
    if any(image_files(sub) for sub in class_dirs(folder)):
        return "images"
    if image_files(folder):
        raise InputError(f"{folder}: images lie directly in the folder; expected one subfolder of images per class")
    return None


def _load_known_folder(folder: Path, kind: str, params: dict[str, Any], name: str) -> ImageDataset:
    if kind == "cifar":
        p = resolve_params(f"CIFAR-10 data {name}", {"limit": None, "split": "test"}, params)
        split = check_split(p["split"])
        files = [folder / f for f in (CIFAR_TEST_FILES if split == "test" else CIFAR_TRAIN_FILES)]
        return load_cifar_batches(files, folder / CIFAR_META, limit=check_limit(p["limit"]), name=name)
    if kind == "idx":
        p = resolve_params(f"MNIST idx data {name}", {"limit": None, "split": "test"}, params)
        images, labels = idx_pair_in_folder(folder, check_split(p["split"]))
        return load_idx(images, labels, limit=check_limit(p["limit"]), name=name)
    p = resolve_params(f"image folder {name}", {"limit": None, "size": None}, params)
    return load_image_folder(folder, size=check_size(p["size"]), limit=check_limit(p["limit"]), name=name)

