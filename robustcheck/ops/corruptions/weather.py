"""Weather corruptions: snow, frost, fog and brightness.

All functions take images ``x`` ``(B, C, H, W)`` in ``[0, 1]`` (C = 1 or 3), a ``severity`` in 0..5
(0 returns a copy of ``x``), an optional seeded ``torch.Generator`` and a ``preset`` (``"auto"``,
``"cifar"``, ``"imagenet"``; see :mod:`robustcheck.ops.corruptions.common`), and return a tensor of the same
shape in ``[0, 1]`` on ``x``'s device.

Parameters per severity 1..5 (Hendrycks & Dietterich 2019):

* ``snow`` (flake mean, flake std, flake zoom, threshold, motion radius, motion sigma, image weight):
  CIFAR (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
  (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8); ImageNet (0.1, 0.3, 3, 0.5, 10, 4,
  0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
  (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55). Zoom, radius and sigma scale with the image (pixel scale).
* ``frost`` (image weight, ice weight): CIFAR (1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45);
  ImageNet (1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75). The ice layer is procedural
  (:func:`~robustcheck.ops.corruptions.textures.frost_texture`), not the reference's photographs.
* ``fog`` (fog weight, plasma decay): CIFAR (0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75);
  ImageNet (1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4).
* ``brightness`` (added to the HSV value channel): CIFAR 0.05, 0.1, 0.15, 0.2, 0.3; ImageNet 0.1, 0.2,
  0.3, 0.4, 0.5.
"""

from __future__ import annotations

import torch

from robustcheck.ops.corruptions.common import (
    check_images,
    check_severity,
    grey,
    level,
    normal,
    pixel_scale,
    resolve_preset,
    uniform,
)
from robustcheck.ops.corruptions.filters import clipped_zoom, directional_blur
from robustcheck.ops.corruptions.textures import frost_texture, next_power_of_two, plasma_fractal

SNOW = {
    "cifar": (
        (0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "imagenet": (
        (0.1, 0.3, 3.0, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
}
FROST = {
    "cifar": ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "imagenet": ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
}
FOG = {
    "cifar": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),
    "imagenet": ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
}
BRIGHTNESS = {"cifar": (0.05, 0.1, 0.15, 0.2, 0.3), "imagenet": (0.1, 0.2, 0.3, 0.4, 0.5)}
#: Range of the random direction in which snow falls (degrees).
SNOW_ANGLES = (-135.0, -45.0)


def snow(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Falling snow (:data:`SNOW`): a Gaussian noise layer, zoomed (bigger flakes), thresholded, cut to
    8 bits and motion-blurred in a random downward direction, added twice (as is and turned by 180
    degrees) to the image, which is first washed out towards ``1.5 * luma + 0.5``. Same shape as ``x``."""
    check_images(x, "snow")
    if check_severity(severity, "snow") == 0:
        return x.clone()
    preset = resolve_preset(x, preset)
    mean, std, zoom, threshold, radius, sigma, keep = level(SNOW, severity, preset)
    scale = pixel_scale(x, preset)
    b, _, h, w = x.shape
    flakes = clipped_zoom(normal((b, 1, h, w), generator, x.device, mean, std), max(1.0, zoom * scale))
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    flakes = torch.floor(flakes.clamp(0.0, 1.0) * 255.0) / 255.0  # the reference stores an 8-bit image
    angles = uniform((b,), generator, x.device, *SNOW_ANGLES)
    flakes = directional_blur(flakes, radius * scale, sigma * scale, angles)
    flakes = torch.round(flakes * 255.0) / 255.0
    washed = keep * x + (1 - keep) * torch.maximum(x, grey(x) * 1.5 + 0.5)
    return (washed + flakes + flakes.flip(-1, -2)).clamp(0.0, 1.0)


def frost(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """``clip(a * x + b * ice)`` (:data:`FROST`) with a procedural ice layer per image
    (:func:`~robustcheck.ops.corruptions.textures.frost_texture`). Same shape as ``x``."""
    check_images(x, "frost")
    if check_severity(severity, "frost") == 0:
        return x.clone()
    image_weight, ice_weight = level(FROST, severity, resolve_preset(x, preset))
    b, c, h, w = x.shape
    ice = frost_texture(b, h, w, c, generator, x.device).to(x.dtype)
    return (image_weight * x + ice_weight * ice).clamp(0.0, 1.0)


def fog(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Add ``t`` times a plasma fractal (:data:`FOG`: weight ``t``, decay) to every channel and rescale by
    ``max / (max + t)`` (``max``: the image's brightest value), as the reference. Same shape as ``x``."""
    check_images(x, "fog")
    if check_severity(severity, "fog") == 0:
        return x.clone()
    weight, decay = level(FOG, severity, resolve_preset(x, preset))
    b, _, h, w = x.shape
    plasma = plasma_fractal(b, next_power_of_two(max(h, w)), decay, generator, x.device)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    fogged = x + weight * plasma[:, None, :h, :w].to(x.dtype)
    return (fogged * peak / (peak + weight)).clamp(0.0, 1.0)


def brightness(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Add :data:`BRIGHTNESS` to the HSV value ``V = max(R, G, B)`` (clipped at 1) keeping hue and saturation,
    i.e. scale each pixel by ``V' / V`` (black pixels become grey ``V'``); grey images: ``clip(x + c)``.
    Deterministic (``generator`` unused); same shape as ``x``."""
    check_images(x, "brightness")
    if check_severity(severity, "brightness") == 0:
        return x.clone()
    shift = level(BRIGHTNESS, severity, resolve_preset(x, preset))
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(max=1.0)
    ratio = brighter / value.clamp_min(1e-12)
    return torch.where(value > 0, x * ratio, brighter.expand_as(x)).clamp(0.0, 1.0)
