"""What the data-format readers share: argument checks (:func:`check_limit`, :func:`check_split`,
:func:`check_layout`, :func:`check_size`), array conversion (:func:`unit_float`, :func:`to_nchw`,
:func:`check_labels`, :func:`make_dataset`) and error-message helpers (:func:`reason`, :func:`read_start`,
:func:`describe_start`).

Failed checks raise :class:`~robustcheck.errors.InputError` (bad file) or
:class:`~robustcheck.errors.UsageError` (bad parameter) with a one-line message naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import InputError, UsageError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CHANNEL_COUNTS = (1, 3, 4)
LAYOUTS = ("nchw", "nhwc")
SPLITS = ("test", "train")


def reason(exc: BaseException) -> str:
    """One-line description of a library exception, for the tail of an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def read_start(path: Path, n: int = 64) -> bytes:
    """The first ``n`` bytes of a file (for sniffing its real type)."""
    with path.open("rb") as f:
        return f.read(n)


def describe_start(head: bytes) -> str:
    """Say what a file that is not the expected format looks like, e.g. an HTML page saved by mistake."""
    if not head:
        return "the file is empty"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "it is an HTML/XML page, not data (an error or login page saved by a download?)"
    return f"it starts with {head[:16]!r}"


def check_limit(limit: Any) -> int | None:
    """``None`` or a positive int; anything else is a :class:`UsageError`."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise UsageError(f"limit must be a positive integer, got {limit!r}")
    return limit


def check_split(split: Any) -> str:
    if split not in SPLITS:
        raise UsageError(f"split must be 'test' or 'train', got {split!r}")
    return split


def check_layout(layout: Any) -> str | None:
    if layout is None:
        return None
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise UsageError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    return layout.lower()


def check_size(size: Any) -> tuple[int, int] | None:
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


def unit_float(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 ``0..255`` -> float32 ``/ 255``; floats -> float32 as they are (range checked later)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind == "f":
        return x.astype(np.float32)
    raise InputError(f"{source}: images have dtype {x.dtype}; expected uint8 (0-255) or float (0-1)")


def check_labels(y: np.ndarray, n_images: int, source: str) -> np.ndarray:
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


def make_dataset(
    x: np.ndarray, y: np.ndarray, classes: list[str] | None, name: str, meta: dict[str, Any]
) -> ImageDataset:
    """Wrap checked float32 ``(N, C, H, W)`` images and int64 labels; ImageDataset checks range and NaN."""
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)), classes, name=name, meta=meta
    )
