"""Targeted FAB (Fast Adaptive Boundary attack; Croce & Hein, ICML 2020): a minimal-norm adversarial.

At each step the decision boundary between the true class ``y`` and the target ``t`` is linearised at the
current point ``x_k`` (``f = z_t - z_y`` and its gradient ``g``), and both ``x_k`` and the original image ``x``
are projected onto the half-space ``f(x_k) + <g, z - x_k> >= 0`` *within the bounds*, with the smallest
perturbation in the attack's norm (:func:`min_norm_step`). The next point mixes the two projections, biased
towards the one from ``x`` (weight ``alpha <= alpha_max``) so the search stays close to the original, with an
overshoot ``eta``. Once a point is adversarial it is kept if it is the closest so far and the search steps back
towards ``x`` (factor ``beta``), then approaches the boundary again from nearer.

:func:`fab_targeted` runs this towards the most likely other classes in turn and keeps each sample's closest
adversarial; ``eps`` (optional) stops the search for samples already fooled within it (AutoAttack's use).
"""

from __future__ import annotations

import math

import torch

from robustcheck.probes.autoattack.interface import Forward, GradientCheck, Tick, top_other_classes
from robustcheck.probes.autoattack.threat import lp_norm


def min_norm_step(w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest ``delta`` (in ``norm``) with ``<w, delta> >= c`` and ``lo <= delta <= hi``, per row.

    ``w``, ``lo <= 0 <= hi``: ``(B, D)``; ``c``: ``(B,)``. By the optimality conditions the answer is
    ``delta_i = sign(w_i) * min(t, b_i) * s_i`` for one scalar ``t >= 0``: Linf ``s_i = 1``, ``b_i`` = the room of
    coordinate ``i`` in the direction of ``w_i``; L2 ``s_i = |w_i|``, ``b_i`` = room / ``|w_i|``. Then
    ``<w, delta(t)> = sum_i a_i min(t, b_i)`` (``a_i = |w_i|`` or ``w_i^2``) is piecewise linear and increasing,
    and ``t`` is found exactly by sorting the breakpoints ``b_i``. Rows with ``c <= 0`` get zero; rows the box
    cannot satisfy get the largest move it allows (as close to the half-space as the bounds permit).
    """
    magnitude = w.abs()
    room = torch.where(w > 0, hi, -lo).clamp(min=0)
    if norm == "linf":
        weight, breakpoint = magnitude, room
    else:
        weight = magnitude**2
        breakpoint = torch.where(magnitude > 0, room / magnitude.clamp(min=1e-30), torch.zeros_like(room))
    b_sorted, order = breakpoint.sort(dim=1)
    a_sorted = weight.gather(1, order)
    a_total = a_sorted.sum(1, keepdim=True)
    a_cum = a_sorted.cumsum(1)
    value_at = (a_sorted * b_sorted).cumsum(1) + b_sorted * (a_total - a_cum)  # <w, delta> at each breakpoint
    need = c.unsqueeze(1)
    below = (value_at < need).sum(1, keepdim=True)  # breakpoints passed before reaching c
    columns = value_at.shape[1]
    prev = (below - 1).clamp(min=0)
    prev_b = torch.where(below > 0, b_sorted.gather(1, prev), torch.zeros_like(need))
    prev_value = torch.where(below > 0, value_at.gather(1, prev), torch.zeros_like(need))
    slope = torch.where(below > 0, a_total - a_cum.gather(1, prev), a_total)
    t = prev_b + (need - prev_value) / slope.clamp(min=1e-30)
    reachable = below < columns
    t = torch.where(reachable, t, b_sorted[:, -1:] if columns else torch.zeros_like(need))
    scale = torch.ones_like(w) if norm == "linf" else magnitude
    delta = w.sign() * torch.minimum(t, breakpoint) * scale
    return torch.where(need > 0, delta, torch.zeros_like(delta))


def _difference_and_gradient(
    forward: Forward, x_k: torch.Tensor, y: torch.Tensor, target: torch.Tensor, check_gradients: GradientCheck | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``f = z_t - z_y`` ``(B,)`` at ``x_k`` and its input gradient ``(B, C, H, W)``."""
    with torch.enable_grad():
        point = x_k.detach().requires_grad_(True)
        logits = forward(point)
        f = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
        grad = torch.autograd.grad(f.sum(), point, allow_unused=True)[0]
    grad = torch.zeros_like(point) if grad is None else grad.detach()
    if check_gradients is not None:
        check_gradients(grad, inputs=x_k)
    return f.detach(), grad


def fab_run(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    start: torch.Tensor,
    *,
    norm: str,
    bounds: tuple[float, float],
    steps: int = 100,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    tick: Tick | None = None,
    check_gradients: GradientCheck | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run towards ``target`` ``(B,)`` from ``start``: the closest adversarial found and its norm
    (``inf`` where none was found; the adversarial is then ``x``)."""
    low, high = bounds
    view = (len(x), *([1] * (x.ndim - 1)))
    flat_x = x.flatten(1)
    best, best_norm = x.clone(), torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
    x_k = start.clone()
    for _ in range(steps):
        if tick is not None:
            tick()
        f, g = _difference_and_gradient(forward, x_k, y, target, check_gradients)
        with torch.no_grad():
            w, flat_k = g.flatten(1), x_k.flatten(1)
            # the half-space f + <g, z - x_k> >= 0, seen from x_k and from the original x
            step_k = min_norm_step(w, -f, low - flat_k, high - flat_k, norm).view_as(x)
            step_0 = min_norm_step(w, -f - (w * (flat_x - flat_k)).sum(1), low - flat_x, high - flat_x, norm).view_as(x)
            n_k, n_0 = lp_norm(step_k, norm), lp_norm(step_0, norm)
            alpha = (n_k / (n_k + n_0 + 1e-12)).clamp(0.0, alpha_max).view(view)
            x_k = ((1 - alpha) * (x_k + eta * step_k) + alpha * (x + eta * step_0)).clamp(low, high)
            wrong = forward(x_k).argmax(1) != y
            distance = lp_norm(x_k - x, norm)
            closer = wrong & (distance < best_norm)
            best[closer], best_norm[closer] = x_k[closer], distance[closer]
            # step back towards x: the next approach starts nearer to it
            x_k = torch.where(wrong.view(view), x + beta * (x_k - x), x_k)
    return best, best_norm


def _restart_point(
    x: torch.Tensor, radius: torch.Tensor, norm: str, bounds: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """A random start at half of ``radius`` ``(B,)`` from ``x`` (FAB's restarts search near the best so far)."""
    view = (len(x), *([1] * (x.ndim - 1)))
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator) - 1
    else:
        t = torch.randn(x.shape, generator=generator)
    t = t.to(device=x.device, dtype=x.dtype)
    t = t / (lp_norm(t, norm).view(view) + 1e-12)
    return (x + 0.5 * radius.view(view) * t).clamp(*bounds)


def fab_targeted(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    bounds: tuple[float, float],
    eps: float | None = None,
    restart_radius: float,
    target_classes: int = 9,
    steps: int = 100,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator,
    tick: Tick | None = None,
    check_gradients: GradientCheck | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB-T: the closest adversarial ``(B, C, H, W)`` over ``target_classes`` targets and ``restarts`` runs each
    (the first from ``x`` itself, later ones from random points at half the smaller of ``restart_radius`` and the
    best norm so far), and its norm ``(B,)`` (``inf``: none found).

    With ``eps``, samples already fooled within ``eps`` are not attacked again (AutoAttack only needs one
    adversarial inside the ball); without it every target and restart runs for every sample (closest found).
    """
    with torch.no_grad():
        targets = top_other_classes(forward(x), target_classes)
    best, best_norm = x.clone(), torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
    for column in range(targets.shape[1]):
        for restart in range(restarts):
            todo = torch.arange(len(x), device=x.device) if eps is None else torch.nonzero(~(best_norm <= eps)).flatten()
            if not len(todo):
                return best, best_norm
            if restart == 0:
                start = x[todo]
            else:
                radius = torch.clamp(best_norm[todo], max=restart_radius)
                start = _restart_point(x[todo], radius, norm, bounds, generator)
            found, found_norm = fab_run(
                forward, x[todo], y[todo], targets[todo, column], start, norm=norm, bounds=bounds, steps=steps,
                alpha_max=alpha_max, eta=eta, beta=beta, tick=tick, check_gradients=check_gradients,
            )  # fmt: skip
            closer = found_norm < best_norm[todo]
            index = todo[closer]
            best[index], best_norm[index] = found[closer], found_norm[closer]
    return best, best_norm
