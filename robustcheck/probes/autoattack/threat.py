"""The threat model: perturbation norms, the epsilon ball intersected with the model's bounds, random
starts inside it and the 8-bit rounding of an adversarial.

Every function takes images ``(B, C, H, W)`` and works per sample; ``norm`` is ``"linf"`` or ``"l2"``;
``bounds`` is the model's ``(low, high)``. Random numbers come from a CPU ``torch.Generator`` and are moved
to the input's device, so a seed gives the same draws on every device.
"""

from __future__ import annotations

import torch

NORMS = ("linf", "l2")
#: slack when testing "within the ball": float32 rounding of ``x + delta`` may overshoot by a few ulps
BALL_TOLERANCE = 1e-6
#: 8-bit images: 255 steps across the bounds
LEVELS = 255


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm ``(B,)`` of perturbations ``(B, ...)``."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(len(flat))
    return flat.norm(p=2, dim=1)


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


def unit_direction(v: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit ``norm`` for gradient ``v``: ``sign(v)`` (Linf), ``v / ||v||_2`` (L2)."""
    if norm == "linf":
        return v.sign()
    return v / (_expand(lp_norm(v, "l2"), v) + 1e-12)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float, norm: str, bounds: tuple[float, float]) -> torch.Tensor:
    """``x_adv`` moved into the ``eps`` ball around ``x`` and then into ``bounds``.

    Linf: the exact projection onto the intersection (both are boxes). L2: radial scaling onto the ball, then
    clipping to the bounds; clipping moves every pixel towards ``x`` (which lies within the bounds), so the
    result stays in the ball. ``eps``: a number or per-sample ``(B,)``.
    """
    low, high = bounds
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    eps_t = _expand(eps_t.expand(len(x)) if eps_t.ndim == 0 else eps_t, x)
    delta = x_adv - x
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eps_t), -eps_t)
    else:
        length = _expand(lp_norm(delta, "l2"), x)
        delta = delta * torch.clamp(eps_t / (length + 1e-12), max=1.0)
    return (x + delta).clamp(low, high)


def within_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, bounds: tuple[float, float]) -> torch.Tensor:
    """``(B,)`` booleans: ``x_adv`` lies in the ``eps`` ball around ``x`` and within ``bounds`` (small float slack)."""
    low, high = bounds
    slack = BALL_TOLERANCE * max(1.0, high - low)
    inside = (x_adv >= low - slack).flatten(1).all(1) & (x_adv <= high + slack).flatten(1).all(1)
    return inside & (lp_norm(x_adv - x, norm) <= eps * (1 + 1e-6) + slack)


def random_start(
    x: torch.Tensor, eps: float, norm: str, bounds: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """A random point of the ``eps`` ball around ``x`` (within ``bounds``).

    As in APGD: Linf, a uniform draw in ``[-1, 1]`` rescaled so its largest entry reaches ``eps`` (a point on
    the ball's surface); L2, a Gaussian direction of length ``eps``.
    """
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator) - 1
        t = t / (_expand(lp_norm(t, "linf"), t) + 1e-12)
    else:
        t = torch.randn(x.shape, generator=generator)
        t = t / (_expand(lp_norm(t, "l2"), t) + 1e-12)
    return (x + eps * t.to(device=x.device, dtype=x.dtype)).clamp(*bounds)


def round_to_8bit(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, bounds: tuple[float, float]
) -> torch.Tensor:
    """``x_adv`` as an 8-bit image would store it: every pixel on the grid of 255 steps across ``bounds``.

    Each pixel goes to the nearest grid value; for Linf that value is then limited to the grid values inside
    ``[x - eps, x + eps]`` (there are some whenever ``eps >= 1/255`` of the range, or ``x`` is on the grid);
    for L2, if nearest rounding leaves the ball, pixels are rounded towards ``x`` instead (which cannot leave
    it when ``x`` is itself on the grid). Where no grid point fits, the result lies outside the ball and the
    caller's ball check refuses it: an adversarial that 8 bits cannot represent does not count at 8 bits.
    """
    low, high = bounds
    scale = LEVELS / (high - low)
    level = (x_adv - low) * scale
    nearest = torch.round(level)
    if norm == "linf":
        floor_level = torch.ceil((x - eps - low) * scale - 1e-4).clamp(0, LEVELS)
        ceil_level = torch.floor((x + eps - low) * scale + 1e-4).clamp(0, LEVELS)
        fits = floor_level <= ceil_level
        limited = torch.minimum(torch.maximum(nearest, floor_level), ceil_level)
        nearest = torch.where(fits, limited, nearest)
        return low + nearest.clamp(0, LEVELS) / scale
    rounded = low + nearest.clamp(0, LEVELS) / scale
    outside = lp_norm(rounded - x, "l2") > eps * (1 + 1e-6)
    if bool(outside.any()):
        clean_level = (x - low) * scale
        towards = torch.where(level >= clean_level, torch.floor(level + 1e-4), torch.ceil(level - 1e-4))
        toward_clean = low + towards.clamp(0, LEVELS) / scale
        rounded = torch.where(_expand(outside, x), toward_clean, rounded)
    return rounded
