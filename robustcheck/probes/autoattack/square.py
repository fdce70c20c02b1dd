"""Square Attack (Andriushchenko, Croce, Flammarion, Hein; ECCV 2020): score-based random search.

It needs no gradients, only the model's scores: it keeps the perturbation with the lowest margin
``z_y - max_{j != y} z_j`` seen so far and proposes changes confined to a random square window, accepting
one when the margin drops. The window covers a share ``p`` of the image that shrinks on a fixed schedule
(halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 queries), so the search moves from coarse to
fine. Each query is one forward pass of one sample; samples stop querying once fooled (margin <= 0).

* Linf: starts from vertical stripes of ``+-eps``; a proposal sets the window to ``+-eps`` per channel.
* L2: starts from a grid of pseudo-Gaussian bumps scaled to the ball's surface; a proposal moves perturbation
  mass from a second random window into the first, reshaped as a signed pair of bumps, keeping the norm.

:func:`square_attack` returns the adversarials, whether each fooled the model and the queries it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustcheck.probes.autoattack.interface import Forward, Tick
from robustcheck.probes.autoattack.losses import margin
from robustcheck.probes.autoattack.threat import lp_norm

#: query counts after which the window share ``p`` halves (the paper's schedule for 10,000 queries)
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: draws per Linf proposal, of which each sample takes the first that changes its window
REDRAWS = 10


@dataclass
class SquareOutcome:
    """``adversarial`` ``(B, C, H, W)``, ``fooled`` ``(B,)`` (margin <= 0 when last queried) and ``queries``
    ``(B,)``: forward passes of each sample, the initial one included."""

    adversarial: torch.Tensor
    fooled: torch.Tensor
    queries: torch.Tensor


def window_share(p_init: float, query: int) -> float:
    """``p``: the share of the image a proposal's window covers at query number ``query``."""
    return p_init / 2 ** sum(query > threshold for threshold in SCHEDULE)


def _signs(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return (2 * torch.randint(0, 2, shape, generator=generator) - 1).to(device=like.device, dtype=like.dtype)


def _position(limit: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, limit + 1, (1,), generator=generator))


def bump(height: int, width: int) -> torch.Tensor:
    """``(height, width)`` pseudo-Gaussian of unit L2 norm: nested rectangles around the centre, the ``k``-th
    from the centre adding ``1 / (k + 1)^2``."""
    out = torch.zeros(height, width)
    centre_h, centre_w = height // 2, width // 2
    for k in range(max(centre_h, centre_w) + 1):
        top, left = max(centre_h - k, 0), max(centre_w - k, 0)
        out[top : min(centre_h + k + 1, height), left : min(centre_w + k + 1, width)] += 1.0 / (k + 1) ** 2
    return out / out.norm()


def signed_pair(size: int, generator: torch.Generator) -> torch.Tensor:
    """``(size, size)`` unit-norm proposal of the L2 attack: a positive bump over a negative one, transposed
    with probability 1/2."""
    half = size // 2
    out = torch.cat([bump(half, size), -bump(size - half, size)]) if half else bump(size, size)
    out = out / out.norm()
    return out.t() if bool(torch.randint(0, 2, (1,), generator=generator)) else out


def _unit_l2(delta: torch.Tensor) -> torch.Tensor:
    return delta / (lp_norm(delta, "l2").view(-1, *([1] * (delta.ndim - 1))) + 1e-12)


