"""Digital corruptions: contrast, elastic transform, pixelate and JPEG compression.

All functions take images ``x`` ``(B, C, H, W)`` in ``[0, 1]`` (C = 1 or 3), a ``severity`` in 0..5
(0 returns a copy of ``x``), an optional seeded ``torch.Generator`` and a ``preset`` (``"auto"``,
``"cifar"``, ``"imagenet"``; see :mod:`robustcheck.ops.corruptions.common`), and return a tensor of the same
shape in ``[0, 1]`` on ``x``'s device.

Parameters per severity 1..5 (Hendrycks & Dietterich 2019):

* ``contrast`` (factor on the deviation from each channel's mean): CIFAR 0.75, 0.5, 0.4, 0.3, 0.15;
  ImageNet 0.4, 0.3, 0.2, 0.1, 0.05.
* ``elastic_transform`` (displacement alpha, smoothing sigma, affine jitter; in pixels at the reference
  side, scaled with the image): CIFAR 32 x (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
  (0.1, 0.04, 0.05), (0.1, 0.03, 0.03); ImageNet 244 x (2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02),
  (0.07, 0.01, 0.02), (0.12, 0.01, 0.02) (the reference's 244 for 224, kept).
* ``pixelate`` (downscale factor, box filter down and up): CIFAR 0.95, 0.9, 0.85, 0.75, 0.65;
  ImageNet 0.6, 0.5, 0.4, 0.3, 0.25.
* ``jpeg_compression`` (JPEG quality): CIFAR 80, 65, 58, 50, 40; ImageNet 25, 18, 15, 10, 7.
"""

from __future__ import annotations

import torch

from robustcheck.ops.corruptions.common import (
    check_images,
    check_severity,
    level,
    pixel_scale,
    resolve_preset,
    uniform,
)
from robustcheck.ops.corruptions.filters import bilinear_sample, box_resize, gaussian_blur
from robustcheck.ops.corruptions.jpeg import jpeg_codec

CONTRAST = {"cifar": (0.75, 0.5, 0.4, 0.3, 0.15), "imagenet": (0.4, 0.3, 0.2, 0.1, 0.05)}
ELASTIC_TRANSFORM = {
    "cifar": tuple(
        (32 * a, 32 * s, 32 * j)
        for a, s, j in (
            (0, 0, 0.08),
            (0.05, 0.2, 0.07),
            (0.08, 0.06, 0.06),
            (0.1, 0.04, 0.05),
            (0.1, 0.03, 0.03),
        )
    ),
    "imagenet": tuple(
        (244 * a, 244 * s, 244 * j)
        for a, s, j in (
            (2, 0.7, 0.1),
            (2, 0.08, 0.2),
            (0.05, 0.01, 0.02),
            (0.07, 0.01, 0.02),
            (0.12, 0.01, 0.02),
        )
    ),
}
PIXELATE = {"cifar": (0.95, 0.9, 0.85, 0.75, 0.65), "imagenet": (0.6, 0.5, 0.4, 0.3, 0.25)}
JPEG_QUALITY = {"cifar": (80, 65, 58, 50, 40), "imagenet": (25, 18, 15, 10, 7)}


def contrast(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """``(x - mean) * c + mean`` per image and channel (:data:`CONTRAST`); deterministic; same shape as ``x``."""
    check_images(x, "contrast")
    if check_severity(severity, "contrast") == 0:
        return x.clone()
    factor = level(CONTRAST, severity, resolve_preset(x, preset))
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0.0, 1.0)


def _affine_source(points: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """``(B, 2, 3)`` affine maps taking ``moved`` ``(B, 3, 2)`` to ``points`` ``(3, 2)`` (x, y): the inverse of
    ``cv2.getAffineTransform(points, moved)``, i.e. where ``cv2.warpAffine`` reads each output pixel."""
    b = moved.shape[0]
    ones = torch.ones(b, 3, 1, dtype=torch.float64, device=moved.device)
    system = torch.cat([moved.double(), ones], dim=2)  # (B, 3, 3): rows [x', y', 1]
    target = points.double().expand(b, 3, 2)
    return torch.linalg.solve(system, target).transpose(1, 2)  # (B, 2, 3)


def elastic_transform(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """The reference's elastic transform (:data:`ELASTIC_TRANSFORM`): a random affine warp (three points
    around the centre moved by up to ``jitter`` px; bilinear, mirrored border), then a smooth random
    displacement field (uniform noise in [-1, 1] Gaussian-smoothed with ``sigma`` (truncate 3, reflected
    border) times ``alpha``), sampled bilinearly with reflected borders. Same shape as ``x``."""
    check_images(x, "elastic_transform")
    if check_severity(severity, "elastic_transform") == 0:
        return x.clone()
    preset = resolve_preset(x, preset)
    alpha, sigma, jitter = (v * pixel_scale(x, preset) for v in level(ELASTIC_TRANSFORM, severity, preset))
    b, _, h, w = x.shape
    device = x.device
    cy, cx, square = h // 2, w // 2, min(h, w) // 3
    points = torch.tensor(
        [[cx + square, cy + square], [cx + square, cy - square], [cx - square, cy - square]],
        dtype=torch.float64,
        device=device,
    )
    moved = points + uniform((b, 3, 2), generator, device, -jitter, jitter).double()
    source = _affine_source(points, moved)
    rows = torch.arange(h, dtype=torch.float64, device=device).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(w, dtype=torch.float64, device=device).view(1, 1, w).expand(b, h, w)
    src_x = (
        source[:, 0, 0].view(b, 1, 1) * cols
        + source[:, 0, 1].view(b, 1, 1) * rows
        + source[:, 0, 2].view(b, 1, 1)
    )
    src_y = (
        source[:, 1, 0].view(b, 1, 1) * cols
        + source[:, 1, 1].view(b, 1, 1) * rows
        + source[:, 1, 2].view(b, 1, 1)
    )
    warped = bilinear_sample(x, src_y.to(x.dtype), src_x.to(x.dtype), "mirror")
    field = uniform((b, 2, h, w), generator, device, -1.0, 1.0)
    field = gaussian_blur(field, sigma, truncate=3.0, mode="reflect") * alpha
    out = bilinear_sample(warped, rows.to(x.dtype) + field[:, 1], cols.to(x.dtype) + field[:, 0], "reflect")
    return out.clamp(0.0, 1.0)


def pixelate(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Box-filter down to ``int(side * c)`` (:data:`PIXELATE`) and box-filter back up, as Pillow's
    ``resize(..., BOX)`` twice (in float, no 8-bit rounding in between); deterministic; same shape as ``x``."""
    check_images(x, "pixelate")
    if check_severity(severity, "pixelate") == 0:
        return x.clone()
    factor = level(PIXELATE, severity, resolve_preset(x, preset))
    h, w = x.shape[-2:]
    small = box_resize(x, (max(1, int(h * factor)), max(1, int(w * factor))))
    return box_resize(small, (h, w)).clamp(0.0, 1.0)


def jpeg_compression(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Encode and decode as a baseline JPEG at :data:`JPEG_QUALITY` (:func:`~robustcheck.ops.corruptions.jpeg.jpeg_codec`);
    deterministic; same shape as ``x``."""
    check_images(x, "jpeg_compression")
    if check_severity(severity, "jpeg_compression") == 0:
        return x.clone()
    return jpeg_codec(x, level(JPEG_QUALITY, severity, resolve_preset(x, preset)))
