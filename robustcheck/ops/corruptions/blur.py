"""Blur corruptions: defocus, glass, motion and zoom blur.

All functions take images ``x`` ``(B, C, H, W)`` in ``[0, 1]`` (C = 1 or 3), a ``severity`` in 0..5
(0 returns a copy of ``x``), an optional seeded ``torch.Generator`` and a ``preset`` (``"auto"``,
``"cifar"``, ``"imagenet"``; see :mod:`robustcheck.ops.corruptions.common`), and return a tensor of the same
shape in ``[0, 1]`` on ``x``'s device. Lengths in pixels (radii, sigmas, displacements) are multiplied by the
image's pixel scale (``min(H, W)`` / 32 or 224), so 32 x 32 (CIFAR) and 224 x 224 (ImageNet) images get the
published parameters exactly.

Parameters per severity 1..5 (Hendrycks & Dietterich 2019):

* ``defocus_blur`` (disk radius, anti-aliasing sigma): CIFAR (0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2),
  (1.5, 0.1); ImageNet (3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5).
* ``glass_blur`` (Gaussian sigma, max pixel displacement, iterations): CIFAR (0.05, 1, 1), (0.25, 1, 1),
  (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2); ImageNet (0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2).
* ``motion_blur`` (radius, sigma; random angle in [-45, 45] degrees per image): CIFAR (6, 1), (6, 1.5),
  (6, 2), (8, 2), (9, 2.5); ImageNet (10, 3), (15, 5), (15, 8), (15, 12), (20, 15).
* ``zoom_blur`` (zoom factors averaged with the image, ``numpy.arange(1, stop, step)``): CIFAR stops 1.06,
  1.11, 1.16, 1.21, 1.26 with step 0.01; ImageNet (1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02),
  (1.31, 0.03).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from robustcheck.ops.corruptions.common import (
    check_images,
    check_severity,
    integers,
    level,
    pixel_scale,
    resolve_preset,
    uniform,
)
from robustcheck.ops.corruptions.filters import (
    clipped_zoom,
    directional_blur,
    filter2d,
    gaussian_blur,
    separable,
)

DEFOCUS_BLUR = {
    "cifar": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "imagenet": ((3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5)),
}
GLASS_BLUR = {
    "cifar": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "imagenet": ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
}
MOTION_BLUR = {
    "cifar": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),
    "imagenet": ((10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0)),
}
#: ``numpy.arange(1, stop, step)`` of zoom factors (floating-point arange: 1.06 and 1.11 are included).
ZOOM_BLUR = {
    "cifar": ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
    "imagenet": ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
}
#: Range of the random motion-blur angle (degrees).
MOTION_ANGLES = (-45.0, 45.0)


# -- defocus ---------------------------------------------------------------------------------------
def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's anti-aliased disk: a binary disk of ``radius`` on a grid of at least 17 x 17,
    normalised, then Gaussian-blurred (3 x 3, or 5 x 5 for radii above 8; sigma ``alias_blur``; mirrored
    border) as ``cv2.GaussianBlur``; rows and columns that stay zero are cut away. float64 ``(k, k)``."""
    half, ksize = (8, 3) if radius <= 8 else (math.ceil(radius), 5)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) <= radius**2).double()
    disk = disk / disk.sum()
    g = torch.arange(-(ksize // 2), ksize // 2 + 1, dtype=torch.float64)
    g = torch.exp(-(g**2) / (2 * alias_blur**2)) if alias_blur > 0 else (g == 0).double()
    g = g / g.sum()
    kernel = separable(disk.view(1, 1, *disk.shape), g, g, "mirror")[0, 0]
    keep_rows = torch.nonzero(kernel.abs().sum(dim=1) > 0).flatten()
    reach = int(max(half - keep_rows.min().item(), keep_rows.max().item() - half))
    return kernel[half - reach : half + reach + 1, half - reach : half + reach + 1]


def defocus_blur(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Convolve with the anti-aliased disk of :data:`DEFOCUS_BLUR` (mirrored border, as ``cv2.filter2D``).
    Deterministic (``generator`` unused); same shape as ``x``."""
    check_images(x, "defocus_blur")
    if check_severity(severity, "defocus_blur") == 0:
        return x.clone()
    preset = resolve_preset(x, preset)
    radius, alias = level(DEFOCUS_BLUR, severity, preset)
    scale = pixel_scale(x, preset)
    return filter2d(x, disk_kernel(radius * scale, alias * scale), "mirror").clamp(0.0, 1.0)


# -- glass -----------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _swap_schedule(height: int, width: int, delta: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Flat pixel positions of the reference's swap loop, grouped into waves that can swap in parallel.

    The reference visits rows ``h = H - delta .. delta + 1`` (descending) and in each row the columns
    ``w = W - delta .. delta + 1`` (descending), swapping each pixel with one at most ``delta`` away. Two
    swaps interact only if they lie fewer than ``2 delta`` columns (and rows) apart, so giving the swap at
    row index ``i`` and column index ``j`` of that loop the wave ``2 delta i + j`` keeps every interacting
    pair in the reference's order while each wave holds only non-interacting swaps.
    Returns the positions sorted by wave and the wave boundaries.
    """
    rows = torch.arange(height - delta, delta, -1)
    cols = torch.arange(width - delta, delta, -1)
    if not len(rows) or not len(cols):
        return torch.zeros(0, dtype=torch.long), (0,)
    wave = 2 * delta * torch.arange(len(rows)).view(-1, 1) + torch.arange(len(cols)).view(1, -1)
    positions = rows.view(-1, 1) * width + cols.view(1, -1)
    order = torch.argsort(wave.flatten(), stable=True)
    counts = torch.unique_consecutive(wave.flatten()[order], return_counts=True)[1]
    bounds = (0, *torch.cumsum(counts, 0).tolist())
    return positions.flatten()[order], bounds


def local_shuffle(
    height: int,
    width: int,
    batch: int,
    delta: int,
    iterations: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """int64 ``(batch, H * W)``: for each output pixel, the flat source pixel after the reference's local
    pixel swaps (``iterations`` passes; offsets uniform in ``[-delta, delta - 1]`` per axis, numpy's
    ``randint(-delta, delta)``)."""
    index = torch.arange(height * width, device=device).repeat(batch, 1)
    positions, bounds = _swap_schedule(height, width, delta)
    positions = positions.to(device)
    for _ in range(iterations):
        if not len(positions):
            break
        dy, dx = integers((2, batch, len(positions)), -delta, delta, generator, device)
        targets = positions.view(1, -1) + dy * width + dx
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            here, there = positions[start:stop], targets[:, start:stop]
            mine = index[:, here]
            theirs = index.gather(1, there)
            index[:, here] = theirs
            index.scatter_(1, there, mine)
    return index


def glass_blur(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Gaussian blur, 8-bit truncation, local pixel swaps (:func:`local_shuffle`), Gaussian blur again
    (:data:`GLASS_BLUR`); the same pixel permutation for every channel. Same shape as ``x``."""
    check_images(x, "glass_blur")
    if check_severity(severity, "glass_blur") == 0:
        return x.clone()
    preset = resolve_preset(x, preset)
    sigma, delta, iterations = level(GLASS_BLUR, severity, preset)
    scale = pixel_scale(x, preset)
    sigma, delta = sigma * scale, max(1, round(delta * scale))
    b, c, h, w = x.shape
    blurred = torch.floor(gaussian_blur(x, sigma).clamp(0.0, 1.0) * 255.0) / 255.0  # np.uint8(...) truncates
    index = local_shuffle(h, w, b, delta, iterations, generator, x.device)
    shuffled = blurred.reshape(b, c, h * w).gather(2, index.view(b, 1, -1).expand(b, c, -1)).view(b, c, h, w)
    return gaussian_blur(shuffled, sigma).clamp(0.0, 1.0)


# -- motion ----------------------------------------------------------------------------------------
def motion_blur(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """ImageMagick's motion blur (:func:`~robustcheck.ops.corruptions.filters.directional_blur`) with
    :data:`MOTION_BLUR` radius and sigma, one random direction per image; same shape as ``x``."""
    check_images(x, "motion_blur")
    if check_severity(severity, "motion_blur") == 0:
        return x.clone()
    preset = resolve_preset(x, preset)
    radius, sigma = level(MOTION_BLUR, severity, preset)
    scale = pixel_scale(x, preset)
    angles = uniform((x.shape[0],), generator, x.device, *MOTION_ANGLES)
    return directional_blur(x, radius * scale, sigma * scale, angles).clamp(0.0, 1.0)


# -- zoom ------------------------------------------------------------------------------------------
def zoom_factors(severity: int, preset: str) -> list[float]:
    """The zoom factors of :data:`ZOOM_BLUR` at ``severity`` (``numpy.arange`` as the reference)."""
    stop, step = level(ZOOM_BLUR, severity, preset)
    return [float(z) for z in np.arange(1.0, stop, step)]


def zoom_blur(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Mean of ``x`` and its centre zooms by each factor of :func:`zoom_factors` (radial blur); deterministic
    (``generator`` unused); same shape as ``x``."""
    check_images(x, "zoom_blur")
    if check_severity(severity, "zoom_blur") == 0:
        return x.clone()
    factors = zoom_factors(severity, resolve_preset(x, preset))
    total = x.clone()
    for factor in factors:
        total = total + clipped_zoom(x, factor)
    return (total / (len(factors) + 1)).clamp(0.0, 1.0)
