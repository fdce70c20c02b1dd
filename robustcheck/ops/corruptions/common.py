"""What every corruption function shares: input checks, the parameter presets (CIFAR vs ImageNet),
the pixel scale of an image relative to its preset, and seeded random draws.

Presets. Hendrycks & Dietterich (ICLR 2019) published two parameter sets: one for CIFAR-10-C (32 x 32
images, ``make_cifar_c.py``) and one for ImageNet-C (224 x 224, ``make_imagenet_c.py``). ``preset="auto"``
picks ``"cifar"`` for images whose shorter side is below :data:`AUTO_THRESHOLD` (96) pixels and
``"imagenet"`` otherwise; ``"cifar"`` / ``"imagenet"`` force one.

Pixel scale. Parameters that are lengths in pixels (blur radii and sigmas, displacement sizes, flake
zoom) are multiplied by ``min(H, W) / reference side`` of the preset (32 or 224), so the reference sizes get
the published parameters exactly and other sizes the same corruption relative to the image.

Random draws. Every random number comes from the ``generator`` passed in (``None``: torch's global
generator), drawn on the generator's device and moved to the image's device, so the same seed gives
the same images on every device the generator lives on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from robustcheck.errors import InputError, UsageError

PRESETS = ("cifar", "imagenet")
PRESET_CHOICES = ("auto", *PRESETS)
#: Shorter image side (pixels) from which ``preset="auto"`` uses the ImageNet parameters.
AUTO_THRESHOLD = 96
#: Image side the parameters of each preset were published for.
REFERENCE_SIDE = {"cifar": 32, "imagenet": 224}
SEVERITIES = (1, 2, 3, 4, 5)

#: A parameter table: preset -> one entry per severity 1..5.
Table = Mapping[str, Sequence[Any]]


def check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` must be a float ``(B, C, H, W)`` tensor with C = 1 (grey) or 3 (RGB); returns it."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"corruption {name!r} takes images (B, C, H, W), got {shape}")
    if x.shape[1] not in (1, 3):
        raise InputError(
            f"corruption {name!r} takes greyscale or RGB images (C = 1 or 3), got C = {x.shape[1]}"
        )
    if not x.is_floating_point():
        raise InputError(f"corruption {name!r} takes float images in [0, 1], got {x.dtype}")
    return x


def check_severity(severity: int, name: str) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise UsageError(f"corruption {name!r}: severity must be an integer in 0..5, got {severity!r}")
    return severity


def resolve_preset(x: torch.Tensor, preset: str) -> str:
    """``"cifar"`` or ``"imagenet"`` for images ``x`` (see the module docstring for ``"auto"``)."""
    if preset == "auto":
        return "cifar" if min(x.shape[-2:]) < AUTO_THRESHOLD else "imagenet"
    if preset not in PRESETS:
        raise UsageError(f"preset must be one of {', '.join(PRESET_CHOICES)}, got {preset!r}")
    return preset


def pixel_scale(x: torch.Tensor, preset: str) -> float:
    """``min(H, W)`` of ``x`` over the reference side of ``preset`` (1.0 at 32 px for CIFAR, 224 px for ImageNet)."""
    return min(x.shape[-2:]) / REFERENCE_SIDE[preset]


def level(table: Table, severity: int, preset: str) -> Any:
    """The parameters of ``severity`` (1..5) in ``table`` for ``preset``."""
    return table[preset][severity - 1]


def _where(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def uniform(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """float32 ``U(low, high)`` of ``shape`` on ``device``, drawn from ``generator``."""
    u = torch.rand(tuple(shape), generator=generator, device=_where(generator, device)).to(device)
    return u if (low, high) == (0.0, 1.0) else low + (high - low) * u


def normal(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """float32 ``N(mean, std^2)`` of ``shape`` on ``device``, drawn from ``generator``."""
    return mean + std * torch.randn(tuple(shape), generator=generator, device=_where(generator, device)).to(
        device
    )


def poisson(rates: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Poisson draws with the given ``rates`` (any shape), on the rates' device."""
    where = _where(generator, rates.device)
    return torch.poisson(rates.to(where), generator=generator).to(rates.device)


def integers(
    shape: Sequence[int], low: int, high: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """int64 uniform integers in ``[low, high)`` (numpy's ``randint`` convention) on ``device``."""
    return torch.randint(low, high, tuple(shape), generator=generator, device=_where(generator, device)).to(
        device
    )


def grey(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, as OpenCV's RGB2GRAY); grey images as they are."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)
