"""Classic input-transformation baselines: feature squeezing (Xu et al. NDSS 2018) and JPEG
compression (Dziugaite et al. 2016; Das et al. 2017; Guo et al. ICLR 2018).

All are cheap and well known to fall to adaptive attacks (Athalye et al. 2018), which is what
makes them useful reference points in an audit.
"""

from __future__ import annotations

import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import median_blur
from torch import nn

from robustcheck.api import Defense
from robustcheck.errors import InputError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.registry import register


def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``x`` in ``[0, 1]`` to ``2**bits`` levels; the backward pass is the identity
    (straight-through / BPDA), since rounding has zero gradient almost everywhere."""
    levels = 2**bits - 1
    rounded = torch.round(x * levels) / levels
    return x + (rounded - x).detach()


class Quantize(nn.Module):
    """:func:`quantize` as a module; ``(B, C, H, W)`` in ``bounds`` (the levels span ``bounds``)."""

    def __init__(self, bits: int, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.bits = bits
        self.bounds = (float(bounds[0]), float(bounds[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.bounds
        if (low, high) == (0.0, 1.0):
            return quantize(x, self.bits)
        return low + quantize((x - low) / (high - low), self.bits) * (high - low)


class MedianBlur(nn.Module):
    """kornia's median filter over a ``size`` x ``size`` window, per channel."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return median_blur(x, (self.size, self.size))


@register("defense", "bit-depth")
class BitDepthReduction(Defense):
    """Bit-depth reduction (feature squeezing) to ``bits`` bits per channel; straight-through gradients."""

    defaults = {"bits": 4}
    gradients = "approximate"
    in_default_audit = True

    def validate(self) -> None:
        bits = self.params["bits"]
        if not 1 <= bits <= 16:
            raise UsageError(f"defense 'bit-depth': bits must be in 1..16, got {bits}")

    def transform(self, model: ImageClassifier) -> nn.Module:
        return Quantize(self.params["bits"], model.bounds)  # 2**bits levels over the model's range


@register("defense", "median-filter")
class MedianFilter(Defense):
    """Median filter (feature squeezing) over a ``size`` x ``size`` window; exact (sub)gradients."""

    defaults = {"size": 3}
    gradients = "exact"
    in_default_audit = True

    def validate(self) -> None:
        size = self.params["size"]
        if size < 1 or size % 2 == 0:
            raise UsageError(f"defense 'median-filter': size must be a positive odd number, got {size}")

    def transform(self, model: ImageClassifier) -> nn.Module:
        return MedianBlur(self.params["size"])


class JPEGCodec(nn.Module):
    """kornia's differentiable JPEG encode-decode at ``quality``; ``(B, C, H, W)`` in ``bounds``, any H, W.

    Colour images are coded as RGB (YCbCr with 4:2:0 chroma subsampling inside kornia); greyscale
    ``(B, 1, H, W)`` images are coded as grey RGB and averaged back to one channel.

    With ``straight_through``, the backward pass is the identity (BPDA, Athalye et al. 2018) instead of
    the gradient of kornia's smooth rounding, which can point attacks the wrong way.
    """

    def __init__(self, quality: int, bounds: tuple[float, float] = (0.0, 1.0), straight_through: bool = False) -> None:
        super().__init__()
        self.quality = quality
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.straight_through = straight_through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coded = self._code(x)
        return x + (coded - x).detach() if self.straight_through else coded

    def _code(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.bounds
        unit = (x - low) / (high - low)
        channels = unit.shape[1]
        if channels not in (1, 3):
            raise InputError(
                f"defense 'jpeg' codes greyscale (1 channel) or RGB (3 channels) images, got {channels} channels"
            )
        rgb = unit.expand(-1, 3, -1, -1) if channels == 1 else unit
        quality = torch.tensor([float(self.quality)], dtype=x.dtype, device=x.device)
        coded = jpeg_codec_differentiable(rgb, quality).clamp(0.0, 1.0)
        if channels == 1:
            coded = coded.mean(dim=1, keepdim=True)
        return low + coded * (high - low)


@register("defense", "jpeg")
class JPEG(Defense):
    """JPEG compression at ``quality`` (1-100) through kornia's differentiable codec.

    kornia rounds the DCT coefficients with a differentiable approximation of rounding (Shin & Song
    2017): with ``backward="codec"`` (default) gradients are those of the function it computes
    ("exact"); measured adaptive attacks through them can be *weaker* than non-adaptive ones, so
    ``backward="identity"`` offers the straight-through (BPDA) gradient instead ("approximate").
    """

    defaults = {"quality": 75, "backward": "codec"}
    gradients = "exact"

    def validate(self) -> None:
        quality, backward = self.params["quality"], self.params["backward"]
        if not 1 <= quality <= 100:
            raise UsageError(f"defense 'jpeg': quality must be in 1..100, got {quality}")
        if backward not in ("codec", "identity"):
            raise UsageError(f"defense 'jpeg': backward must be 'codec' or 'identity' (BPDA), got {backward!r}")
        self.gradients = "exact" if backward == "codec" else "approximate"  # per instance: it depends on a param

    def transform(self, model: ImageClassifier) -> nn.Module:
        return JPEGCodec(self.params["quality"], model.bounds, straight_through=self.params["backward"] == "identity")
