"""Pre-generated corruption sets in the CIFAR-10-C / ImageNet-C layout: :class:`CorruptedDataset` and
:func:`load_corruption_folder`.

The layout (Hendrycks & Dietterich 2019) is a folder of ``<corruption>.npy`` files, each uint8
``(5 * N, H, W, C)`` (or ``(5 * N, H, W)``): the N test images at severity 1, then at severity 2, ... 5,
and ``labels.npy`` with the labels (``(5 * N,)`` repeated per severity, as published, or ``(N,)``).
Corruption names are those of :data:`robustcheck.ops.corruptions.CORRUPTION_NAMES`; other ``.npy`` files
(e.g. the extra ``speckle_noise``, ``spatter``) are listed in ``meta["ignored"]`` and not used.

The published folders hold no clean images, which the clean accuracy (and the probe's score) needs:
put them beside the files as ``clean.npy`` (uint8 ``(N, H, W, C)``, same order) or name any data source
with ``clean=`` (e.g. ``--data "CIFAR-10-C:clean=cifar-10-batches-py"``); their labels must match.

The ``.npy`` files are memory-mapped: only the images a run uses are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.common import reason
from robustcheck.errors import InputError, UsageError
from robustcheck.ops.corruptions import CORRUPTION_NAMES

LABELS_FILE = "labels.npy"
CLEAN_FILE = "clean.npy"
SEVERITY_COUNT = 5


@dataclass
class CorruptedDataset(ImageDataset):
    """Clean images ``x`` with pre-generated corrupted copies of each of them.

    Attributes:
        variants: corruption name -> uint8 array ``(5 * source_count, H, W, C)`` (or ``(..., H, W)``),
            severity ``s`` of source image ``i`` at row ``(s - 1) * source_count + i`` (memory-mapped).
        rows: int64 ``(N,)``: the source image of each sample (follows heads, samples and subsets).
        source_count: images per severity block in the variant files.
    """

    variants: dict[str, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray | None = None
    source_count: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rows = (
            np.arange(len(self.y), dtype=np.int64)
            if self.rows is None
            else np.asarray(self.rows, dtype=np.int64)
        )
        if len(self.rows) != len(self.y):
            raise InputError(f"{self.name}: {len(self.rows)} variant rows for {len(self.y)} samples")

    @property
    def corruptions(self) -> tuple[str, ...]:
        """Names of the corruptions this data carries, in the standard order."""
        return tuple(name for name in CORRUPTION_NAMES if name in self.variants)

    def corrupted(self, name: str, severity: int, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The pre-generated images of samples ``index`` (all: ``None``) for corruption ``name`` at
        ``severity`` (1..5): float32 ``(M, C, H, W)`` inside ``bounds``."""
        if name not in self.variants:
            raise UsageError(
                f"{self.name}: carries no {name!r} images (it has: {', '.join(self.corruptions) or 'none'})"
            )
        if not 1 <= int(severity) <= SEVERITY_COUNT:
            raise UsageError(f"severity must be 1..{SEVERITY_COUNT}, got {severity!r}")
        assert self.rows is not None
        rows = (
            self.rows
            if index is None
            else self.rows[index.numpy() if isinstance(index, torch.Tensor) else index]
        )
        block = np.asarray(self.variants[name][(int(severity) - 1) * self.source_count + np.atleast_1d(rows)])
        if block.ndim == 3:
            block = block[..., None]
        images = torch.from_numpy(np.ascontiguousarray(block.transpose(0, 3, 1, 2))).float() / 255.0
        low, high = self.bounds
        return images if (low, high) == (0.0, 1.0) else low + images * (high - low)

    def head(self, n: int | None) -> CorruptedDataset:
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise UsageError(f"number of samples must be positive, got {n}")
        return self.subset(torch.arange(n))

    def sample(self, n: int | None, seed: int = 0) -> CorruptedDataset:
        return super().sample(n, seed)  # type: ignore[return-value]  # ImageDataset.sample calls our subset

    def subset(self, index: torch.Tensor) -> CorruptedDataset:
        """The samples at ``index`` (int64 ``(M,)``) with their corrupted copies."""
        index = torch.as_tensor(index, dtype=torch.long)
        assert self.rows is not None
        return CorruptedDataset(
            self.x[index],
            self.y[index],
            self.classes,
            self.name,
            self.bounds,
            dict(self.meta),
            variants=self.variants,
            rows=self.rows[index.numpy()],
            source_count=self.source_count,
            indices=self._source_index(index),
        )


def is_corruption_folder(folder: Path) -> bool:
    """Whether ``folder`` has ``labels.npy`` and at least one ``<corruption>.npy``."""
    return (folder / LABELS_FILE).is_file() and any(
        (folder / f"{name}.npy").is_file() for name in CORRUPTION_NAMES
    )


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({reason(exc)})") from exc


