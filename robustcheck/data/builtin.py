"""The built-in digit data sources, from scikit-learn's bundled 1,797 handwritten digits: :func:`digits`
(grey ``1 x 8 x 8``) and :func:`digits_rgb32` (upsampled to ``3 x 32 x 32``, seeded colours per image).

Both use one fixed stratified ``train`` / ``test`` split (``all``: every image). They are registered as
``digits`` and ``digits-rgb32`` in the ``robustcheck.data`` registry group, which
:func:`~robustcheck.data.loading.load_data` resolves (``digits-rgb32:split=train``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import UsageError

DIGIT_CLASSES = [str(i) for i in range(10)]
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of scikit-learn's bundled 1,797 digits: 8x8 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise UsageError(f"split must be 'train', 'test' or 'all', got {split!r}")
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    if split == "all":
        return x, y
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


def digits(split: str = "test") -> ImageDataset:
    """scikit-learn's bundled handwritten digits, 1x8x8 in [0, 1] (test split: 450 images)."""
    x, y = _digits_split(split)
    return ImageDataset(torch.from_numpy(x), torch.from_numpy(y), DIGIT_CLASSES, name="digits" if split == "test" else f"digits:{split}")


def colorize(gray: torch.Tensor, seed: int, min_contrast: float = 0.5) -> torch.Tensor:
    """Paint grey images ``(N, 1, H, W)`` with a seeded foreground and background colour per image.

    Colours are drawn until foreground and background luminance differ by ``min_contrast``, so the
    digit stays legible while colour carries no label information.
    """
    rng = np.random.default_rng(seed)
    n = len(gray)
    fg, bg = rng.uniform(size=(n, 3)), rng.uniform(size=(n, 3))
    luma = np.array([0.299, 0.587, 0.114])
    bad = np.abs((fg - bg) @ luma) < min_contrast
    while bad.any():
        fg[bad], bg[bad] = rng.uniform(size=(bad.sum(), 3)), rng.uniform(size=(bad.sum(), 3))
        bad = np.abs((fg - bg) @ luma) < min_contrast
    fg_t = torch.from_numpy(fg).float().view(n, 3, 1, 1)
    bg_t = torch.from_numpy(bg).float().view(n, 3, 1, 1)
    return (bg_t * (1 - gray) + fg_t * gray).clamp(0, 1)


def digits_rgb32(split: str = "test") -> ImageDataset:
    """The bundled digits upsampled to 3x32x32 with seeded foreground/background colours per image."""
    x, y = _digits_split(split)
    gray = F.interpolate(torch.from_numpy(x), size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    seed = {"train": 1, "test": 2, "all": 3}[split]
    name = "digits-rgb32" if split == "test" else f"digits-rgb32:{split}"
    return ImageDataset(colorize(gray, seed), torch.from_numpy(y), DIGIT_CLASSES, name=name)

