"""One-pixel translation probe (Shifman & Weiss, ECCV 2024, "Lost in Translation").

The measuring pieces (forward pass, canvas, per-mode outcome and metrics) live in
:mod:`robustcheck.probes.translation.measure`; shifts and crops in :mod:`robustcheck.ops.shifts`.

Does the model's answer survive a camera move of one pixel?

* **Realistic** shifts cut the model-sized window out of a larger image at the centre and at the
  centre moved by ``1..max_shift`` pixels in 4 or 8 directions (never resizing after the move).
  Images larger than the model input are used as they are; model-sized images get an explicit
  canvas: ``pad`` pixels of ``border`` (``reflect`` / ``replicate`` / ``zero``) around them, which is
  recorded in the metrics and stated in the report (a window moved by ``s`` pixels then shows ``s``
  pixels of synthesized border).
* **Cyclic** shifts roll the model-sized (centre) image by the same offsets (``torch.roll``), the
  setting in which anti-aliased / polyphase models are invariant by construction.

Every view of a batch (centre + all shifts) goes through the model in one forward pass. The model must
declare ``input_shape`` (the runner takes it from the data when a model declares none); every view a bare
network sees has that size (a defended model may get extra context, which its defense crops away).

Metrics (per mode; prefixed ``realistic/`` and ``cyclic/`` when ``mode=both``):
``consistency`` (share of images whose top-1 label is the same for every shift), ``fooling_rate``
(share with at least one shift changing top-1, = 1 - consistency), ``fooling_rate_correct`` (the same
among images whose centre view is classified correctly), ``tv_distance`` (mean total-variation
distance between the softmax of the centre view and of each shifted view), ``representation_change``
(share of images whose penultimate features, read by a hook on the input of the last ``nn.Linear``,
move by a cosine distance above ``threshold`` for some shift; ``None`` when the model has no Linear
head), ``mean_cosine_distance`` (of those features, over images and shifts), ``centre_accuracy`` and
``consistency_by_shift`` (shift size -> consistency under the shifts of that size). Score = 1 -
``fooling_rate`` of the realistic mode (of the cyclic mode when it runs alone).

Defended models that declare ``context_margin`` (``crop-selection``, realistic variant) receive views
with that many extra pixels of the same canvas per side (``context=True``), as a camera delivers more
than the network's input: their candidate crops then come from the canvas the shifts move over (real
content for larger sources) instead of a border the defense would synthesize around each view, which
would not move with the scene.

Trade-off (``windows``): the same realistic measurement with ``crop-selection`` of each window ``K``
applied to the model (plus its circular variant under cyclic shifts when the cyclic mode runs), as
a table of accuracy vs fooling rate and curves ``tradeoff/fooling_rate`` and ``tradeoff/accuracy``
over ``K`` (``K = 1`` is the model as given: the centre crop).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from robustcheck.api import Artifact, Probe, ProbeResult, RunContext, Table
from robustcheck.data.dataset import ImageDataset
from robustcheck.defenses.crop_selection import CropSelection
from robustcheck.errors import InputError, ProbeTimeout, UsageError
from robustcheck.models.classifier import INPUT_SHAPE_HINT, ImageClassifier
from robustcheck.ops.shifts import (
    BORDERS,
    SCORES,
    Offset,
    centre_crop,
    cyclic_views,
    shift_offsets,
    shift_size,
    spare_margin,
    window_views,
)
from robustcheck.params import Param
from robustcheck.probes.translation.measure import (
    CanvasPlan,
    ShiftOutcome,
    cosine_distance,
    defense_margin,
    flip_examples,
    forward_views,
    inference,
    tv_distance,
)

MODES = ("realistic", "cyclic", "both")
CENTRE: Offset = (0, 0)


def _tradeoff_row(
    defense: str, window: int | None, shifts: str, outcome: ShiftOutcome, labels: np.ndarray
) -> dict[str, Any]:
    """One row of the crop-selection trade-off table: accuracy on the centre view vs fooling rate."""
    consistent = outcome.consistent
    return {
        "defense": defense,
        "window": window,
        "shifts": shifts,
        "accuracy": float((outcome.pred[0] == labels).mean()),
        "fooling_rate": float(1.0 - consistent.mean()),
        "consistency": float(consistent.mean()),
    }


def _is_odd(value: int) -> bool:
    return value % 2 == 1


def _distinct(windows: list[int]) -> list[int]:
    """``windows`` (sorted by the declaration) without repeats: each trade-off window is measured once."""
    return list(dict.fromkeys(windows))


def _with_baseline_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``accuracy_drop`` and ``fooling_reduction`` relative to the window-1 row of the same kind of shift
    (NaN reduction where crop selection leaves no image fooled)."""
    base = frame[frame["window"] == 1].set_index("shifts")
    base_accuracy = frame["shifts"].map(base["accuracy"])
    base_fooling = frame["shifts"].map(base["fooling_rate"])
    frame["accuracy_drop"] = base_accuracy - frame["accuracy"]
    frame["fooling_reduction"] = (base_fooling / frame["fooling_rate"]).where(frame["fooling_rate"] > 0)
    return frame


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------


