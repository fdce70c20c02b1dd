"""Procedural textures of the weather corruptions: the plasma fractal of ``fog`` and the ice texture of ``frost``.

* :func:`plasma_fractal`: the diamond-square height map the reference uses for fog (same algorithm and
  "wibble" decay), batched: one independent map per image.
* :func:`frost_texture`: the reference blends photographs of frosted glass (six image files shipped with
  it); robustcheck ships no image assets, so the ice layer is **generated procedurally**: crossing
  needle-like crystals (sparse seeds drawn out into lines along four random directions, at two lengths)
  over a cloudy plasma base, coloured with the mean colour of one of the five reference photographs the
  reference picks from, and scaled to their typical contrast. Mean colours and contrast below were
  measured on those photographs once (mean RGB per photo; pixel standard deviation 0.06 to 0.17, 0.12 on
  average); no pixel of them is used.
"""

from __future__ import annotations

import math

import torch

from robustcheck.ops.corruptions.common import integers, uniform
from robustcheck.ops.corruptions.filters import gaussian_blur, shifted_sum

#: Mean RGB colour of the frost photographs ``frost1.png`` .. ``frost5.jpg`` the reference draws from.
FROST_COLOURS = (
    (0.305, 0.585, 0.650),  # blue ice
    (0.787, 0.805, 0.841),  # white crystals (frost2 and frost3 are the same photo)
    (0.787, 0.805, 0.841),
    (0.540, 0.599, 0.648),  # grey glass
    (0.441, 0.484, 0.529),  # dark glass with crystals
)
#: Pixel standard deviation of the generated ice layer (average of the photographs').
FROST_CONTRAST = 0.12


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def plasma_fractal(
    batch: int, size: int, decay: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``(batch, size, size)`` diamond-square height maps in ``[0, 1]`` (``size`` a power of two).

    Each square and diamond step sets the midpoints to the mean of their four corners plus uniform noise
    in ``[-wibble^2, wibble^2]``; ``wibble`` starts at 100 and is divided by ``decay`` per level (larger
    ``decay``: smoother map). Each map is then scaled to ``[0, 1]``.
    """
    if size & (size - 1):
        raise ValueError(f"plasma size must be a power of two, got {size}")
    m = torch.zeros(batch, size, size, dtype=torch.float64, device=device)
    step, wibble = size, 100.0

    def wibbled(total: torch.Tensor) -> torch.Tensor:
        noise = uniform(total.shape, generator, device, -wibble, wibble).double()
        return total / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        m[:, half::step, half::step] = wibbled(squares)
        centres, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        left = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        m[:, 0::step, half::step] = wibbled(left)
        top = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        m[:, half::step, 0::step] = wibbled(top)
        step, wibble = half, wibble / decay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    m = m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return m.float()


def _needles(
    seeds: torch.Tensor, length: int, generator: torch.Generator | None, directions: int = 4
) -> torch.Tensor:
    """Draw every seed of ``seeds`` ``(B, 1, H, W)`` out into straight needles of ``length`` px along
    ``directions`` random directions per image (one set of directions per image), summed."""
    b = seeds.shape[0]
    angles = uniform((b, directions), generator, seeds.device, 0.0, math.pi)
    t = torch.arange(length, dtype=torch.float32, device=seeds.device) - (length - 1) / 2
    dy = torch.round(t.view(1, 1, -1) * torch.sin(angles).unsqueeze(2))
    dx = torch.round(t.view(1, 1, -1) * torch.cos(angles).unsqueeze(2))
    offsets = torch.stack([dy, dx], dim=3).long().view(b, directions * length, 2)
    # brighter at the needle's middle, fading to its tips (tapered crystals)
    taper = (1.0 - (2 * t.abs() / length) ** 2).clamp_min(0.05).repeat(directions)
    return shifted_sum(seeds, offsets, taper, border="zeros")  # seeds at the edge must not smear along it


def frost_texture(
    batch: int,
    height: int,
    width: int,
    channels: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """``(batch, channels, height, width)`` procedural ice layers in ``[0, 1]`` (see the module docstring).

    Crystal lengths scale with the image (long needles about a third of the shorter side, short ones a
    tenth), so the texture looks the same at every resolution. ``channels`` 1 gives the grey layer.
    """
    side = min(height, width)
    seeds_long = (uniform((batch, 1, height, width), generator, device) < 0.6 / side).float()
    seeds_short = (uniform((batch, 1, height, width), generator, device) < 4.0 / side).float()
    crystals = _needles(seeds_long, max(3, round(side / 3)), generator)
    crystals = crystals + 0.6 * _needles(seeds_short, max(2, round(side / 10)), generator)
    crystals = gaussian_blur(crystals, sigma=max(0.35, side / 300), mode="reflect")
    crystals = crystals / crystals.flatten(1).quantile(0.99, dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    size = next_power_of_two(max(height, width))
    clouds = plasma_fractal(batch, size, 2.0, generator, device)[:, None, :height, :width]
    layer = 0.6 * crystals.clamp(0, 1.5) + 0.4 * clouds
    layer = layer - layer.mean(dim=(2, 3), keepdim=True)
    layer = layer / layer.std(dim=(2, 3), keepdim=True).clamp_min(1e-6) * FROST_CONTRAST
    colours = torch.tensor(FROST_COLOURS, dtype=torch.float32, device=device)
    pick = integers((batch,), 0, len(FROST_COLOURS), generator, device)
    colour = colours[pick]
    if channels == 1:
        colour = (colour * torch.tensor([0.299, 0.587, 0.114], device=device)).sum(dim=1, keepdim=True)
    return (colour.view(batch, channels, 1, 1) + layer).clamp(0.0, 1.0)
