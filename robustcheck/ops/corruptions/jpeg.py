"""A baseline JPEG encode-decode in torch, as libjpeg (Pillow's ``save(format='JPEG', quality=q)``) does it.

Unlike kornia's differentiable codec (used by the ``jpeg`` defense), this one rounds the quantised DCT
coefficients exactly, so its output is what a JPEG file of that quality decodes to, up to libjpeg's
fixed-point arithmetic (a few 1/255 steps on some pixels).

Pipeline for RGB images: 8-bit values -> JFIF YCbCr -> chroma subsampled 2 x 2 (4:2:0, Pillow's default) ->
planes padded to whole blocks by edge replication -> 8 x 8 DCT-II -> divided by the IJG quantisation
tables scaled for ``quality`` (libjpeg's ``jpeg_quality_scaling``, baseline-clamped to 1..255) and rounded
-> dequantised -> inverse DCT -> chroma upsampled with libjpeg's "fancy" triangle filter (bilinear, 3/4
and 1/4 weights) -> RGB rounded to 8 bits. Grey images are coded as a single luma plane.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

#: The IJG (JPEG Annex K) base quantisation tables, row-major.
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip


def quantisation_table(base: tuple[int, ...], quality: int) -> torch.Tensor:
    """``(8, 8)`` float64 table for ``quality`` (1..100) as libjpeg's ``jpeg_set_quality(..., force_baseline=TRUE)``."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = [min(max((b * scale + 50) // 100, 1), 255) for b in base]
    return torch.tensor(table, dtype=torch.float64).view(8, 8)


@lru_cache(maxsize=1)
def dct_matrix() -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix (float64 ``(8, 8)``): JPEG's DCT is ``D @ block @ D.T``."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n.view(1, -1) + 1) * n.view(-1, 1) * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


def _pad_to(plane: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = plane.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(plane, (0, pw, 0, ph), mode="replicate") if ph or pw else plane


def code_planes(planes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantise planes ``(B, P, H, W)`` (level-shifted 8-bit values, H and W multiples of 8) through the
    8 x 8 DCT with ``table`` and decode them again."""
    b, p, h, w = planes.shape
    d = dct_matrix().to(device=planes.device, dtype=planes.dtype)
    q = table.to(device=planes.device, dtype=planes.dtype)
    blocks = planes.reshape(b, p, h // 8, 8, w // 8, 8).transpose(3, 4)  # (..., 8 rows, 8 cols)
    coefficients = d @ blocks @ d.T
    restored = d.T @ (torch.round(coefficients / q) * q) @ d
    return restored.transpose(3, 4).reshape(b, p, h, w)


def jpeg_codec(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress and decode ``x`` ``(B, C, H, W)`` in ``[0, 1]`` (C = 1 or 3) at ``quality`` (1..100);
    returns the decoded images, 8-bit valued, same shape, on ``x``'s device."""
    b, c, h, w = x.shape
    values = torch.round(x.double().clamp(0.0, 1.0) * 255.0)
    luma_q = quantisation_table(LUMA_TABLE, quality)
    if c == 1:
        y = code_planes(_pad_to(values, 8) - 128.0, luma_q) + 128.0
        return (torch.round(y[..., :h, :w]).clamp(0, 255) / 255.0).to(x.dtype)
    r, g, bl = values[:, 0:1], values[:, 1:2], values[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * bl + 128.0
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * bl + 128.0
    y = code_planes(_pad_to(y, 16) - 128.0, luma_q) + 128.0
    chroma = F.avg_pool2d(_pad_to(torch.cat([cb, cr], dim=1), 16), 2)  # 4:2:0 subsampling (libjpeg h2v2)
    chroma = code_planes(_pad_to(chroma, 8) - 128.0, quantisation_table(CHROMA_TABLE, quality)) + 128.0
    chroma = chroma[..., : y.shape[-2] // 2, : y.shape[-1] // 2]
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)  # "fancy" upsampling
    y, cb, cr = y[..., :h, :w], chroma[:, 0:1, :h, :w] - 128.0, chroma[:, 1:2, :h, :w] - 128.0
    rgb = torch.cat([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], dim=1)
    return (torch.round(rgb).clamp(0, 255) / 255.0).to(x.dtype)
