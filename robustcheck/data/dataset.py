"""The labelled image container every probe and runner takes: :class:`ImageDataset`, the checks behind it
(:func:`validate_arrays`), the seeded class-stratified draw behind ``--samples`` (:func:`stratified_order`)
and :func:`hwc_uint8_to_tensor`.

Images are float32 tensors ``(N, C, H, W)`` inside ``bounds`` (``[0, 1]`` by default); labels are int64 ``(N,)``.
A failed check is an :class:`~robustcheck.errors.InputError` naming the data set and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robustcheck.errors import InputError, UsageError


@dataclass
class ImageDataset:
    """Validated labelled images.

    Attributes:
        x: ``(N, C, H, W)`` float32 images inside ``bounds``.
        y: ``(N,)`` int64 labels in ``[0, len(classes))``.
        classes: class names (index = label).
        name: identifier used in results and reports.
        bounds: value range of ``x``.
        indices: int64 ``(N,)`` positions of these samples in the data set they were taken from
            (``None``: this is that data set, ``0 .. N-1``); subsets and samples keep track of them.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str] | None = None
    name: str = "data"
    bounds: tuple[float, float] = (0.0, 1.0)
    meta: dict[str, Any] = field(default_factory=dict)
    indices: torch.Tensor | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        self.x, self.y = validate_arrays(self.x, self.y, self.bounds, self.classes, self.name)
        if self.indices is not None:
            self.indices = torch.as_tensor(self.indices, dtype=torch.long).flatten()
            if len(self.indices) != len(self.y):
                raise InputError(f"{self.name}: {len(self.indices)} dataset indices for {len(self.y)} samples")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape ``(C, H, W)``."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def dataset_indices(self) -> list[int]:
        """Positions of these samples in the data set they were taken from (see ``indices``)."""
        return self.indices.tolist() if self.indices is not None else list(range(len(self)))

    def head(self, n: int | None) -> ImageDataset:
        """The first ``n`` samples (all if ``n`` is None or larger than the set)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise UsageError(f"number of samples must be positive, got {n}")
        indices = self._source_index(torch.arange(n))
        return ImageDataset(self.x[:n], self.y[:n], self.classes, self.name, self.bounds, dict(self.meta), indices=indices)

    def sample(self, n: int | None, seed: int = 0) -> ImageDataset:
        """A seeded, class-stratified sample of ``n`` samples (``None``, or ``n`` at least the size of the
        set: all of them), in class-interleaved order; see :func:`stratified_order`. Same data, ``n`` and
        ``seed``, same samples; ``indices`` records where each came from."""
        return self.subset(torch.from_numpy(stratified_order(self.y.numpy(), self._sample_size(n), seed)))

    def _sample_size(self, n: int | None) -> int:
        if n is None:
            return len(self)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise UsageError(f"number of samples must be a positive integer or None (all), got {n!r}")
        return min(int(n), len(self))

    def subset(self, index: torch.Tensor) -> ImageDataset:
        """The samples at ``index`` (int64 ``(M,)``), in that order (e.g. a shard of a run)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageDataset(
            self.x[index], self.y[index], self.classes, self.name, self.bounds, dict(self.meta), indices=self._source_index(index)
        )

    def _source_index(self, index: torch.Tensor) -> torch.Tensor:
        """``indices`` of the samples at ``index`` of this set."""
        return self.indices[index] if self.indices is not None else index.clone()


def stratified_order(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions of a seeded, class-stratified sample of ``n`` of ``labels``, classes interleaved.

    Each class gets a share of ``n`` proportional to its size, rounded by largest remainders (ties
    broken at random); its members are drawn at random without replacement. The result is ordered so
    that every class is spread evenly over it (member ``j`` of a class of ``q`` sits at ``(j + 0.5) / q``),
    so any head or contiguous shard of it is balanced too. Deterministic for given
    ``(labels, n, seed)``; independent of the global random state.
    """
    labels = np.asarray(labels)
    total = len(labels)
    n = min(int(n), total)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed % 2**64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = n * counts // total  # integers: exact
    short = n - int(quota.sum())
    if short:
        remainder = n * counts % total
        order = np.lexsort((rng.permutation(len(classes)), -remainder))  # largest remainder first
        quota[order[:short]] += 1
    picked, keys = [], []
    for k in rng.permutation(len(classes)):  # seeded class order breaks ties in the interleaving
        if quota[k]:
            members = np.flatnonzero(inverse == k)
            picked.append(rng.permutation(members)[: quota[k]])
            keys.append((np.arange(quota[k]) + 0.5) / quota[k])
    chosen, key = np.concatenate(picked), np.concatenate(keys)
    return chosen[np.argsort(key, kind="stable")].astype(np.int64)


def validate_arrays(
    x: Any, y: Any, bounds: tuple[float, float] = (0.0, 1.0), classes: Sequence[str] | None = None, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check images and labels; return ``(float32 x, int64 y)`` or raise :class:`InputError` naming the problem."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise InputError(f"{name}: images have unsupported dtype {x.dtype}")
    if not x.is_floating_point():
        raise InputError(f"{name}: images are integers ({x.dtype}); convert to float in {list(bounds)} first")
    if x.ndim != 4:
        raise InputError(f"{name}: images must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4):
        raise InputError(f"{name}: images have {x.shape[1]} channels; expected channels-first (N, C, H, W) with C in 1, 3, 4")
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(f"{name}: labels must have shape ({len(x)},), got {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise InputError(f"{name}: labels must be integers, got non-integral values")
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: images contain NaN or Inf values")
    low, high = bounds
    if x.numel() and (x.min() < low or x.max() > high):
        raise InputError(f"{name}: image values lie in [{x.min().item():.4g}, {x.max().item():.4g}], outside bounds [{low:g}, {high:g}]")
    y = y.long()
    if len(y) and y.min() < 0:
        raise InputError(f"{name}: labels must be non-negative, got {y.min().item()}")
    if classes is not None and len(y) and y.max() >= len(classes):
        raise InputError(f"{name}: label {y.max().item()} is out of range for {len(classes)} classes")
    return x.float().contiguous(), y


def hwc_uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W[, C])`` uint8 -> ``(N, C, H, W)`` float32 in ``[0, 1]``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255.0
