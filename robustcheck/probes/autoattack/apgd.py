"""Auto-PGD (APGD; Croce & Hein, ICML 2020): projected gradient ascent whose step size adapts itself.

What makes it stronger than fixed-step PGD at the same cost:

* the step size starts at ``2 * eps`` and is halved at *checkpoints* (after 22% of the iterations, then at
  intervals shrinking by 3% of the budget down to 6%) when the loss oscillated (it rose in at most ``rho``
  of the steps since the last checkpoint) or when the best loss did not improve since a checkpoint at which
  the step was not halved; a halving also restarts the search from the best point so far;
* a momentum of 0.25 on the previous update (0.75 on the new one);
* the best point is kept, so a late bad step cannot undo progress; random restarts run on the samples that
  are still not fooled.

:func:`apgd` attacks one batch ``x`` ``(B, C, H, W)`` with labels ``y`` ``(B,)`` and returns the adversarials
and whether each fooled the model during the attack (the caller re-checks on the model).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from robustcheck.probes.autoattack import losses
from robustcheck.probes.autoattack.interface import (
    AttackOutcome,
    Forward,
    GradientCheck,
    Tick,
    top_other_classes,
)
from robustcheck.probes.autoattack.threat import project, random_start, unit_direction

MOMENTUM = 0.75
FIRST_CHECKPOINT = 0.22
CHECKPOINT_DECREASE = 0.03
MIN_CHECKPOINT_INTERVAL = 0.06


def checkpoint_intervals(steps: int) -> list[int]:
    """Iterations between consecutive checkpoints: ``0.22 N`` first, then 3% of ``N`` less each time, at least 6%."""
    first = max(int(FIRST_CHECKPOINT * steps), 1)
    decrease = max(int(CHECKPOINT_DECREASE * steps), 1)
    shortest = max(int(MIN_CHECKPOINT_INTERVAL * steps), 1)
    intervals, k, total = [], first, 0
    while total + k <= steps:
        intervals.append(k)
        total += k
        k = max(k - decrease, shortest)
    return intervals


def make_loss(name: str, target: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-sample loss ``loss(logits, y) -> (B,)`` called ``name``: ``ce``, ``dlr`` or ``dlr-targeted`` (with ``target``)."""
    if name == "ce":
        return losses.cross_entropy
    if name == "dlr":
        return losses.dlr
    if name == "dlr-targeted":
        if target is None:
            raise ValueError("the targeted DLR loss needs target classes")
        aimed = target
        return lambda logits, y: losses.dlr_targeted(logits, y, aimed)
    raise ValueError(f"unknown APGD loss {name!r}")


