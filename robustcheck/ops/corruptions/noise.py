"""Noise corruptions: Gaussian, shot (Poisson) and impulse (salt-and-pepper) noise.

All functions take images ``x`` ``(B, C, H, W)`` in ``[0, 1]`` (C = 1 or 3), a ``severity`` in 0..5
(0 returns a copy of ``x``), an optional seeded ``torch.Generator`` and a ``preset`` (``"auto"``,
``"cifar"``, ``"imagenet"``; see :mod:`robustcheck.ops.corruptions.common`), and return a tensor of the same
shape in ``[0, 1]`` on ``x``'s device. Noise is drawn independently per pixel and channel, as in the
reference.

Parameters per severity 1..5 (Hendrycks & Dietterich 2019):

================  =======================================  ========================================
corruption        CIFAR-10-C                               ImageNet-C
================  =======================================  ========================================
gaussian_noise    std 0.04, 0.06, 0.08, 0.09, 0.10         std 0.08, 0.12, 0.18, 0.26, 0.38
shot_noise        photons 500, 250, 100, 75, 50            photons 60, 25, 12, 5, 3
impulse_noise     amount 0.01, 0.02, 0.03, 0.05, 0.07      amount 0.03, 0.06, 0.09, 0.17, 0.27
================  =======================================  ========================================
"""

from __future__ import annotations

import torch

from robustcheck.ops.corruptions.common import (
    check_images,
    check_severity,
    level,
    normal,
    poisson,
    resolve_preset,
    uniform,
)

#: Standard deviation of the additive Gaussian noise.
GAUSSIAN_NOISE = {"cifar": (0.04, 0.06, 0.08, 0.09, 0.10), "imagenet": (0.08, 0.12, 0.18, 0.26, 0.38)}
#: Photon count at full intensity: ``Poisson(x * c) / c`` (fewer photons, more noise).
SHOT_NOISE = {"cifar": (500, 250, 100, 75, 50), "imagenet": (60, 25, 12, 5, 3)}
#: Share of pixel values set to 0 or 1 (half each on average).
IMPULSE_NOISE = {"cifar": (0.01, 0.02, 0.03, 0.05, 0.07), "imagenet": (0.03, 0.06, 0.09, 0.17, 0.27)}


def gaussian_noise(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """``clip(x + N(0, std^2))`` with ``std`` from :data:`GAUSSIAN_NOISE`; ``(B, C, H, W)`` -> same shape."""
    check_images(x, "gaussian_noise")
    if check_severity(severity, "gaussian_noise") == 0:
        return x.clone()
    std = level(GAUSSIAN_NOISE, severity, resolve_preset(x, preset))
    return (x + normal(x.shape, generator, x.device, std=std)).clamp(0.0, 1.0)


def shot_noise(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """``clip(Poisson(x * c) / c)`` with photon count ``c`` from :data:`SHOT_NOISE`; same shape as ``x``."""
    check_images(x, "shot_noise")
    if check_severity(severity, "shot_noise") == 0:
        return x.clone()
    photons = float(level(SHOT_NOISE, severity, resolve_preset(x, preset)))
    return (poisson(x.clamp(0.0, 1.0) * photons, generator) / photons).clamp(0.0, 1.0)


def impulse_noise(
    x: torch.Tensor, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Salt-and-pepper noise as ``skimage.util.random_noise(mode='s&p')``: each value is replaced with
    probability ``amount`` (:data:`IMPULSE_NOISE`) by 1 or 0 (even odds); same shape as ``x``."""
    check_images(x, "impulse_noise")
    if check_severity(severity, "impulse_noise") == 0:
        return x.clone()
    amount = level(IMPULSE_NOISE, severity, resolve_preset(x, preset))
    hit = uniform(x.shape, generator, x.device) < amount
    salt = (uniform(x.shape, generator, x.device) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)
