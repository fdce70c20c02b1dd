"""Classic input-transformation baselines: feature squeezing (Xu et al. NDSS 2018) and JPEG
compression (Dziugaite et al. 2016; Das et al. 2017; Guo et al. ICLR 2018).

All are cheap and well known to fall to adaptive attacks (Athalye et al. 2018), which is what
makes them useful reference points in an audit.
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import MedianBlur
from torch import nn

from robustcheck.api import Defense
from robustcheck.errors import InputError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.params import Param


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


class BitDepthReduction(Defense):
    """Bit-depth reduction (feature squeezing) to ``bits`` bits per channel; straight-through gradients."""

    bits = Param(4, "bits per channel (2**bits levels over the model's input range)", ge=1, le=16)
    gradients = "approximate"
    in_default_audit = True

    def transform(self, model: ImageClassifier) -> nn.Module:
        return Quantize(self.bits, model.bounds)  # 2**bits levels over the model's range


class MedianFilter(Defense):
    """Median filter (feature squeezing) over a ``size`` x ``size`` window; exact (sub)gradients."""

    size = Param(3, "side of the square window in pixels", ge=1, check=lambda v: v % 2 == 1, check_doc="odd")
    gradients = "exact"
    in_default_audit = True

    def transform(self, model: ImageClassifier) -> nn.Module:
        return MedianBlur((self.size, self.size))  # kornia's median filter, per channel


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


class JPEG(Defense):
    """JPEG compression at ``quality`` (1-100) through kornia's differentiable codec.

    kornia rounds the DCT coefficients with a differentiable approximation of rounding (Shin & Song
    2017): with ``backward="codec"`` (default) gradients are those of the function it computes
    ("exact"); measured adaptive attacks through them can be *weaker* than non-adaptive ones, so
    ``backward="identity"`` offers the straight-through (BPDA) gradient instead ("approximate").
    """

    quality = Param(75, "JPEG quality", ge=1, le=100)
    backward = Param(
        "codec",
        "backward pass: the codec's gradient (exact) or the identity (straight-through / BPDA)",
        choices=("codec", "identity"),
    )
    gradients = "exact"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.gradients = "exact" if self.backward == "codec" else "approximate"  # per instance

    def transform(self, model: ImageClassifier) -> nn.Module:
        return JPEGCodec(self.quality, model.bounds, straight_through=self.backward == "identity")
