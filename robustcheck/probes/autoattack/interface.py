"""What the attack functions share: how they call the model, report time and check gradients, what they
return, and how targeted attacks pick their target classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``logits (B, K) = forward(images (B, C, H, W))``: the model (or its expectation over random draws)
Forward = Callable[[torch.Tensor], torch.Tensor]
#: called once per iteration: raises :class:`~robustcheck.errors.ProbeTimeout` when the budget is spent
Tick = Callable[[], None]
#: ``check(grad, inputs=x)`` raises on NaN / Inf gradients (the model adapter's ``check_gradients``)
GradientCheck = Callable[..., None]


@dataclass
class AttackOutcome:
    """``adversarial`` ``(B, C, H, W)`` and ``fooled`` ``(B,)``: whether it fooled the model during the attack
    (callers re-check on the model). Where not fooled, ``adversarial`` is the attack's best try."""

    adversarial: torch.Tensor
    fooled: torch.Tensor


def top_other_classes(logits: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, count)`` target classes: the 2nd to ``(count + 1)``-th largest clean logits of each sample (the
    classes a correctly classified sample is most easily pushed into); at most ``K - 1`` of them."""
    count = min(count, logits.shape[1] - 1)
    return logits.argsort(dim=1, descending=True)[:, 1 : count + 1]
