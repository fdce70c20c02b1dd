"""Robust Inference by Crop Selection (Shifman & Weiss, ECCV 2024, "Lost in Translation").

A classifier normally sees the centre crop of what the camera delivers, so a 1-pixel camera move
hands it a different crop. Crop selection instead picks the crop position from the image content:
a translation-equivariant score map (see :data:`robustcheck.ops.shifts.SCORES`) is read at the centre of
every candidate crop and the best one is classified. The score moves with the scene, so after a
small camera move the same *physical* crop wins, unless the best position leaves (or a better one
enters) the candidate window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from robustcheck.api import Defense
from robustcheck.errors import InputError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops.shifts import (
    BORDERS,
    SCORES,
    centre_crop,
    centre_origin,
    crop_at,
    pad_canvas,
    score_support,
    spare_margin,
)
from robustcheck.params import Param

VARIANTS = ("realistic", "circular")
#: output positions compared at a time when breaking ties (memory: tied candidates x chunk)
_TIE_CHUNK = 256


def crop_pixels(
    image: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: Sequence[int], flat: torch.Tensor
) -> torch.Tensor:
    """Values ``(N, P)`` of the ``N`` crops of ``image`` ``(C, H, W)`` at ``(tops[n], lefts[n])`` (wrapping as
    :func:`robustcheck.ops.shifts.crop_at`) at ``P`` flattened ``(c, i, j)`` output positions ``flat``."""
    h, w = int(size[0]), int(size[1])
    height, width = image.shape[-2:]
    c, i, j = flat // (h * w), (flat // w) % h, flat % w
    rows = (tops.view(-1, 1) + i) % height
    cols = (lefts.view(-1, 1) + j) % width
    return image[c.view(1, -1), rows, cols]


def lexicographically_first(
    image: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: Sequence[int]
) -> int:
    """Index of the crop (of ``image`` ``(C, H, W)`` at ``(tops[n], lefts[n])``) whose pixels, read in
    ``(c, i, j)`` order, are lexicographically smallest.

    The rule depends on the crops' pixels only, so it moves with the image (shift-equivariant
    tie-breaking). When several crops are identical (periodic images, e.g. constant ones) the first is
    returned: any of them gives the same output.
    """
    alive = torch.arange(len(tops), device=tops.device)
    total = image.shape[0] * int(size[0]) * int(size[1])
    for start in range(0, total, _TIE_CHUNK):
        flat = torch.arange(start, min(start + _TIE_CHUNK, total), device=image.device)
        values = crop_pixels(image, tops[alive], lefts[alive], size, flat).detach().cpu().numpy()
        smallest = values[np.lexsort(values.T[::-1])[0]]  # lexsort's primary key is its last
        alive = alive[torch.from_numpy((values == smallest).all(axis=1)).to(alive.device)]
        if len(alive) == 1:
            break
    return int(alive[0])


def select_crops(
    x: torch.Tensor, scores: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners ``(B,)``, ``(B,)`` of each sample's best candidate crop.

    Args:
        x: ``(B, C, H, W)`` the images the crops are cut from.
        scores: ``(B, N)`` content score of each of the ``N`` candidates.
        tops, lefts: ``(N,)`` candidate corners (as :func:`robustcheck.ops.shifts.crop_at` reads them).
        size: ``(h, w)`` crop size.

    The highest score wins. Exact ties (equal float scores; the score maps are bitwise equivariant, see
    :mod:`robustcheck.ops.shifts`) go to the lexicographically smallest crop, which keeps the choice
    shift-equivariant where "the first maximum" would depend on where the image sits.
    """
    best = scores == scores.max(dim=1, keepdim=True).values
    choice = best.float().argmax(dim=1)  # the first maximum; replaced below where several tie
    for b in torch.nonzero(best.sum(dim=1) > 1).flatten().tolist():
        tied = torch.nonzero(best[b]).flatten()
        choice[b] = tied[lexicographically_first(x[b], tops[tied], lefts[tied], size)]
    return tops[choice], lefts[choice]


#: the largest Gaussian scale of a score, in pixels
MAX_SIGMA = 8.0


def check_score_scale(score: str, sigma: float) -> None:
    """Raise :class:`UsageError` (naming no plugin) if ``score`` cannot use the scale ``sigma``."""
    if score == "local-energy" and sigma == 0.0:
        raise UsageError(f"score {score!r} needs sigma > 0 (at sigma 0 the local contrast is 0 everywhere)")


def check_score(owner: str, score: str, sigma: float) -> None:
    """Raise :class:`UsageError` for an unknown score name or a scale it cannot use."""
    if score not in SCORES:
        raise UsageError(f"{owner}: score must be one of {', '.join(SCORES)}, got {score!r}")
    if not 0.0 <= sigma <= MAX_SIGMA:
        raise UsageError(f"{owner}: sigma must lie in [0, {MAX_SIGMA:g}] pixels, got {sigma}")
    try:
        check_score_scale(score, sigma)
    except UsageError as exc:
        raise UsageError(f"{owner}: {exc}") from None