def _initial_linf(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    batch, channels, _, width = x.shape
    return x + eps * _signs((batch, channels, 1, width), generator, x)


def _initial_l2(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    batch, channels, height, width = x.shape
    size = max(height // 5, 1)
    offset_h, offset_w = (height - size * (height // size)) // 2, (width - size * (width // size)) // 2
    delta = torch.zeros_like(x)
    tile = bump(size, size).to(device=x.device, dtype=x.dtype)
    for row in range(height // size):
        for col in range(width // size):
            top, left = offset_h + row * size, offset_w + col * size
            delta[:, :, top : top + size, left : left + size] += tile * _signs((batch, channels, 1, 1), generator, x)
    return x + eps * _unit_l2(delta)


def _propose_linf(
    x: torch.Tensor, current: torch.Tensor, eps: float, share: float, bounds: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Set one random window (the same for the batch) to fresh ``+-eps`` per sample and channel.

    A draw that leaves a sample's window as it is would waste a query, so ``REDRAWS`` draws are made at once
    and each sample takes its first one that changes something (rejection sampling, vectorised); a sample
    whose every draw fails keeps the last one.
    """
    batch, channels, height, width = x.shape
    size = min(max(round((share * height * width) ** 0.5), 1), max(min(height, width) - 1, 1))
    top, left = _position(height - size, generator), _position(width - size, generator)
    window = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
    signs = _signs((REDRAWS, batch, channels, 1, 1), generator, x)
    candidates = (x[window].unsqueeze(0) + eps * signs).clamp(*bounds)  # (REDRAWS, B, C, s, s)
    changed = ((candidates - current[window].unsqueeze(0)).abs() >= 1e-7).flatten(2).any(2)  # (REDRAWS, B)
    first = torch.where(changed.any(0), changed.float().argmax(0), torch.full_like(changed[0], REDRAWS - 1, dtype=torch.long))
    proposal = current.clone()
    proposal[window] = candidates[first, torch.arange(batch, device=x.device)]
    return proposal


def _propose_l2(
    x: torch.Tensor, current: torch.Tensor, eps: float, share: float, bounds: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Move the perturbation of a second window into a first one, reshaped as a signed bump pair, so the
    total stays on the ball's surface."""
    batch, channels, height, width = x.shape
    size = max(round((share * height * width) ** 0.5), 3)
    size = min(size + (size % 2 == 0), height, width)
    first = (_position(height - size, generator), _position(width - size, generator))
    second = (_position(height - size, generator), _position(width - size, generator))
    win1 = (slice(None), slice(None), slice(first[0], first[0] + size), slice(first[1], first[1] + size))
    win2 = (slice(None), slice(None), slice(second[0], second[0] + size), slice(second[1], second[1] + size))
    delta = current - x
    view = (batch, 1, 1, 1)
    old = delta[win1]
    old_norm = old.pow(2).sum((-2, -1), keepdim=True).sqrt()
    mask = torch.zeros_like(x)
    mask[win1], mask[win2] = 1.0, 1.0
    windows_norm = lp_norm(delta * mask, "l2").view(view)
    image_norm = lp_norm(delta, "l2").view(view)
    pair = signed_pair(size, generator).to(device=x.device, dtype=x.dtype)
    fresh = pair.view(1, 1, size, size) * _signs((batch, channels, 1, 1), generator, x) + old / (old_norm + 1e-12)
    budget = ((eps**2 - image_norm**2).clamp(min=0) / channels + windows_norm**2).sqrt()
    fresh = fresh / (fresh.pow(2).sum((-2, -1), keepdim=True).sqrt() + 1e-12) * budget
    delta = delta.clone()
    delta[win2] = 0.0
    delta[win1] = fresh
    return (x + eps * _unit_l2(delta)).clamp(*bounds)


def square_attack(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    queries: int = 5000,
    p_init: float = 0.8,
    generator: torch.Generator,
    tick: Tick | None = None,
) -> SquareOutcome:
    """Square Attack on a batch with a budget of ``queries`` forward passes per sample."""
    with torch.no_grad():
        start = _initial_linf(x, eps, generator) if norm == "linf" else _initial_l2(x, eps, generator)
        best = start.clamp(*bounds)
        best_margin = margin(forward(best), y)
        used = torch.ones(len(x), dtype=torch.long, device=x.device)
        propose = _propose_linf if norm == "linf" else _propose_l2
        for query in range(1, queries):
            active = torch.nonzero(best_margin > 0).flatten()
            if not len(active):
                break
            if tick is not None:
                tick()
            proposal = propose(x[active], best[active], eps, window_share(p_init, query), bounds, generator)
            proposal_margin = margin(forward(proposal), y[active])
            used[active] += 1
            better = proposal_margin < best_margin[active]
            index = active[better]
            best[index], best_margin[index] = proposal[better], proposal_margin[better]
    return SquareOutcome(best, best_margin <= 0, used)