def _loss_and_gradient(
    forward: Forward,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    eot: int,
    check_gradients: GradientCheck | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss ``(B,)``, logits ``(B, K)`` and input gradient, each averaged over ``eot`` forward passes
    (expectation over transformation: a randomised model draws again on every pass)."""
    loss_sum = logits_sum = grad_sum = None
    for _ in range(eot):
        with torch.enable_grad():
            point = x_adv.detach().requires_grad_(True)
            logits = forward(point)
            loss = loss_fn(logits, y)
            grad = torch.autograd.grad(loss.sum(), point, allow_unused=True)[0]
        grad = torch.zeros_like(point) if grad is None else grad.detach()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        grad_sum = grad if grad_sum is None else grad_sum + grad
    assert loss_sum is not None and logits_sum is not None and grad_sum is not None
    if check_gradients is not None:
        check_gradients(grad_sum, inputs=x_adv)
    return loss_sum / eot, logits_sum / eot, grad_sum / eot


def apgd_run(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    loss: str,
    target: torch.Tensor | None = None,
    steps: int,
    rho: float = 0.75,
    eot: int = 1,
    tick: Tick | None = None,
    check_gradients: GradientCheck | None = None,
) -> AttackOutcome:
    """One APGD run of ``steps`` iterations from ``start`` (a point of the ball) on ``loss`` (see :func:`make_loss`).

    Fooled samples keep iterating, as in the reference implementation: the adversarial kept is the latest fooling
    point, whose loss (and margin) keeps growing, so it more often survives rounding to 8 bits."""
    batch = len(x)
    view = (batch, *([1] * (x.ndim - 1)))
    loss_fn = make_loss(loss, target)
    x_adv = project(start, x, eps, norm, bounds)
    loss_now, logits, grad = _loss_and_gradient(forward, x_adv, y, loss_fn, eot, check_gradients)
    fooled = logits.argmax(1) != y
    adversarial = x_adv.clone()
    x_best, loss_best, grad_best = x_adv.clone(), loss_now.clone(), grad.clone()
    step = torch.full(view, 2.0 * eps, dtype=x.dtype, device=x.device)
    x_prev = x_adv.clone()

    intervals = checkpoint_intervals(steps)
    history = [loss_now]  # loss at the start, then after every step: for the oscillation test
    next_check, interval_index = (intervals[0] if intervals else steps + 1), 0
    best_at_last_check = loss_best.clone()
    halved_at_last_check = torch.ones(batch, dtype=torch.bool, device=x.device)
    for i in range(steps):
        if tick is not None:
            tick()
        with torch.no_grad():
            weight = MOMENTUM if i > 0 else 1.0
            stepped = project(x_adv + step * unit_direction(grad, norm), x, eps, norm, bounds)
            moved = project(x_adv + weight * (stepped - x_adv) + (1 - weight) * (x_adv - x_prev), x, eps, norm, bounds)
            x_prev, x_adv = x_adv, moved
        loss_now, logits, grad = _loss_and_gradient(forward, x_adv, y, loss_fn, eot, check_gradients)
        wrong = logits.argmax(1) != y
        adversarial[wrong] = x_adv[wrong]
        fooled |= wrong
        history.append(loss_now)
        better = loss_now > loss_best
        x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss_now[better]

        if i + 1 == next_check:
            k = intervals[interval_index]
            recent = torch.stack(history[-(k + 1) :])
            rises = (recent[1:] > recent[:-1]).sum(0)
            oscillating = rises <= k * rho
            stalled = ~halved_at_last_check & (best_at_last_check >= loss_best)
            halve = oscillating | stalled
            halved_at_last_check, best_at_last_check = halve, loss_best.clone()
            if bool(halve.any()):
                step[halve] /= 2.0
                # restart from the best point; no momentum across the jump
                x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                x_prev[halve] = x_best[halve]
            interval_index += 1
            next_check = next_check + intervals[interval_index] if interval_index < len(intervals) else steps + 1
    return AttackOutcome(torch.where(fooled.view(view), adversarial, x_best), fooled)


def apgd(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    loss: str = "ce",
    target: torch.Tensor | None = None,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    eot: int = 1,
    generator: torch.Generator,
    tick: Tick | None = None,
    check_gradients: GradientCheck | None = None,
) -> AttackOutcome:
    """APGD on ``loss`` (``ce``, ``dlr``, ``dlr-targeted`` with ``target`` ``(B,)``) with ``restarts`` random
    starts; each restart attacks only the samples no earlier one fooled."""
    adversarial, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        todo = torch.nonzero(~fooled).flatten()
        if not len(todo):
            break
        start = random_start(x[todo], eps, norm, bounds, generator)
        outcome = apgd_run(
            forward, x[todo], y[todo], start, eps=eps, norm=norm, bounds=bounds, loss=loss,
            target=None if target is None else target[todo], steps=steps, rho=rho, eot=eot, tick=tick,
            check_gradients=check_gradients,
        )  # fmt: skip
        adversarial[todo] = outcome.adversarial
        fooled[todo] = outcome.fooled
    return AttackOutcome(adversarial, fooled)


def apgd_targeted(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    target_classes: int = 9,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    eot: int = 1,
    generator: torch.Generator,
    tick: Tick | None = None,
    check_gradients: GradientCheck | None = None,
) -> AttackOutcome:
    """APGD-T: APGD on the targeted DLR loss towards each of the ``target_classes`` most likely other classes
    in turn (ranked on the clean logits), each target attacking only the samples still not fooled."""
    with torch.no_grad():
        targets = top_other_classes(forward(x), target_classes)
    adversarial, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for column in range(targets.shape[1]):
        todo = torch.nonzero(~fooled).flatten()
        if not len(todo):
            break
        outcome = apgd(
            forward, x[todo], y[todo], eps=eps, norm=norm, bounds=bounds, loss="dlr-targeted",
            target=targets[todo, column], steps=steps, restarts=restarts, rho=rho, eot=eot, generator=generator,
            tick=tick, check_gradients=check_gradients,
        )  # fmt: skip
        adversarial[todo] = outcome.adversarial
        fooled[todo] = outcome.fooled
    return AttackOutcome(adversarial, fooled)
