"""Measuring pieces of the ``translation`` probe (:mod:`robustcheck.probes.translation.probe`).

* Model access: all views of a batch in one forward pass, penultimate features read by a hook on the
  input of the model's last ``nn.Linear``.
* :class:`CanvasPlan`: the canvas realistic views are cut from (a synthesized border around model-sized
  sources, or the larger sources as they are).
* :class:`ShiftOutcome`: one mode's predictions over the centre and shifted views, and its metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops.shifts import Offset, pad_canvas, shift_size

# --------------------------------------------------------------------------------------------
# Model access: one forward pass per batch of views, penultimate features through a hook
# --------------------------------------------------------------------------------------------


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` in module order (the classifier head of common CNNs), or None."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


@contextmanager
def penultimate_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the inputs of the model's last Linear (flattened ``(B, D)``) while the block runs.

    The list stays empty when the model has no Linear layer.
    """
    captured: list[torch.Tensor] = []
    head = last_linear(model)
    if head is None:
        yield captured
        return

    def hook(_: nn.Module, inputs: tuple[Any, ...]) -> None:
        captured.append(inputs[0].detach().flatten(1).float().cpu())

    handle = head.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def inference(model: ImageClassifier) -> Iterator[list[torch.Tensor]]:
    """Eval mode, no gradients and the penultimate-feature hook for a whole measurement (set up once, not
    per batch: for small models the per-pass bookkeeping would cost more than the forward pass)."""
    with model.eval_mode(), torch.no_grad(), penultimate_features(model) as captured:
        yield captured


