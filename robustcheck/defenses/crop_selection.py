"""Robust Inference by Crop Selection (Shifman & Weiss, ECCV 2024, "Lost in Translation").

A classifier normally sees the centre crop of what the camera delivers, so a 1-pixel camera move
hands it a different crop. Crop selection instead picks the crop position from the image content:
a translation-equivariant score map (see :data:`robustcheck.shifts.SCORES`) is read at the centre of
every candidate crop and the best one is classified. The score moves with the scene, so after a
small camera move the same *physical* crop wins, unless the best position leaves (or a better one
enters) the candidate window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from robustcheck.api import Defense
from robustcheck.errors import InputError, UsageError
from robustcheck.models import ImageClassifier
from robustcheck.registry import register
from robustcheck.shifts import (
    BORDERS,
    SCORES,
    centre_crop,
    centre_origin,
    crop_at,
    lexicographic_first,
    pad_canvas,
    roll_at,
    score_support,
    spare_margin,
)

VARIANTS = ("realistic", "circular")

#: ``pixels(alive, flat)`` for :func:`lexicographic_first`, built per sample and tied candidate set.
PixelReader = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def select_best(
    scores: torch.Tensor, reader: Callable[[int, torch.Tensor], PixelReader], size: int
) -> torch.Tensor:
    """Per-row argmax of ``scores`` ``(B, N)`` with shift-equivariant tie-breaking -> ``(B,)`` indices.

    Exact ties (equal float scores; the score maps are bitwise equivariant, see :mod:`robustcheck.shifts`)
    go to the candidate whose output image is lexicographically smallest; ``reader(b, candidates)`` gives
    the pixel reader of sample ``b``'s outputs for those candidate indices; ``size`` = output ``C*H*W``.
    """
    best = scores.max(dim=1, keepdim=True).values
    tied = scores == best
    choice = tied.float().argmax(dim=1)  # first maximum; replaced below where there are several
    for b in torch.nonzero(tied.sum(dim=1) > 1).flatten().tolist():
        candidates = torch.nonzero(tied[b]).flatten()
        choice[b] = candidates[lexicographic_first(len(candidates), size, reader(b, candidates))]
    return choice


def check_score(owner: str, score: str, sigma: float) -> None:
    """Raise :class:`UsageError` for an unknown score name or a scale it cannot use."""
    if score not in SCORES:
        raise UsageError(f"{owner}: score must be one of {', '.join(SCORES)}, got {score!r}")
    if not 0.0 <= sigma <= 8.0:
        raise UsageError(f"{owner}: sigma must lie in [0, 8] pixels, got {sigma}")
    if score == "local-energy" and sigma == 0.0:
        raise UsageError(
            f"{owner}: score {score!r} needs sigma > 0 (at sigma 0 the local contrast is 0 everywhere)"
        )


class CropSelect(nn.Module):
    """The crop-selection transform: ``(B, C, H', W')`` images -> ``(B, C, h, w)`` model-sized crops.

    Args:
        size: ``(h, w)`` the model's input size (``None``: the input's own size).
        window: ``K``, odd; the realistic variant chooses among ``K x K`` crop positions around the centre.
        score: name of the content score (:data:`robustcheck.shifts.SCORES`).
        sigma: Gaussian scale of the score in pixels.
        variant: ``"realistic"`` (choose a crop inside a larger view) or ``"circular"`` (choose a roll).
        border: how the realistic variant extends a model-sized input (``reflect``/``replicate``/``zero``).
    """

    def __init__(
        self, size: Sequence[int] | None, window: int, score: str, sigma: float, variant: str, border: str
    ) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size) if size is not None else None
        self.window, self.score, self.sigma, self.variant, self.border = window, score, sigma, variant, border
        self.margin = (window - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.size or tuple(x.shape[-2:])
        if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
            raise InputError(
                f"crop-selection: input of {tuple(x.shape[-2:])} px is smaller than the model input {size}"
            )
        if self.variant == "circular":
            return self._circular(centre_crop(x, size))
        return self._realistic(x, size)

    # -- realistic: a crop inside a K x K window of positions around the centre ----------------
    def _realistic(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        h, w = size
        m = self.margin
        spare = spare_margin(x.shape[-2:], size)
        # A view with too little context is extended by the border rule (model-sized inputs: m px).
        canvas = pad_canvas(x, m - spare, self.border) if spare < m else x
        top, left = centre_origin(canvas.shape[-2:], size)
        with torch.no_grad():
            scores = self._window_scores(canvas, top + h // 2, left + w // 2)  # (B, K, K)
            k = self.window

            def reader(b: int, candidates: torch.Tensor) -> PixelReader:
                def pixels(alive: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
                    c, i, j = flat // (h * w), (flat // w) % h, flat % w
                    dy, dx = candidates[alive] // k - m, candidates[alive] % k - m
                    return canvas[b, c.view(1, -1), top + dy.view(-1, 1) + i, left + dx.view(-1, 1) + j]

                return pixels

            choice = select_best(scores.flatten(1), reader, x.shape[1] * h * w)
        tops = top + choice // self.window - m
        lefts = left + choice % self.window - m
        return crop_at(canvas, tops, lefts, size)

    def _window_scores(self, canvas: torch.Tensor, cy: int, cx: int) -> torch.Tensor:
        """Score at the centres ``(cy + dy, cx + dx)``, ``|dy|, |dx| <= m``, of the candidate crops: ``(B, K, K)``.

        Computed on the region the score depends on only (the candidate window plus the score's support),
        so the circular blur's wrap-around never reaches the values read.
        """
        m, reach = self.margin, self.margin + score_support(self.sigma, self.score)
        r0, c0 = max(0, cy - reach), max(0, cx - reach)
        r1, c1 = min(canvas.shape[-2], cy + reach + 1), min(canvas.shape[-1], cx + reach + 1)
        region = SCORES[self.score](canvas[..., r0:r1, c0:c1], self.sigma)
        return region[:, cy - m - r0 : cy + m + 1 - r0, cx - m - c0 : cx + m + 1 - c0]

    # -- circular: the roll that brings the best position of the whole image to the centre -------
    def _circular(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        cy, cx = height // 2, width // 2
        with torch.no_grad():
            scores = SCORES[self.score](x, self.sigma).flatten(1)  # (B, H*W), circular blur

            def reader(b: int, candidates: torch.Tensor) -> PixelReader:
                def pixels(alive: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
                    c, i, j = flat // (height * width), (flat // width) % height, flat % width
                    py, px = candidates[alive] // width, candidates[alive] % width
                    rows = (py.view(-1, 1) - cy + i) % height
                    cols = (px.view(-1, 1) - cx + j) % width
                    return x[b, c.view(1, -1), rows, cols]

                return pixels

            choice = select_best(scores, reader, x.shape[1] * height * width)
        return roll_at(x, choice // width - cy, choice % width - cx)


@register("defense", "crop-selection")
class CropSelection(Defense):
    """Robust Inference by Crop Selection: classify the crop chosen by a content score, not the centre crop.

    Variants (param ``variant``):

    * ``realistic``: among the ``window x window`` crop positions around the centre (offsets
      ``-m..m``, ``m = (window - 1) / 2``) take the one whose centre has the highest score. The input
      should carry ``m`` pixels of real context on every side (``context_margin``; the ``translation``
      probe hands defended models such views). A model-sized input is first extended by ``m`` pixels
      with the ``border`` rule (reflect / replicate / zero), then the crop is chosen the same way, so
      other probes (PGD, ...) run unchanged; inputs with less context than ``m`` are extended likewise.
    * ``circular``: over the whole (model-sized; larger inputs are centre-cropped first) image, take
      the position with the highest score and roll the image so that position lands on the centre
      pixel ``(H // 2, W // 2)``. ``window`` is not used.

    Ties (equal scores, e.g. flat regions, constant or periodic images) go to the candidate whose
    output image is lexicographically smallest, a rule that moves with the image.

    Scores (``score``, scale ``sigma`` in pixels): ``hashed-intensity`` (default) is a hash of the
    smoothed local intensity, which varies like independent draws between neighbouring positions, so
    its argmax lies on the window's leaving edge with probability ``~2 / (window + 1)``; measured on 400
    CIFAR-10 test images (reflect canvas, 1-pixel moves in 4 directions) the same physical crop was kept
    for 67% / 80% of moves at window 5 / 9 (theory 67% / 80%). The smooth scores ``smooth-intensity``
    and ``local-energy`` vary slowly, so their argmax often sits on the window's edge and moves with it
    (38% / 55% and 46% / 67%), but they survive pixel noise that re-draws the hash (real camera moves
    add sensor noise and sub-pixel shifts; the probe's shifts are exact integer moves).

    Guarantees (integer shifts; scores are computed with element-wise arithmetic on rolled copies,
    so they move with the image *bitwise*):

    * circular: for every image ``x`` and every integer roll ``r``, ``transform(roll(x, r))`` equals
      ``transform(x)`` exactly, ties included (several positions with equal outputs give the same
      image whichever is taken), so the defended prediction is 100% invariant to cyclic shifts.
    * realistic: if the best position, and every position tied with it, stays inside the candidate
      window after a camera move of ``s`` pixels, the same physical crop is classified. A 1-pixel move
      can only change the crop when the winner sits on the window row/column that leaves, or a better
      position enters: for scores that behave like independent draws this happens with probability
      about ``2 / (window + 1)`` per direction, so consistency rises with ``window``; the price is that the
      classified crop sits up to ``m`` pixels off centre.

    Gradients are ``"approximate"``: the crop is a gather, so autograd returns the exact derivative of
    the model with the chosen offset held fixed (true almost everywhere); but the defended function
    jumps where the choice changes, which no gradient shows (selection is computed without gradients).
    """

    defaults: ClassVar[dict[str, object]] = {
        "window": 5,
        "score": "hashed-intensity",
        "sigma": 1.0,
        "variant": "realistic",
        "border": "reflect",
    }
    gradients = "approximate"

    def validate(self) -> None:
        p = self.params
        if p["window"] < 1 or p["window"] % 2 == 0:
            raise UsageError(
                f"defense 'crop-selection': window must be a positive odd number (K x K offsets), got {p['window']}"
            )
        check_score(f"defense {self.name!r}", p["score"], p["sigma"])
        if p["variant"] not in VARIANTS:
            raise UsageError(
                f"defense 'crop-selection': variant must be 'realistic' or 'circular', got {p['variant']!r}"
            )
        if p["border"] not in BORDERS:
            raise UsageError(
                f"defense 'crop-selection': border must be one of {', '.join(BORDERS)}, got {p['border']!r}"
            )

    @property
    def context_margin(self) -> int:
        """Pixels of extra context per side the defense uses when the input offers them (realistic variant)."""
        return (self.params["window"] - 1) // 2 if self.params["variant"] == "realistic" else 0

    def transform(self, model: ImageClassifier) -> nn.Module:
        p = self.params
        size = model.input_shape[1:] if model.input_shape is not None else None
        return CropSelect(size, p["window"], p["score"], p["sigma"], p["variant"], p["border"])