def _source_labels(labels: np.ndarray, rows: int, source: str) -> np.ndarray:
    """The labels of the N source images from ``labels.npy`` of ``5 N`` (one block per severity) or ``N`` entries."""
    if len(labels) * SEVERITY_COUNT == rows:
        return labels
    if len(labels) == rows:
        n = rows // SEVERITY_COUNT
        blocks = labels.reshape(SEVERITY_COUNT, n)
        if not (blocks == blocks[0]).all():
            raise InputError(
                f"{source}: the 5 severity blocks of labels.npy differ; expected the same labels repeated"
            )
        return blocks[0]
    raise InputError(
        f"{source}: labels.npy has {len(labels)} entries but the corruption files have {rows} images "
        f"(expected {rows} or {rows // SEVERITY_COUNT})"
    )


def _variant(path: Path, rows: int | None) -> np.ndarray:
    array = _load_npy(path, mmap=True)
    if (
        array.dtype != np.uint8
        or array.ndim not in (3, 4)
        or (array.ndim == 4 and array.shape[3] not in (1, 3))
    ):
        raise InputError(
            f"{path}: expected uint8 images (5 * N, H, W, C) with C = 1 or 3, got {array.dtype} {array.shape}"
        )
    if len(array) % SEVERITY_COUNT:
        raise InputError(f"{path}: {len(array)} images is not 5 severities of N images")
    if rows is not None and len(array) != rows:
        raise InputError(f"{path}: {len(array)} images, but the other corruption files have {rows}")
    return array


def load_corruption_folder(
    folder: Path, clean: ImageDataset | None = None, limit: int | None = None, name: str | None = None
) -> CorruptedDataset:
    """Read a CIFAR-10-C / ImageNet-C folder (see the module docstring); ``clean`` (or ``clean.npy`` in the
    folder) gives the clean images; ``limit`` keeps the first N source images."""
    source = name or str(folder)
    variants: dict[str, np.ndarray] = {}
    rows: int | None = None
    for corruption in CORRUPTION_NAMES:
        path = folder / f"{corruption}.npy"
        if path.is_file():
            variants[corruption] = _variant(path, rows)
            rows = len(variants[corruption])
    if rows is None:
        raise InputError(
            f"{source}: no <corruption>.npy files (expected names: {', '.join(CORRUPTION_NAMES)})"
        )
    known = {f"{n}.npy" for n in CORRUPTION_NAMES} | {LABELS_FILE, CLEAN_FILE}
    ignored = sorted(p.name for p in folder.glob("*.npy") if p.name not in known)
    labels = _source_labels(_labels_array(folder / LABELS_FILE), rows, source)
    count = len(labels)
    shape = next(iter(variants.values())).shape[1:]
    clean = _clean_images(folder, clean, labels, shape, source)
    keep = count if limit is None else min(limit, count)
    return CorruptedDataset(
        clean.x[:keep],
        torch.from_numpy(labels[:keep].copy()),
        clean.classes,
        source,
        clean.bounds,
        {"format": "corruptions-npy", "path": str(folder), "corruptions": list(variants), "ignored": ignored},
        variants=variants,
        source_count=count,
    )


def _labels_array(path: Path) -> np.ndarray:
    labels = _load_npy(path, mmap=False)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be integers of shape (N,), got {labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise InputError(f"{path}: labels must be non-negative, got {labels.min()}")
    return labels.astype(np.int64)


def _clean_images(
    folder: Path, clean: ImageDataset | None, labels: np.ndarray, shape: tuple[int, ...], source: str
) -> ImageDataset:
    """The clean images matching the corruption files: ``clean`` or ``clean.npy``, checked against them."""
    if clean is None:
        path = folder / CLEAN_FILE
        if not path.is_file():
            raise InputError(
                f"{source}: no clean images: put them in {CLEAN_FILE} (uint8 (N, H, W, C), same order as the "
                "corruption files) or name them with clean=SOURCE (e.g. clean=path/to/cifar-10-batches-py)"
            )
        array = _load_npy(path, mmap=False)
        if array.dtype != np.uint8 or array.shape[1:] != shape or len(array) != len(labels):
            raise InputError(
                f"{path}: expected uint8 {(len(labels), *shape)} like the corruption files, got {array.dtype} {array.shape}"
            )
        if array.ndim == 3:
            array = array[..., None]
        x = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).float() / 255.0
        return ImageDataset(x, torch.from_numpy(labels.copy()), None, name=source)
    expected = (shape[2] if len(shape) == 3 else 1, shape[0], shape[1])
    if tuple(clean.shape) != expected:
        raise InputError(
            f"{source}: clean images {clean.name!r} have shape {tuple(clean.shape)}, the corruption files {expected}"
        )
    if len(clean) < len(labels):
        raise InputError(
            f"{source}: clean images {clean.name!r} hold {len(clean)} images, the corruption files {len(labels)}"
        )
    clean = clean.head(len(labels))
    if not np.array_equal(clean.y.numpy(), labels):
        raise InputError(
            f"{source}: the labels of clean images {clean.name!r} differ from labels.npy (same images, same order?)"
        )
    return clean
