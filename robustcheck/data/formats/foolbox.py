"""The sample images that ship inside foolbox, read without importing foolbox: 20 labelled ImageNet,
CIFAR-10, CIFAR-100 and MNIST samples each (:func:`foolbox_imagenet`, :func:`foolbox_cifar10`,
:func:`foolbox_cifar100`, :func:`foolbox_mnist`) and the raw photos (:func:`foolbox_photos`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np

from robustcheck.data.builtin import DIGIT_CLASSES
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.common import CIFAR10_CLASSES, check_size, make_dataset
from robustcheck.data.formats.folders import decode_image
from robustcheck.errors import InputError

FOOLBOX_IMAGENET_SIZE = 224
FOOLBOX_SAMPLE_NAME = re.compile(r"^(?P<set>[A-Za-z0-9]+)_(?P<index>\d+)_(?P<label>\d+)\.(png|jpe?g)$")


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
    return [decode_image(path, False, None) for _, _, path in _foolbox_files(dataset)]


def _foolbox_samples(dataset: str, classes: list[str] | None, name: str, size: tuple[int, int] | None = None) -> ImageDataset:
    """foolbox's ``<dataset>_<index>_<label>.<ext>`` files, in index order; label = last number."""
    folder = _foolbox_data_dir()
    found = _foolbox_files(dataset)
    grey = dataset == "mnist"
    x = np.stack([decode_image(path, grey, size) for _, _, path in found]).transpose(0, 3, 1, 2)
    y = np.array([label for _, label, _ in found], dtype=np.int64)
    meta = {"format": "foolbox-samples", "path": str(folder), "files": [p.name for _, _, p in found]}
    return make_dataset(x, y, classes, name, meta)


def foolbox_imagenet(size: int = FOOLBOX_IMAGENET_SIZE) -> ImageDataset:
    """foolbox's 20 labelled ImageNet samples resized to 3x224x224 in [0, 1] (labels 0-999, unnamed)."""
    checked = check_size(size)
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

