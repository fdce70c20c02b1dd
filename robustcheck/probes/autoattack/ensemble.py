"""AutoAttack (Croce & Hein, ICML 2020): a fixed sequence of complementary, parameter-free attacks.

Each part attacks only the samples that every earlier part failed to fool, and a sample counts as robust only
if no part fooled it: the per-sample worst case over the parts at the cost of roughly one strong attack.

* ``standard`` (deterministic models): APGD-CE, APGD-T (targeted DLR, 9 targets), FAB-T (9 targets), Square
  (5000 queries): two gradient losses, a minimal-norm boundary attack and a gradient-free search, so gradient
  masking that defeats one part rarely defeats all of them.
* ``rand`` (randomised defenses): APGD-CE and APGD-DLR with expectation over transformation (gradients averaged
  over ``eot`` forward passes; 20 by default), as the AutoAttack authors recommend.

Every candidate is clipped into the ball and the bounds, and judged by ``verify`` (the caller's re-check on the
model) before it counts, so a part's own success flags never decide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from robustcheck.probes.autoattack.apgd import apgd, apgd_targeted
from robustcheck.probes.autoattack.fab import fab_targeted
from robustcheck.probes.autoattack.interface import Forward, GradientCheck, Tick
from robustcheck.probes.autoattack.square import square_attack
from robustcheck.probes.autoattack.threat import project

PARTS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr")
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
#: ``fooled (n,) = verify(adversarials (n, C, H, W), labels (n,))``: the model's verdict on clipped candidates
Verify = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PartSettings:
    """The budgets of the parts: APGD and FAB ``steps`` and ``restarts``, targets of APGD-T and FAB-T,
    Square's ``queries`` and ``p_init``, and the ``eot`` passes per APGD gradient."""

    steps: int = 100
    restarts: int = 1
    target_classes: int = 9
    queries: int = 5000
    p_init: float = 0.8
    eot: int = 1
    rho: float = 0.75


@dataclass
class EnsembleOutcome:
    """``adversarial`` ``(B, C, H, W)`` (clipped; ``x`` where nothing fooled), ``fooled`` ``(B,)`` (verified),
    ``fooled_by`` (the part that fooled each sample first, ``None``: none) and Square's ``queries`` ``(B,)``."""

    adversarial: torch.Tensor
    fooled: torch.Tensor
    fooled_by: list[str | None]
    queries: torch.Tensor


def run_part(
    part: str,
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    settings: PartSettings,
    generator: torch.Generator,
    tick: Tick | None = None,
    check_gradients: GradientCheck | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One part on ``x`` at ``eps``: its candidates ``(n, C, H, W)`` and, for Square, the queries it used ``(n,)``."""
    common = {"eps": eps, "norm": norm, "bounds": bounds, "generator": generator, "tick": tick}
    apgd_budget = {"steps": settings.steps, "restarts": settings.restarts, "rho": settings.rho, "eot": settings.eot}
    if part in ("apgd-ce", "apgd-dlr"):
        loss = "ce" if part == "apgd-ce" else "dlr"
        outcome = apgd(forward, x, y, loss=loss, check_gradients=check_gradients, **apgd_budget, **common)
        return outcome.adversarial, None
    if part == "apgd-t":
        outcome = apgd_targeted(
            forward, x, y, target_classes=settings.target_classes, check_gradients=check_gradients, **apgd_budget, **common
        )
        return outcome.adversarial, None
    if part == "fab-t":
        adversarial, _ = fab_targeted(
            forward, x, y, restart_radius=eps, target_classes=settings.target_classes, steps=settings.steps,
            restarts=settings.restarts, check_gradients=check_gradients, **common,
        )  # fmt: skip
        return adversarial, None
    if part == "square":
        found = square_attack(forward, x, y, queries=settings.queries, p_init=settings.p_init, **common)
        return found.adversarial, found.queries
    raise ValueError(f"unknown AutoAttack part {part!r}; parts: {', '.join(PARTS)}")


def autoattack(
    parts: Sequence[str],
    forward: Forward,
    verify: Verify,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    settings: PartSettings,
    generator: torch.Generator,
    tick: Tick | None = None,
    check_gradients: GradientCheck | None = None,
) -> EnsembleOutcome:
    """Run ``parts`` in order at ``eps``, each on the samples still robust; the first verified adversarial of a
    sample is kept. ``x`` should hold correctly classified samples only (others are attacked like the rest)."""
    adversarial = x.clone()
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    fooled_by: list[str | None] = [None] * len(x)
    queries = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for part in parts:
        todo = torch.nonzero(robust).flatten()
        if not len(todo):
            break
        candidates, used = run_part(
            part, forward, x[todo], y[todo], eps=eps, norm=norm, bounds=bounds, settings=settings,
            generator=generator, tick=tick, check_gradients=check_gradients,
        )  # fmt: skip
        candidates = project(candidates, x[todo], eps, norm, bounds)
        fooled = verify(candidates, y[todo]).to(x.device)
        if used is not None:
            queries[todo] += used
        index = todo[fooled]
        adversarial[index] = candidates[fooled]
        robust[index] = False
        for i in index.tolist():
            fooled_by[i] = part
    return EnsembleOutcome(adversarial, ~robust, fooled_by, queries)