class TranslationProbe(Probe):
    """One-pixel realistic and cyclic shifts (Shifman & Weiss 2024): consistency and fooling rate."""

    name = "translation"  # also the registry name; error messages of direct instances use it
    in_default_audit = True
    #: data may be larger than ``model.input_shape`` (the window is cut from it): for the runner's shape check
    accepts_larger_inputs: ClassVar[bool] = True
    score_doc = (
        "1 - fooling rate under realistic shifts of 1..max_shift pixels: the share of images whose top-1 label "
        "is the same for the centre crop and every shifted crop (cyclic shifts when mode=cyclic)."
    )
    mode = Param("realistic", "which shifts: realistic window moves, cyclic rolls or both", choices=MODES)
    max_shift = Param(1, "largest shift in pixels (shifts of 1..max_shift)", ge=1)
    directions = Param(4, "shift directions: 4 (axes) or 8 (with diagonals)", choices=(4, 8))
    samples = Param(None, "images measured (none: all of the data)", type=int, ge=1)
    border = Param("reflect", "border synthesized around model-sized images", choices=BORDERS)
    pad = Param(None, "canvas border in pixels (none: max_shift plus the context needed)", type=int, ge=0)
    threshold = Param(
        0.05, "cosine distance of penultimate features that counts as a representation change", ge=0.0, le=2.0
    )
    context = Param(True, "hand defended models their extra context from the same canvas")
    windows = Param(
        [3, 5, 9],
        "crop-selection windows K of the trade-off table ([]: no trade-off)",
        ge=1,
        check=_is_odd,
        check_doc="odd",
        sort=True,
    )
    score = Param(
        "hashed-intensity", "content score of crop selection in the trade-off", choices=tuple(SCORES)
    )
    sigma = Param(1.0, "Gaussian scale of the crop-selection score in pixels", ge=0.0, le=8.0)
    examples = Param(4, "flipping image pairs kept as report examples", ge=0)

    def validate(self) -> None:
        if self.pad is not None:
            need = self.max_shift + self._window_margin()
            if self.pad < need:
                raise UsageError(
                    f"max_shift={self.max_shift} (plus {need - self.max_shift} px of context for the "
                    f"windows {_distinct(self.windows)}) is larger than the canvas border pad={self.pad}; "
                    f"use pad >= {need} or leave pad unset"
                )
        if self.score == "local-energy" and self.sigma == 0.0:
            raise UsageError(
                f"score {self.score!r} needs sigma > 0 (at sigma 0 the local contrast is 0 everywhere)"
            )

    # -- geometry ------------------------------------------------------------------------------
    def _modes(self) -> list[str]:
        return ["realistic", "cyclic"] if self.mode == "both" else [self.mode]

    def _window_margin(self) -> int:
        """Context per side the trade-off's largest realistic crop-selection window uses (0 if none runs)."""
        if "realistic" not in self._modes():
            return 0
        return max(((k - 1) // 2 for k in self.windows), default=0)

    def _canvas_plan(self, model: ImageClassifier, data: ImageDataset, margin: int) -> CanvasPlan:
        """Model-sized sources get a border of ``pad`` px; larger ones are used as they are. ``margin``: context
        per side the (defended) model takes."""
        shape = model.input_shape
        # never guess (e.g. from the data): views of another size crash or mis-measure a fixed-size network
        # (not a requirement checked up front: an audit plan drops default probes whose requirements a model
        # does not meet, and the runner gives the model the data's shape only after planning)
        if shape is None:
            raise UsageError(
                f"probe {self.name!r} needs the input size of model {model.name!r}, which declares no input_shape "
                f"(the probe cuts model-sized windows out of a larger canvas); {INPUT_SHAPE_HINT}"
            )
        if shape[0] != data.shape[0]:
            raise InputError(
                f"data {data.name!r} has {data.shape[0]} channels, model {model.name!r} expects {shape[0]}"
            )
        size, source = (int(shape[1]), int(shape[2])), (int(data.shape[1]), int(data.shape[2]))
        max_shift = self.max_shift
        if source[0] < size[0] or source[1] < size[1]:
            raise InputError(
                f"data {data.name!r} images of {source[0]}x{source[1]} px are smaller than the model input "
                f"{size[0]}x{size[1]}"
            )
        if source == size:
            pad = self.pad
            if pad is None:
                pad = max_shift + max(margin, self._window_margin())
            elif pad < max_shift + margin:
                raise UsageError(
                    f"probe {self.name!r}: the defended model uses {margin} px of context; pad={pad} is smaller "
                    f"than max_shift + context = {max_shift + margin}"
                )
            return CanvasPlan(size, self.border, pad, pad)
        spare = spare_margin(source, size)
        if spare < max_shift + margin:
            raise InputError(
                f"data {data.name!r} images of {source[0]}x{source[1]} px leave {spare} px around the model's "
                f"{size[0]}x{size[1]} window; max_shift={max_shift} plus {margin} px of defense context need "
                f"{max_shift + margin}"
            )
        return CanvasPlan(size, None, 0, spare)

    # -- measuring -----------------------------------------------------------------------------
    def _measure(
        self,
        model: ImageClassifier,
        data: ImageDataset,
        plan: CanvasPlan,
        mode: str,
        margin: int,
        context: RunContext,
        *,
        examples: int = 0,
        progress: bool = False,
        complete: bool = False,
    ) -> ShiftOutcome:
        """Predictions on the centre and shifted views of every image of ``data``, batch by batch.

        ``margin``: extra context per side of the realistic views (for a defended model that chooses its own
        crop); ``examples``: flipping pairs to keep; ``progress``: report finished images to the runner. When
        the time budget is spent (between batches or inside one), returns what finished (``count`` tells), or raises
        :class:`ProbeTimeout` when nothing finished or ``complete`` asks for every image (a trade-off row
        compares whole sets).
        """
        offsets = shift_offsets(self.max_shift, self.directions)
        step = context.batch_size  # images per forward pass, each with all its views
        preds, confs, tvs, cosines, flips = [], [], [], [], []
        with inference(model) as captured:
            for start in range(0, len(data), step):
                x = data.x[start : start + step]
                if mode == "realistic":
                    views = window_views(plan.canvas(x), [CENTRE, *offsets], plan.size, margin)
                else:
                    views = cyclic_views(centre_crop(x, plan.size), [CENTRE, *offsets])
                try:
                    context.check_time()
                    probs, features = self._forward(model, views, captured)  # the model may stop it too
                except ProbeTimeout:
                    if complete or not preds:
                        raise
                    break
                conf, pred = probs.max(dim=2)
                preds.append(pred.numpy())
                confs.append(conf.numpy())
                tvs.append(tv_distance(probs).numpy())
                cosines.append(cosine_distance(features).numpy() if features is not None else None)
                if len(flips) < examples:
                    flips.extend(flip_examples(views, pred, conf, offsets, start, examples - len(flips)))
                if progress:
                    context.advance(len(x))
        return ShiftOutcome(
            offsets,
            np.concatenate(preds, axis=1),
            np.concatenate(confs, axis=1),
            np.concatenate(tvs, axis=1),
            None if any(c is None for c in cosines) else np.concatenate(cosines, axis=1),
            flips,
        )

    def _forward(
        self, model: ImageClassifier, views: torch.Tensor, captured: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities and features of all views ``(S, B, ...)``: one forward pass (benchmarks override it)."""
        return forward_views(model, views, captured)

    def _measure_modes(
        self, model: ImageClassifier, data: ImageDataset, plan: CanvasPlan, margin: int, context: RunContext
    ) -> tuple[dict[str, ShiftOutcome], list[str]]:
        """Outcomes of the realistic and/or cyclic mode, and what the time budget cut (empty when nothing).

        A later mode measures only the images the earlier one finished, so all metrics cover the same images.
        """
        outcomes: dict[str, ShiftOutcome] = {}
        cut: list[str] = []
        todo = data
        for mode in self._modes():
            try:
                outcome = self._measure(
                    model,
                    todo,
                    plan,
                    mode,
                    margin if mode == "realistic" else 0,
                    context,
                    examples=0 if outcomes else self.examples,  # example pairs of the primary mode
                    progress=not outcomes,
                )
            except ProbeTimeout as exc:
                if not outcomes:
                    raise ProbeTimeout(f"{exc} before the first batch finished") from exc
                cut.append(f"{exc}: {mode} shifts not measured")
                break
            outcomes[mode] = outcome
            if outcome.count < len(todo):
                cut.append(
                    f"time budget spent: {mode} shifts measured on {outcome.count} of {len(data)} images"
                )
                todo = todo.head(outcome.count)
        n = min(o.count for o in outcomes.values())
        return {mode: o.head(n) for mode, o in outcomes.items()}, cut

    # -- run -----------------------------------------------------------------------------------
    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        data = data.head(self.samples)
        if len(data) == 0:
            raise InputError(f"probe {self.name!r}: data {data.name!r} holds no images")
        margin = defense_margin(model) if self.context else 0
        plan = self._canvas_plan(model, data, margin)
        outcomes, cut = self._measure_modes(model, data, plan, margin, context)
        primary = next(iter(outcomes.values()))  # realistic when it ran
        data = data.head(primary.count)
        labels = data.y.numpy()
        metrics = self._metrics(outcomes, labels, plan, margin)
        tables = [self._shift_table(outcomes, plan)]
        if self.windows:  # [] turns the trade-off off
            try:
                tradeoff = self._tradeoff(model, data, plan, outcomes, labels, context)
            except ProbeTimeout as exc:
                cut.append(f"{exc}: crop-selection trade-off not finished")
            else:
                tables.append(tradeoff)
                metrics.update(self._tradeoff_curves(tradeoff.frame))
        return ProbeResult(
            float(primary.consistent.mean()),  # = 1 - fooling_rate
            metrics,
            self._records(outcomes, labels),
            self._artifacts(model, primary),
            status="timeout" if cut else "ok",
            message="; ".join(cut),
            tables=tables,
        )

    def _metrics(
        self, outcomes: dict[str, ShiftOutcome], labels: np.ndarray, plan: CanvasPlan, margin: int
    ) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "mode": self.mode,
            "max_shift": self.max_shift,
            "directions": self.directions,
            "samples": len(labels),
            "canvas": plan.kind,  # "padded": model-sized sources on a synthesized border; "source": real context
            "border": plan.border,
            "pad": plan.pad,
            "context_margin": margin,
            "threshold": self.threshold,
        }
        for mode, outcome in outcomes.items():
            prefix = f"{mode}/" if self.mode == "both" else ""
            metrics.update({prefix + k: v for k, v in outcome.metrics(labels, self.threshold).items()})
        return metrics

    @staticmethod
    def _shift_table(outcomes: dict[str, ShiftOutcome], plan: CanvasPlan) -> Table:
        rows = [
            {
                "shift": mode,
                "dy": dy,
                "dx": dx,
                "size": shift_size((dy, dx)),
                "change_rate": float(outcome.changed[s].mean()),
                "mean_tv": float(outcome.tv[s].mean()),
            }
            for mode, outcome in outcomes.items()
            for s, (dy, dx) in enumerate(outcome.offsets)
        ]
        note = plan.note() + " dy/dx: window move in pixels (down/right); content moves the other way."
        return Table("Prediction changes per shift", pd.DataFrame(rows), note)

    # -- crop-selection trade-off --------------------------------------------------------------
    def _tradeoff(
        self,
        model: ImageClassifier,
        data: ImageDataset,
        plan: CanvasPlan,
        outcomes: dict[str, ShiftOutcome],
        labels: np.ndarray,
        context: RunContext,
    ) -> Table:
        """Accuracy vs fooling rate of the model as given (window 1) and with crop selection of each window."""
        rows = [
            _tradeoff_row("none (centre crop)", 1, mode, outcome, labels)
            for mode, outcome in outcomes.items()
        ]
        skipped: list[int] = []
        if "realistic" in outcomes:
            for k in _distinct(self.windows):
                if k == 1:
                    continue  # K = 1 is the centre crop: the row above
                defense = CropSelection(
                    window=k, score=self.score, sigma=self.sigma, variant="realistic", border=self.border
                )
                margin = defense.context_margin if self.context else 0
                if plan.spare < self.max_shift + margin:
                    skipped.append(k)  # the source images leave too little real context for this window
                    continue
                outcome = self._measure(
                    defense.apply(model), data, plan, "realistic", margin, context, complete=True
                )
                rows.append(_tradeoff_row("crop-selection", k, "realistic", outcome, labels))
        if "cyclic" in outcomes:
            defense = CropSelection(score=self.score, sigma=self.sigma, variant="circular")
            outcome = self._measure(defense.apply(model), data, plan, "cyclic", 0, context, complete=True)
            rows.append(_tradeoff_row("crop-selection circular", None, "cyclic", outcome, labels))
        return Table(
            "Crop-selection trade-off (accuracy vs fooling rate)",
            _with_baseline_ratios(pd.DataFrame(rows)),
            self._tradeoff_note(skipped),
        )

    def _tradeoff_note(self, skipped: list[int]) -> str:
        parts = [
            f"Crop selection (score '{self.score}', sigma {self.sigma}) applied to the model for each window K; "
            f"accuracy on the centre view, fooling rate under shifts of 1..{self.max_shift} px."
        ]
        if self.context:
            parts.append("The defense receives (K-1)/2 px of extra context per side from the same canvas.")
        parts.append("fooling_reduction = fooling rate without / with crop selection.")
        if skipped:
            parts.append(
                f"Windows {skipped} skipped: the images leave too little context around the model's window."
            )
        return " ".join(parts)

    @staticmethod
    def _tradeoff_curves(frame: pd.DataFrame) -> dict[str, Any]:
        """``tradeoff/fooling_rate`` and ``tradeoff/accuracy`` over the realistic windows K (drawn as curves)."""
        realistic = frame[frame["shifts"] == "realistic"]
        if realistic.empty:
            return {}
        return {
            "tradeoff/fooling_rate": {
                str(int(r.window)): float(r.fooling_rate) for r in realistic.itertuples()
            },
            "tradeoff/accuracy": {str(int(r.window)): float(r.accuracy) for r in realistic.itertuples()},
        }

    # -- records and artifacts -----------------------------------------------------------------
    @staticmethod
    def _records(outcomes: dict[str, ShiftOutcome], labels: np.ndarray) -> pd.DataFrame:
        """One row per image: the primary mode's centre answer and first flip, plus the other mode's summary."""
        (primary_mode, o), *others = outcomes.items()
        changed = o.changed
        first = np.where(changed.any(axis=0), changed.argmax(axis=0), -1)  # first flipping shift, -1: none
        frame = pd.DataFrame(
            {
                "index": np.arange(o.count),
                "label": labels,
                "prediction": o.pred[0],
                "confidence": o.conf[0],
                "correct": o.pred[0] == labels,
                "consistent": o.consistent,
                "changed_shifts": changed.sum(axis=0),
                "flip_shift": [f"{o.offsets[s][0]},{o.offsets[s][1]}" if s >= 0 else None for s in first],
                "flip_prediction": [int(o.pred[s + 1, i]) if s >= 0 else None for i, s in enumerate(first)],
                "max_tv": o.tv.max(axis=0),
                "max_cosine_distance": o.cosine.max(axis=0) if o.cosine is not None else np.nan,
            }
        )
        for mode, other in others:
            frame[f"{mode}_consistent"] = other.consistent
            frame[f"{mode}_changed_shifts"] = other.changed.sum(axis=0)
        return frame

    @staticmethod
    def _artifacts(model: ImageClassifier, outcome: ShiftOutcome) -> list[Artifact]:
        """Flipping pairs: both crops (scaled to [0, 1]), both labels and confidences."""
        artifacts = []
        low, high = model.bounds
        for flip in outcome.flips:
            (dy, dx), (p0, p1), (c0, c1) = flip["offset"], flip["pred"], flip["conf"]
            artifacts.append(
                Artifact(
                    f"sample {flip['index']}: a {shift_size((dy, dx))}-pixel shift flips the label",
                    [(img - low) / (high - low) for img in flip["images"]],
                    [
                        f"centre: {model.label(p0)} ({c0:.2f})",
                        f"shift dy={dy:+d}, dx={dx:+d}: {model.label(p1)} ({c1:.2f})",
                    ],
                )
            )
        return artifacts
