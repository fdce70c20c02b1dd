"""What a caption attack aims at: per-sample targets, success flags, the shared objective and the eps ball.

Evaluation modes (Aafaq et al. 2021): **targeted** -- the target is another image of the attacked
set with a different caption; success = the adversarial caption equals that caption exactly.
**keyword** -- a word absent from the clean caption; the target image is one whose caption
contains it; success = the word appears in the adversarial caption.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from robustcheck.errors import InputError
from robustcheck.models.captioner import ImageCaptioner

MODES = ("targeted", "keyword")

#: ``success(adv (B, C, H, W)) -> bool (B,)``: whether each candidate adversarial meets its goal.
SuccessFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackBatch:
    """One batch to attack in one mode.

    ``x``: images ``(B, C, H, W)`` in the model's bounds; ``x_target``: their target images ``(B, C, H, W)``;
    ``target_tokens``: the targets' reference captions as padded ids ``(B, T)`` (``<start>`` ... ``<end>``);
    ``success``: flags of candidate adversarials (PGD uses it to stop early).
    """

    x: torch.Tensor
    x_target: torch.Tensor
    target_tokens: torch.Tensor
    success: SuccessFn


@dataclass
class TargetPlan:
    """Per attacked sample: its clean caption, the targeted-mode target and the keyword-mode keyword and target.

    Target indices point into the attacked data (targets are other unseen images) and stay global
    in a :meth:`subset`. ``keyword_target`` is ``-1`` where no image carries a keyword absent from
    the clean caption (the sample is skipped in keyword mode).
    """

    clean: list[str]
    target: np.ndarray
    keyword: list[str]
    keyword_target: np.ndarray

    def target_index(self, mode: str) -> np.ndarray:
        """Target image index ``(N,)`` per sample in ``mode`` (``-1``: not attacked in that mode)."""
        return self.target if mode == "targeted" else self.keyword_target

    def attacked(self, mode: str) -> np.ndarray:
        """Positions ``(M,)`` of the samples attacked in ``mode``, in order."""
        return np.flatnonzero(self.target_index(mode) >= 0)

    def subset(self, rows: np.ndarray) -> TargetPlan:
        """The plan of the samples at positions ``rows`` (target indices unchanged)."""
        return TargetPlan(
            [self.clean[i] for i in rows],
            self.target[rows],
            [self.keyword[i] for i in rows],
            self.keyword_target[rows],
        )


def plan_targets(
    clean: list[str], references: list[str], generator: torch.Generator, keyword: str | None
) -> TargetPlan:
    """Draw (seeded by ``generator``) per sample a target image whose reference caption differs from
    the clean caption, and a keyword absent from the clean caption with a target image containing it
    (``keyword`` fixes the word; ``None`` draws one from the words of ``references``)."""
    n = len(clean)
    words = [set(r.split()) for r in references]
    vocabulary = sorted(set().union(*words)) if words else []
    target = np.full(n, -1)
    keyword_target = np.full(n, -1)
    keywords: list[str] = []
    for i in range(n):
        order = torch.randperm(n, generator=generator).tolist()
        target[i] = next((j for j in order if references[j] != clean[i]), -1)
        present = set(clean[i].split())
        word = (
            keyword
            if keyword is not None
            else _draw_word([w for w in vocabulary if w not in present], generator)
        )
        keywords.append(word)
        if word and word not in present:
            keyword_target[i] = next((j for j in order if word in words[j]), -1)
    if (target < 0).any():
        raise InputError("caption attacks need at least two different captions in the attacked data")
    return TargetPlan(clean, target, keywords, keyword_target)


def _draw_word(candidates: list[str], generator: torch.Generator) -> str:
    """One of ``candidates`` drawn with ``generator`` (``""`` when there is none)."""
    if not candidates:
        return ""
    return candidates[int(torch.randint(len(candidates), (1,), generator=generator))]


def succeeded(captions: list[str], plan: TargetPlan, references: list[str], mode: str) -> np.ndarray:
    """Success flags ``(N,)`` of ``captions`` aligned with ``plan``: exact target reference caption
    (targeted) or keyword present (keyword mode; never for samples without a keyword target)."""
    index = plan.target_index(mode)
    if mode == "targeted":
        return np.array([c == references[j] for c, j in zip(captions, index, strict=True)], dtype=bool)
    return np.array(
        [j >= 0 and w in c.split() for c, w, j in zip(captions, plan.keyword, index, strict=True)], dtype=bool
    )


def success_fn(model: ImageCaptioner, plan: TargetPlan, references: list[str], mode: str) -> SuccessFn:
    """A :data:`SuccessFn` for adversarial batches aligned with ``plan`` (captions them with ``model``)."""

    def success(adv: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(succeeded(model.caption(adv.detach()), plan, references, mode))

    return success


def feature_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample feature-mimicking loss ``(B,)``: squared L2 distance of ``features`` ``(B, D)`` to the
    target features ``(B, D)``, divided by the targets' mean squared norm (scale-free across captioners)."""
    scale = target.pow(2).sum(1).mean().clamp_min(1e-8).detach()
    return (features - target).pow(2).sum(1) / scale


def project(
    x: torch.Tensor, adv: torch.Tensor, eps: torch.Tensor | float, bounds: tuple[float, float]
) -> torch.Tensor:
    """``adv`` ``(B, C, H, W)`` clipped to the L-inf ball of radius ``eps`` (scalar or ``(B, 1, 1, 1)``,
    image units) around ``x`` and to ``bounds``."""
    return torch.max(torch.min(adv, x + eps), x - eps).clamp(*bounds)
