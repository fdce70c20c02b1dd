"""Integer image shifts, crops and content scores shared by the ``translation`` probe and the
``crop-selection`` defense (Shifman & Weiss, ECCV 2024, "Lost in Translation").

Conventions (all tensors ``(B, C, H, W)``, values within the model's bounds, shifts in pixels):

* An *offset* ``(dy, dx)`` moves the viewing window by ``dy`` rows down and ``dx`` columns right
  inside the scene, so the content of the view moves by ``(-dy, -dx)``: ``view[i, j] =
  scene[i + dy, j + dx]``. A *realistic* shift takes that window from a larger canvas (a small
  camera move); a *cyclic* shift is ``torch.roll(x, (-dy, -dx))`` (the same, with wrap-around).
* Nothing here resizes: views are cut from the canvas as they are (resize once, then move the
  window).
* Content scores are computed with element-wise arithmetic on rolled copies only (no convolution
  kernels, whose rounding may depend on where a pixel sits in memory), so a score map of a rolled
  image is *bitwise* the rolled score map: ties and argmaxes move exactly with the scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from robustcheck.errors import InputError, UsageError

BORDERS = ("reflect", "replicate", "zero")
_PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "zero": "constant"}
#: ITU-R BT.601 luma weights (what "intensity" means for colour images here).
LUMA = (0.299, 0.587, 0.114)
#: multiplier in :func:`hashed_intensity`: a change of the smoothed intensity by 1 / 997 sweeps all of [0, 1).
HASH_SCALE = 997.0

Offset = tuple[int, int]


# --------------------------------------------------------------------------------------------
# Shift sets, canvases and views
# --------------------------------------------------------------------------------------------


def shift_offsets(max_shift: int, directions: int) -> list[Offset]:
    """Window moves ``(dy, dx)`` of sizes ``1..max_shift`` (Chebyshev norm) in 4 or 8 directions.

    Ordered by size, then right, left, down, up (then the four diagonals for 8 directions).
    """
    if directions not in (4, 8):
        raise UsageError(f"directions must be 4 or 8, got {directions}")
    if max_shift < 1:
        raise UsageError(f"max_shift must be at least 1, got {max_shift}")
    unit = [(0, 1), (0, -1), (1, 0), (-1, 0)]
    if directions == 8:
        unit += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    return [(dy * s, dx * s) for s in range(1, max_shift + 1) for dy, dx in unit]


def shift_size(offset: Offset) -> int:
    """Chebyshev size of an offset (a diagonal 1-pixel move has size 1)."""
    return max(abs(offset[0]), abs(offset[1]))


def pad_canvas(x: torch.Tensor, pad: int, border: str) -> torch.Tensor:
    """Surround ``x`` ``(B, C, H, W)`` with ``pad`` pixels on every side -> ``(B, C, H + 2 pad, W + 2 pad)``.

    ``border``: ``reflect`` (mirror without repeating the edge pixel), ``replicate`` (repeat the edge)
    or ``zero`` (constant 0, i.e. the lower bound of [0, 1] images).
    """
    if border not in BORDERS:
        raise UsageError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")
    if pad == 0:
        return x
    if border == "reflect" and pad >= min(x.shape[-2:]):
        raise UsageError(
            f"a reflect border of {pad} px needs images larger than {pad} px, got {tuple(x.shape[-2:])}"
        )
    return F.pad(x, (pad, pad, pad, pad), mode=_PAD_MODES[border])


def centre_origin(outer: Sequence[int], inner: Sequence[int]) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the centred ``inner`` ``(h, w)`` window in an ``outer`` ``(H, W)`` image
    (the extra pixel of an odd difference goes below / right)."""
    return (outer[0] - inner[0]) // 2, (outer[1] - inner[1]) // 2


def spare_margin(outer: Sequence[int], inner: Sequence[int]) -> int:
    """Pixels by which the centred ``inner`` window can move in every direction inside ``outer``."""
    top, left = centre_origin(outer, inner)
    return min(top, left, outer[0] - inner[0] - top, outer[1] - inner[1] - left)


def window_views(
    canvas: torch.Tensor, offsets: Sequence[Offset], size: Sequence[int], margin: int = 0
) -> torch.Tensor:
    """Realistic shifts: windows of ``size + 2 margin`` cut from ``canvas`` around its centre.

    Args:
        canvas: ``(B, C, H, W)``, larger than ``size`` by at least ``margin + max |offset|`` per side.
        offsets: window moves ``(dy, dx)``; ``(0, 0)`` is the centre window.
        size: ``(h, w)`` the model-sized window.
        margin: extra context per side (for a defense that chooses its own crop inside the view).

    Returns:
        ``(S, B, C, h + 2 margin, w + 2 margin)``: ``views[s, ..., i, j] = canvas[..., top + dy + i, left + dx + j]``.
    """
    h, w = int(size[0]) + 2 * margin, int(size[1]) + 2 * margin
    top, left = centre_origin(canvas.shape[-2:], (h, w))
    reach = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    if spare_margin(canvas.shape[-2:], (h, w)) < reach:
        raise InputError(
            f"a canvas of {tuple(canvas.shape[-2:])} px is too small for {h}x{w} views moved by up to {reach} px"
        )
    return torch.stack(
        [canvas[..., top + dy : top + dy + h, left + dx : left + dx + w] for dy, dx in offsets]
    )


