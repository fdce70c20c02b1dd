"""Converting ``(image, label)`` sequences into an :class:`~robustcheck.data.dataset.ImageDataset`:
any indexable sequence (:func:`dataset_from_pairs`) and torchvision data sets already on disk
(:func:`torchvision_dataset`; nothing is downloaded).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.common import check_limit, make_dataset, reason, to_nchw, unit_float
from robustcheck.data.formats.folders import GREY_MODES, pil_to_hwc
from robustcheck.errors import InputError, UsageError, suggest


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
    return unit_float(to_nchw(image[None], None, f"{source} item {index}"), f"{source} item {index}")[0]


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
    limit = check_limit(limit)
    try:
        count = len(items)
    except TypeError as exc:
        raise InputError(f"{name}: data set has no length ({reason(exc)})") from exc
    count = count if limit is None else min(limit, count)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for i in range(count):
        try:
            image, label = items[i]
        except Exception as exc:  # a data set's __getitem__ may fail in any way (missing file, bad transform)
            raise InputError(f"{name}: item {i} is not an (image, label) pair ({reason(exc)})") from exc
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
    return make_dataset(np.stack(images), np.array(labels, dtype=np.int64), class_list, name, {"format": "pairs"})


def _import_torchvision() -> Any:
    try:
        return importlib.import_module("torchvision")
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError/OSError, not ImportError
        raise InputError(
            f"torchvision is not importable ({reason(exc)}); install the torchvision build matching torch {torch.__version__}"
        ) from exc


def torchvision_dataset(name: str, root: str | None = None, train: bool = False, **kw: Any) -> ImageDataset:
    """``torchvision.datasets.<name>(root, train=train, download=False, **kw)`` as an ImageDataset.

    Nothing is downloaded: ``root`` must already hold the data. ``limit`` keeps the first N items.
    Data sets with a ``split`` argument instead of ``train`` (SVHN, ImageNet) take ``split=...`` in ``kw``.
    """
    source = f"torchvision:{name}"
    limit = check_limit(kw.pop("limit", None))
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
        raise InputError(f"{source}: cannot load from {root} ({reason(exc)})") from exc
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