def forward_views(
    model: ImageClassifier, views: torch.Tensor, captured: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run all views ``(S, B, C, h, w)`` through ``model`` in one forward pass (inside :func:`inference`,
    whose list ``captured`` the hook fills).

    Returns softmax probabilities ``(S, B, classes)`` and penultimate features ``(S, B, D)`` (None when
    no single Linear head input was captured), both on the CPU.
    """
    s, b = views.shape[:2]
    captured.clear()
    logits = model(views.flatten(0, 1).to(model.device)).float().cpu()
    probs = logits.softmax(dim=1).view(s, b, -1)
    features = captured[0].view(s, b, -1) if len(captured) == 1 and len(captured[0]) == s * b else None
    return probs, features


def defense_margin(model: ImageClassifier) -> int:
    """Extra context per side a defended model can use (``defense.context_margin``; 0 if none)."""
    return int(getattr(getattr(model, "defense", None), "context_margin", 0) or 0)


# --------------------------------------------------------------------------------------------
# Where realistic views come from
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanvasPlan:
    """How realistic views are cut from the source images.

    Attributes:
        size: ``(h, w)`` the model input in pixels.
        border: the synthesized border (``reflect`` / ``replicate`` / ``zero``) around model-sized
            sources; ``None`` when the sources are larger than the model input and used as they are.
        pad: pixels of ``border`` added on every side (0 for larger sources).
        spare: pixels by which the centred window can move in every direction on the canvas.
    """

    size: tuple[int, int]
    border: str | None
    pad: int
    spare: int

    @property
    def kind(self) -> str:
        """``padded`` (model-sized sources on a synthesized border) or ``source`` (real context)."""
        return "source" if self.border is None else "padded"

    def canvas(self, x: torch.Tensor) -> torch.Tensor:
        """The canvas ``(B, C, H + 2 pad, W + 2 pad)`` the views of source images ``x`` are cut from."""
        return x if self.border is None else pad_canvas(x, self.pad, self.border)

    def note(self) -> str:
        """What the report says about the canvas."""
        h, w = self.size
        if self.border is None:
            return (
                f"Source images are larger than the model input ({h}x{w}): realistic shifts move the window over "
                "real image content."
            )
        return (
            f"Source images are model-sized ({h}x{w}): realistic shifts cut windows from a canvas built by adding "
            f"a {self.pad} px '{self.border}' border, so a window moved by s px shows s px of synthesized border."
        )


# --------------------------------------------------------------------------------------------
# Per-mode outcome and its metrics
# --------------------------------------------------------------------------------------------


@dataclass
class ShiftOutcome:
    """Predictions of one mode for N images over the centre view (row 0) and the shifted views (rows 1..S).

    ``pred`` (top-1 class) and ``conf`` (its softmax probability) are ``(S + 1, N)``; ``tv`` (total-variation
    distance of each shifted view's softmax to the centre view's, in [0, 1]) and ``cosine`` (cosine distance
    of the penultimate features to the centre view's, in [0, 2]; None without features) are ``(S, N)``;
    ``offsets`` lists the S window moves; ``flips`` holds example flipping pairs (see :func:`flip_examples`).
    """

    offsets: list[Offset]
    pred: np.ndarray
    conf: np.ndarray
    tv: np.ndarray
    cosine: np.ndarray | None
    flips: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of images measured."""
        return self.pred.shape[1]

    def head(self, n: int) -> ShiftOutcome:
        """The outcome of the first ``n`` images."""
        return ShiftOutcome(
            self.offsets,
            self.pred[:, :n],
            self.conf[:, :n],
            self.tv[:, :n],
            self.cosine[:, :n] if self.cosine is not None else None,
            [f for f in self.flips if f["index"] < n],
        )

    @property
    def changed(self) -> np.ndarray:
        """``(S, N)``: shift s changes image n's top-1 label."""
        return self.pred[1:] != self.pred[0]

    @property
    def consistent(self) -> np.ndarray:
        """``(N,)``: image n keeps its top-1 label under every shift."""
        return ~self.changed.any(axis=0)

    def metrics(self, labels: np.ndarray, threshold: float) -> dict[str, Any]:
        """The probe's metrics for this mode (see the module docstring); ``labels`` ``(N,)``."""
        correct = self.pred[0] == labels
        consistent = self.consistent
        sizes = np.array([shift_size(o) for o in self.offsets])
        cosine = self.cosine
        return {
            "consistency": float(consistent.mean()),
            "fooling_rate": float(1.0 - consistent.mean()),
            "fooling_rate_correct": float((~consistent & correct).sum() / correct.sum())
            if correct.any()
            else None,
            "tv_distance": float(self.tv.mean()),
            "representation_change": float((cosine.max(axis=0) > threshold).mean())
            if cosine is not None
            else None,
            "mean_cosine_distance": float(cosine.mean()) if cosine is not None else None,
            "centre_accuracy": float(correct.mean()),
            "consistency_by_shift": {
                str(s): float((~self.changed[sizes == s].any(axis=0)).mean())
                for s in sorted(set(sizes.tolist()))
            },
        }


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """``(S, N)`` cosine distance of views 1..S to view 0 for features ``(S + 1, N, D)``."""
    centre = features[0].unsqueeze(0).expand_as(features[1:])
    return 1.0 - torch.nn.functional.cosine_similarity(features[1:], centre, dim=2, eps=1e-12)


def tv_distance(probs: torch.Tensor) -> torch.Tensor:
    """``(S, N)`` total-variation distance of the softmax of views 1..S to view 0 for ``probs`` ``(S + 1, N, K)``."""
    return 0.5 * (probs[1:] - probs[0]).abs().sum(dim=2)


def flip_examples(
    views: torch.Tensor, pred: torch.Tensor, conf: torch.Tensor, offsets: list[Offset], start: int, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` (centre view, first flipping view) pairs of a batch of views ``(S + 1, B, C, h, w)``
    whose first image is image ``start``: index, offset, both crops, both labels and confidences."""
    found = []
    changed = pred[1:] != pred[0]
    for b in torch.nonzero(changed.any(dim=0)).flatten().tolist()[:limit]:
        s = int(torch.nonzero(changed[:, b])[0]) + 1
        found.append(
            {
                "index": start + b,
                "offset": offsets[s - 1],
                "images": (views[0, b].numpy().copy(), views[s, b].numpy().copy()),
                "pred": (int(pred[0, b]), int(pred[s, b])),
                "conf": (float(conf[0, b]), float(conf[s, b])),
            }
        )
    return found