def cyclic_views(x: torch.Tensor, offsets: Sequence[Offset]) -> torch.Tensor:
    """Cyclic shifts of ``x`` ``(B, C, H, W)``: ``(S, B, C, H, W)`` with ``views[s] = roll(x, (-dy, -dx))``."""
    return torch.stack([torch.roll(x, shifts=(-dy, -dx), dims=(-2, -1)) for dy, dx in offsets])


def centre_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centred ``(h, w)`` window of ``x`` ``(..., H, W)`` (no resizing)."""
    top, left = centre_origin(x.shape[-2:], size)
    return x[..., top : top + int(size[0]), left : left + int(size[1])]


def crop_at(x: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Per-sample ``(h, w)`` crops of ``x`` ``(B, C, H, W)`` at top-left ``(tops[b], lefts[b])`` -> ``(B, C, h, w)``.

    ``out[b, :, i, j] = x[b, :, (tops[b] + i) % H, (lefts[b] + j) % W]``: a crop inside ``x`` never wraps, and
    a full-size ``(H, W)`` crop is a per-sample cyclic roll. Differentiable in ``x`` (a gather): the gradient
    flows to the cropped pixels, with the offsets held fixed.
    """
    height, width = x.shape[-2:]
    rows = (tops.view(-1, 1) + torch.arange(int(size[0]), device=x.device)) % height  # (B, h)
    cols = (lefts.view(-1, 1) + torch.arange(int(size[1]), device=x.device)) % width  # (B, w)
    batch = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    picked = x.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B, h, w, C)
    return picked.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# Content scores: translation-equivariant maps computed from pixels only
# --------------------------------------------------------------------------------------------


def luminance(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` intensity of ``x`` ``(B, C, H, W)``: BT.601 luma for 3/4 channels, else the first channel."""
    if x.shape[1] >= 3:
        return LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]
    return x[:, 0]


def gaussian_weights(sigma: float) -> list[float]:
    """Normalised 1-D Gaussian taps over ``[-r, r]``, ``r = ceil(3 sigma)``; ``sigma = 0`` is the identity."""
    if sigma <= 0:
        return [1.0]
    radius = math.ceil(3 * sigma)
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(taps)
    return [t / total for t in taps]


def circular_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``m`` ``(B, H, W)`` with wrap-around, as a fixed-order sum of rolled copies
    (bitwise equivariant under integer rolls, unlike a convolution kernel)."""
    taps = gaussian_weights(sigma)
    radius = len(taps) // 2
    for dim in (-2, -1):
        acc = taps[0] * torch.roll(m, radius, dims=dim)
        for k in range(1, len(taps)):
            acc = acc + taps[k] * torch.roll(m, radius - k, dims=dim)
        m = acc
    return m


def smooth_intensity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-smoothed intensity ``(B, H, W)`` of ``x`` ``(B, C, H, W)``: high on bright blobs."""
    return circular_blur(luminance(x), sigma)


def local_energy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smoothed local contrast ``(B, H, W)``: Gaussian blur of the squared deviation of the intensity from
    its own blur at ``sigma``; high on edges and texture, zero on flat regions."""
    lum = luminance(x)
    return circular_blur((lum - circular_blur(lum, sigma)) ** 2, sigma)


def hashed_intensity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``frac(HASH_SCALE * smooth_intensity)`` ``(B, H, W)`` in [0, 1): a deterministic function of local
    content that varies like independent draws from pixel to pixel, so its argmax over a window is rarely on
    the window's edge (the ``2 / (K + 1)`` regime). Exact for integer shifts of the same pixels; not meant to
    survive noise."""
    return torch.frac(HASH_SCALE * smooth_intensity(x, sigma))


SCORES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "smooth-intensity": smooth_intensity,
    "local-energy": local_energy,
    "hashed-intensity": hashed_intensity,
}


def score_support(sigma: float, score: str) -> int:
    """Radius in pixels of the neighbourhood a score value depends on (wrap-around never reaches
    a value computed at least this far from the edges of the region it is computed on)."""
    radius = len(gaussian_weights(sigma)) // 2
    return 2 * radius if score == "local-energy" else radius