class CropSelect(nn.Module):
    """The crop-selection transform: ``(B, C, H', W')`` images -> ``(B, C, h, w)`` model-sized crops.

    Args:
        size: ``(h, w)`` the model's input size (``None``: the input's own size).
        window: ``K``, odd; the realistic variant chooses among ``K x K`` crop positions around the centre.
        score: name of the content score (:data:`robustcheck.ops.shifts.SCORES`).
        sigma: Gaussian scale of the score in pixels.
        variant: ``"realistic"`` (choose a crop inside a larger view) or ``"circular"`` (choose a roll).
        border: how the realistic variant extends a model-sized input (``reflect``/``replicate``/``zero``).
    """

    def __init__(
        self, size: Sequence[int] | None, window: int, score: str, sigma: float, variant: str, border: str
    ) -> None:
        super().__init__()
        self.size: tuple[int, int] | None = (int(size[0]), int(size[1])) if size is not None else None
        self.window, self.score, self.sigma, self.variant, self.border = window, score, sigma, variant, border
        self.margin = (window - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H', W')`` within the model's bounds -> the selected crops ``(B, C, h, w)``."""
        size = self.size or (x.shape[-2], x.shape[-1])
        if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
            raise InputError(
                f"crop-selection: input of {tuple(x.shape[-2:])} px is smaller than the model input {size}"
            )
        if self.variant == "circular":
            return self._circular(centre_crop(x, size))
        return self._realistic(x, size)

    # -- realistic: a crop inside a K x K window of positions around the centre ----------------
    def _realistic(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        m = self.margin
        spare = spare_margin(x.shape[-2:], size)
        # A view with too little context is extended by the border rule (model-sized inputs: m px).
        canvas = pad_canvas(x, m - spare, self.border) if spare < m else x
        top, left = centre_origin(canvas.shape[-2:], size)
        steps = torch.arange(-m, m + 1, device=x.device)
        dy, dx = (d.flatten() for d in torch.meshgrid(steps, steps, indexing="ij"))  # (K*K,) row-major
        with torch.no_grad():
            scores = self._window_scores(canvas, top + h // 2, left + w // 2).flatten(1)  # (B, K*K)
            tops, lefts = select_crops(canvas, scores, top + dy, left + dx, size)
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
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        py, px = (d.flatten() for d in torch.meshgrid(rows, cols, indexing="ij"))  # (H*W,) row-major
        with torch.no_grad():
            scores = SCORES[self.score](x, self.sigma).flatten(1)  # (B, H*W), circular blur
            # a full-size crop at (py - H // 2, px - W // 2) is the roll that puts (py, px) at the centre
            tops, lefts = select_crops(x, scores, py - height // 2, px - width // 2, (height, width))
        return crop_at(x, tops, lefts, (height, width))


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
    smoothed local intensity, which varies like independent draws between neighbouring positions, so a
    1-pixel move changes the chosen crop with probability ``~2 / (window + 1)`` (the best of the
    ``window x (window + 1)`` positions the two windows see lies on the row/column that leaves or enters
    one of them); measured on 400 CIFAR-10 test images (40 per class, reflect canvas, 1-pixel moves in 4
    directions) the same physical crop was kept for 48% / 66% / 80% of moves at window 3 / 5 / 9 (theory
    50% / 67% / 80%), for all 4 moves of an image only 5% / 19% / 41%. The smooth scores
    ``smooth-intensity`` and ``local-energy`` vary slowly, so their argmax often sits on the window's edge
    and moves with it (kept for 37% / 56% and 44% / 65% of moves at window 5 / 9), but they survive pixel
    noise that re-draws the hash (real camera moves add sensor noise and sub-pixel shifts; the probe's
    shifts are exact integer moves).

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

    Limits (measured on the same 400 images with the CIFAR-10 fixture CNN of the tests, ``hashed-intensity``):
    when the physical crop stayed the same the label never changed, but a changed crop jumps by up to
    ``window`` pixels and flips the label more often than a 1-pixel move does (13% / 18% / 33% of the
    changed moves at window 3 / 5 / 9, against 8% of the bare model's moves), and an image counts as
    fooled when any of its moves flips it: fooling rate 18.3% without, 17.7% / 17.5% / 22.2% with crop
    selection at window 3 / 5 / 9 (accuracy 70.3% -> 72.5% / 72.0% / 66.0%). Crop selection pays off only
    where (crop-change rate) x (flip rate of a changed crop) falls well below the bare model's flip rate.
    In the paper's geometry (crops inside larger real images, large K; ``benchmarks/bench_crop_selection.py``:
    CIFAR-10 resized to 156 px, 128 px crops, 1,000 images) fooling went from 6.4% to 4.9% at window 25
    for 1.3 points of accuracy: a small CNN's labels differ between crops a few pixels apart too often.

    Gradients are ``"approximate"``: the crop is a gather, so autograd returns the exact derivative of
    the model with the chosen offset held fixed (true almost everywhere); but the defended function
    jumps where the choice changes, which no gradient shows (selection is computed without gradients).
    """

    #: set here, not only by the registry: the translation probe builds this defense directly
    name = "crop-selection"
    window = Param(
        5,
        "K: the realistic variant chooses among K x K crop positions around the centre",
        ge=1,
        check=lambda k: k % 2 == 1,
        check_doc="odd",
    )
    score = Param("hashed-intensity", "content score read at each candidate's centre", choices=tuple(SCORES))
    sigma = Param(1.0, "Gaussian scale of the score in pixels", ge=0, le=MAX_SIGMA)
    variant = Param("realistic", "choose a crop inside a larger view, or roll the image", choices=VARIANTS)
    border = Param("reflect", "how the realistic variant extends a model-sized input", choices=BORDERS)
    gradients = "approximate"

    def validate(self) -> None:
        check_score_scale(self.score, self.sigma)

    @property
    def context_margin(self) -> int:
        """Pixels of extra context per side the defense uses when the input offers them (realistic variant)."""
        return (self.window - 1) // 2 if self.variant == "realistic" else 0

    def transform(self, model: ImageClassifier) -> nn.Module:
        size = model.input_shape[1:] if model.input_shape is not None else None
        return CropSelect(size, self.window, self.score, self.sigma, self.variant, self.border)
