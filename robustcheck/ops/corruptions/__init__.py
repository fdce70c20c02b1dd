"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019; CIFAR-10-C, ImageNet-C) at 5 severities,
as batched torch functions.

Every corruption is a pure function ``f(x, severity, generator=None, preset="auto") -> Tensor``:

* ``x``: images ``(B, C, H, W)`` in ``[0, 1]``, C = 1 (grey) or 3 (RGB), any H and W, any device;
* ``severity``: 0 (identity: a copy of ``x``) to 5;
* ``generator``: a seeded ``torch.Generator`` (same seed, same output; ``None``: torch's global generator);
* ``preset``: ``"cifar"`` (CIFAR-10-C parameters), ``"imagenet"`` (ImageNet-C parameters) or ``"auto"``
  (CIFAR below 96 px on the shorter side); lengths in pixels scale with the image
  (:mod:`robustcheck.ops.corruptions.common`);
* returns ``(B, C, H, W)`` in ``[0, 1]`` on ``x``'s device.

Families, one module each with its table of parameters per severity: :mod:`.noise` (gaussian_noise,
shot_noise, impulse_noise), :mod:`.blur` (defocus_blur, glass_blur, motion_blur, zoom_blur), :mod:`.weather`
(snow, frost, fog, brightness), :mod:`.digital` (contrast, elastic_transform, pixelate, jpeg_compression).
Names are those of the CIFAR-10-C / ImageNet-C files (``<name>.npy``).

:func:`corrupt` applies one by name; :class:`Corruption` is the ``nn.Module`` wrapper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustcheck.errors import UsageError, suggest
from robustcheck.ops.corruptions.blur import defocus_blur, glass_blur, motion_blur, zoom_blur
from robustcheck.ops.corruptions.common import PRESET_CHOICES, PRESETS, SEVERITIES, resolve_preset
from robustcheck.ops.corruptions.digital import contrast, elastic_transform, jpeg_compression, pixelate
from robustcheck.ops.corruptions.noise import gaussian_noise, impulse_noise, shot_noise
from robustcheck.ops.corruptions.weather import brightness, fog, frost, snow

CorruptionFn = Callable[..., torch.Tensor]

#: The 15 corruptions in the paper's order (noise, blur, weather, digital).
CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
CORRUPTION_NAMES = tuple(CORRUPTIONS)
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
#: Corruptions whose output does not depend on the generator.
DETERMINISTIC = frozenset(
    {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
)

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_NAMES",
    "DETERMINISTIC",
    "FAMILIES",
    "PRESETS",
    "PRESET_CHOICES",
    "SEVERITIES",
    "Corruption",
    "corrupt",
    "resolve_preset",
    *CORRUPTION_NAMES,
]


def corruption(name: str) -> CorruptionFn:
    """The function of corruption ``name``; unknown names raise :class:`UsageError` with a suggestion."""
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise UsageError(
            f"unknown corruption {name!r}{suggest(name, CORRUPTIONS)}; corruptions: {', '.join(CORRUPTIONS)}"
        ) from None


def corrupt(
    x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None, preset: str = "auto"
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (0..5) to images ``x`` ``(B, C, H, W)`` in ``[0, 1]``."""
    return corruption(name)(x, severity, generator=generator, preset=preset)


class Corruption(nn.Module):
    """``nn.Module`` wrapper of one corruption at one severity: ``Corruption("fog", 3)(x, generator)``."""

    def __init__(self, name: str, severity: int, preset: str = "auto") -> None:
        super().__init__()
        self.function = corruption(name)
        self.name, self.severity, self.preset = name, severity, preset

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.function(x, self.severity, generator=generator, preset=self.preset)

    def extra_repr(self) -> str:
        return f"{self.name}, severity={self.severity}, preset={self.preset!r}"
