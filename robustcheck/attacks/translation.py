"""One-pixel translation probe (Shifman & Weiss, ECCV 2024, "Lost in Translation").

Does the model's answer survive a camera move of one pixel?

* **Realistic** shifts cut the model-sized window out of a larger image at the centre and at the
  centre moved by ``1..max_shift`` pixels in 4 or 8 directions (never resizing after the move).
  Images larger than the model input are used as they are; model-sized images get an explicit
  canvas: ``pad`` pixels of ``border`` (``reflect`` / ``replicate`` / ``zero``) around them, which is
  recorded in the metrics and stated in the report (a shifted window then shows 1 pixel of
  synthesized border).
* **Cyclic** shifts roll the model-sized (centre) image by the same offsets (``torch.roll``), the
  setting in which anti-aliased / polyphase models are invariant by construction.

Every view of a batch (centre + all shifts) goes through the model in one forward pass.

Metrics (per mode; prefixed ``realistic/`` and ``cyclic/`` when ``mode=both``):
``consistency`` (share of images whose top-1 label is the same for every shift), ``fooling_rate``
(share with at least one shift changing top-1, = 1 - consistency), ``fooling_rate_correct`` (the same
among images whose centre view is classified correctly), ``tv_distance`` (mean total-variation
distance between the softmax of the centre view and of each shifted view), ``representation_change``
(share of images whose penultimate features, read by a hook on the input of the last ``nn.Linear``,
move by a cosine distance above ``threshold`` for some shift; ``None`` when the model has no Linear
head), ``centre_accuracy`` and ``consistency_by_shift`` (shift size -> consistency under the shifts of
that size). Score = 1 - ``fooling_rate`` of the realistic mode (of the cyclic mode when it runs alone).

Defended models that declare ``context_margin`` (``crop-selection``, realistic variant) receive views
with that many extra pixels of the same canvas per side (``context=True``), as a camera delivers more
than the network's input; their crop is then chosen from real context instead of a synthesized border.

Trade-off (``windows``): the same realistic measurement with ``crop-selection`` of each window ``K``
applied to the model (plus its circular variant under cyclic shifts when the cyclic mode runs), as
a table of accuracy vs fooling rate and curves ``tradeoff/fooling_rate`` and ``tradeoff/accuracy``
over ``K`` (``K = 1`` is the model as given: the centre crop).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcheck.api import Artifact, Probe, ProbeResult, RunContext, Table
from robustcheck.data import ImageDataset
from robustcheck.defenses.crop_selection import CropSelection, check_score
from robustcheck.errors import InputError, ProbeTimeout, UsageError
from robustcheck.models import ImageClassifier
from robustcheck.registry import register
from robustcheck.shifts import (
    BORDERS,
    Offset,
    centre_crop,
    cyclic_views,
    pad_canvas,
    shift_offsets,
    shift_size,
    spare_margin,
    window_views,
)

MODES = ("realistic", "cyclic", "both")
CENTRE: Offset = (0, 0)


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
# Per-mode outcome and its metrics
# --------------------------------------------------------------------------------------------


@dataclass
class ShiftOutcome:
    """Predictions of one mode over the centre view (row 0) and the shifted views (rows 1..S).

    ``pred``/``conf`` are ``(S + 1, N)``; ``tv`` and ``cosine`` (penultimate-feature cosine distance to
    the centre view; None without features) are ``(S, N)``; ``offsets`` lists the S shifts.
    """

    offsets: list[Offset]
    pred: np.ndarray
    conf: np.ndarray
    tv: np.ndarray
    cosine: np.ndarray | None
    flips: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> np.ndarray:
        """``(S, N)``: shift s changes sample n's top-1 label."""
        return self.pred[1:] != self.pred[0]

    @property
    def consistent(self) -> np.ndarray:
        return ~self.changed.any(axis=0)

    def metrics(self, labels: np.ndarray, threshold: float) -> dict[str, Any]:
        correct = self.pred[0] == labels
        consistent = self.consistent
        sizes = np.array([shift_size(o) for o in self.offsets])
        cos_max = self.cosine.max(axis=0) if self.cosine is not None else None
        return {
            "consistency": float(consistent.mean()),
            "fooling_rate": float(1.0 - consistent.mean()),
            "fooling_rate_correct": float((~consistent & correct).sum() / correct.sum())
            if correct.any()
            else None,
            "tv_distance": float(self.tv.mean()),
            "representation_change": float((cos_max > threshold).mean()) if cos_max is not None else None,
            "mean_cosine_distance": float(self.cosine.mean()) if self.cosine is not None else None,
            "centre_accuracy": float(correct.mean()),
            "consistency_by_shift": {
                str(s): float((~self.changed[sizes == s].any(axis=0)).mean())
                for s in sorted(set(sizes.tolist()))
            },
        }


def _cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """``(S, N)`` cosine distance of views 1..S to view 0 for features ``(S + 1, N, D)``."""
    centre = features[0].unsqueeze(0).expand_as(features[1:])
    return 1.0 - torch.nn.functional.cosine_similarity(features[1:], centre, dim=2, eps=1e-12)


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------


@register("probe", "translation")
class TranslationProbe(Probe):
    """One-pixel realistic and cyclic shifts (Shifman & Weiss 2024): consistency and fooling rate."""

    in_default_audit = True
    #: data may be larger than ``model.input_shape`` (the window is cut from it): for the runner's shape check
    accepts_larger_inputs: ClassVar[bool] = True
    score_doc = (
        "1 - fooling rate under realistic shifts of 1..max_shift pixels: the share of images whose top-1 label "
        "is the same for the centre crop and every shifted crop (cyclic shifts when mode=cyclic)."
    )
    defaults: ClassVar[dict[str, Any]] = {
        "mode": "realistic",
        "max_shift": 1,
        "directions": 4,
        "samples": None,
        "border": "reflect",
        "pad": None,
        "threshold": 0.05,
        "context": True,
        "windows": [3, 5, 9],
        "score": "hashed-intensity",
        "sigma": 1.0,
        "examples": 4,
    }

    def validate(self) -> None:
        p = self.params
        where = f"probe {self.name!r}"
        if p["mode"] not in MODES:
            raise UsageError(f"{where}: mode must be one of {', '.join(MODES)}, got {p['mode']!r}")
        if p["max_shift"] < 1:
            raise UsageError(f"{where}: max_shift must be at least 1 pixel, got {p['max_shift']}")
        if p["directions"] not in (4, 8):
            raise UsageError(f"{where}: directions must be 4 or 8, got {p['directions']}")
        if p["samples"] is not None and (
            not isinstance(p["samples"], int) or isinstance(p["samples"], bool) or p["samples"] < 1
        ):
            raise UsageError(
                f"{where}: samples must be a positive integer or None (all), got {p['samples']!r}"
            )
        if p["border"] not in BORDERS:
            raise UsageError(f"{where}: border must be one of {', '.join(BORDERS)}, got {p['border']!r}")
        windows = p["windows"]
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 and k % 2 == 1 for k in windows):
            raise UsageError(
                f"{where}: windows must be positive odd integers (crop-selection K), got {windows!r}"
            )
        p["windows"] = sorted(set(windows))
        pad = p["pad"]
        if pad is not None:
            if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
                raise UsageError(
                    f"{where}: pad must be a non-negative integer (pixels) or None (automatic), got {pad!r}"
                )
            need = p["max_shift"] + self._window_margins()
            if pad < need:
                raise UsageError(
                    f"{where}: max_shift={p['max_shift']} (plus {need - p['max_shift']} px of context for the windows "
                    f"{p['windows']}) is larger than the canvas border pad={pad}; use pad >= {need} or leave pad unset"
                )
        if not 0.0 <= p["threshold"] <= 2.0:
            raise UsageError(f"{where}: threshold is a cosine distance in [0, 2], got {p['threshold']}")
        check_score(where, p["score"], p["sigma"])
        if p["examples"] < 0:
            raise UsageError(f"{where}: examples must be >= 0, got {p['examples']}")

    # -- geometry ------------------------------------------------------------------------------
    def _modes(self) -> list[str]:
        mode = self.params["mode"]
        return ["realistic", "cyclic"] if mode == "both" else [mode]

    def _window_margins(self) -> int:
        return (
            max(((k - 1) // 2 for k in self.params["windows"]), default=0)
            if "realistic" in self._modes()
            else 0
        )

    def _canvas_plan(self, model: ImageClassifier, data: ImageDataset, margin: int) -> dict[str, Any]:
        """How realistic views are cut: model-sized sources are padded, larger ones used as they are."""
        size = tuple(model.input_shape[1:]) if model.input_shape is not None else tuple(data.shape[1:])
        if model.input_shape is not None and data.shape[0] != model.input_shape[0]:
            raise InputError(
                f"data {data.name!r} has {data.shape[0]} channels, model {model.name!r} expects {model.input_shape[0]}"
            )
        source = tuple(data.shape[1:])
        max_shift = self.params["max_shift"]
        if source[0] < size[0] or source[1] < size[1]:
            raise InputError(
                f"data {data.name!r} images of {source[0]}x{source[1]} px are smaller than the model input {size[0]}x{size[1]}"
            )
        if source == size:
            pad = self.params["pad"]
            if pad is None:
                pad = max_shift + max(margin, self._window_margins())
            elif pad < max_shift + margin:
                raise UsageError(
                    f"probe {self.name!r}: the defended model uses {margin} px of context; pad={pad} is smaller than "
                    f"max_shift + context = {max_shift + margin}"
                )
            return {"size": size, "pad": pad, "spare": pad, "canvas": "padded"}
        spare = spare_margin(source, size)
        if spare < max_shift + margin:
            raise InputError(
                f"data {data.name!r} images of {source[0]}x{source[1]} px leave {spare} px around the model's "
                f"{size[0]}x{size[1]} window; max_shift={max_shift} plus {margin} px of defense context need {max_shift + margin}"
            )
        return {"size": size, "pad": 0, "spare": spare, "canvas": "source"}

    def _canvas(self, x: torch.Tensor, plan: dict[str, Any]) -> torch.Tensor:
        return pad_canvas(x, plan["pad"], self.params["border"]) if plan["canvas"] == "padded" else x

    # -- measuring -----------------------------------------------------------------------------
    def _views(
        self, canvas: torch.Tensor, mode: str, offsets: list[Offset], size: tuple[int, ...], margin: int
    ) -> torch.Tensor:
        if mode == "realistic":
            return window_views(canvas, [CENTRE, *offsets], size, margin)
        return cyclic_views(centre_crop(canvas, size), [CENTRE, *offsets])

    def _measure(
        self,
        model: ImageClassifier,
        data: ImageDataset,
        plan: dict[str, Any],
        mode: str,
        margin: int,
        context: RunContext,
        *,
        examples: int = 0,
        count: int | None = None,
        progress: bool = False,
    ) -> ShiftOutcome:
        """Predictions on centre and shifted views of the first ``count`` samples, batch by batch.

        Raises :class:`ProbeTimeout` between batches when the budget is spent (with nothing measured, the
        caller decides); otherwise returns what finished.
        """
        offsets = shift_offsets(self.params["max_shift"], self.params["directions"])
        n = len(data) if count is None else count
        step = context.batch_size  # images per forward pass, each with all its views
        preds, confs, tvs, cosines, flips = [], [], [], [], []
        with inference(model) as captured:
            for start in range(0, n, step):
                try:
                    context.check_time()
                except ProbeTimeout:
                    if not preds:
                        raise
                    break
                x = data.x[start : min(start + step, n)]
                views = self._views(self._canvas(x, plan), mode, offsets, plan["size"], margin)
                probs, features = self._forward(model, views, captured)
                conf, pred = probs.max(dim=2)
                preds.append(pred.numpy())
                confs.append(conf.numpy())
                tvs.append((0.5 * (probs[1:] - probs[0]).abs().sum(dim=2)).numpy())
                cosines.append(_cosine_distance(features).numpy() if features is not None else None)
                if len(flips) < examples:
                    flips.extend(self._flips(views, pred, conf, offsets, start, examples - len(flips)))
                if progress:
                    context.advance(len(x))
        has_features = all(c is not None for c in cosines)
        return ShiftOutcome(
            offsets,
            np.concatenate(preds, axis=1),
            np.concatenate(confs, axis=1),
            np.concatenate(tvs, axis=1),
            np.concatenate(cosines, axis=1) if has_features else None,
            flips,
        )

    def _forward(
        self, model: ImageClassifier, views: torch.Tensor, captured: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities and features of all views ``(S, B, ...)``: one forward pass (benchmarks override it)."""
        return forward_views(model, views, captured)

    @staticmethod
    def _flips(
        views: torch.Tensor,
        pred: torch.Tensor,
        conf: torch.Tensor,
        offsets: list[Offset],
        start: int,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` (centre view, first flipping view) pairs of this batch."""
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

    # -- run -----------------------------------------------------------------------------------
    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        p = self.params
        data = data.head(p["samples"])
        if len(data) == 0:
            raise InputError(f"probe {self.name!r}: data {data.name!r} holds no images")
        margin = defense_margin(model) if p["context"] else 0
        plan = self._canvas_plan(model, data, margin)
        modes = self._modes()
        status, message = "ok", ""
        outcomes: dict[str, ShiftOutcome] = {}
        for mode in modes:
            try:
                outcome = self._measure(
                    model, data, plan, mode, margin if mode == "realistic" else 0, context,
                    examples=p["examples"], count=min([len(data)] + [o.pred.shape[1] for o in outcomes.values()]),
                    progress=mode == modes[0],
                )  # fmt: skip
            except ProbeTimeout as exc:
                if not outcomes:
                    raise ProbeTimeout(f"{exc} before the first batch finished") from exc
                status, message = "timeout", f"{exc}: {mode} shifts not measured"
                break
            outcomes[mode] = outcome
            if outcome.pred.shape[1] < len(data):
                status, message = (
                    "timeout",
                    f"time budget spent: {outcome.pred.shape[1]} of {len(data)} images measured",
                )
        n = min(o.pred.shape[1] for o in outcomes.values())
        labels = data.y[:n].numpy()
        metrics = self._metrics(outcomes, labels, plan, margin, n)
        tables = [self._shift_table(outcomes, plan)]
        if p["windows"]:  # [] turns the trade-off off
            try:
                tradeoff = self._tradeoff(model, data, plan, outcomes, labels, context)
            except ProbeTimeout as exc:
                tradeoff = None
                status, message = "timeout", f"{exc}: crop-selection trade-off not finished"
            if tradeoff is not None:
                tables.append(tradeoff)
                metrics.update(self._tradeoff_curves(tradeoff.frame))
        primary = outcomes.get("realistic") or outcomes["cyclic"]
        score = float(primary.consistent[:n].mean())  # = 1 - fooling_rate
        records = self._records(outcomes, labels, n)
        artifacts = self._artifacts(model, primary)
        return ProbeResult(score, metrics, records, artifacts, status=status, message=message, tables=tables)

    def _metrics(
        self, outcomes: dict[str, ShiftOutcome], labels: np.ndarray, plan: dict[str, Any], margin: int, n: int
    ) -> dict[str, Any]:
        p = self.params
        metrics: dict[str, Any] = {
            "mode": p["mode"],
            "max_shift": p["max_shift"],
            "directions": p["directions"],
            "samples": n,
            "canvas": plan[
                "canvas"
            ],  # "padded": model-sized sources on a synthesized border; "source": real context
            "border": p["border"] if plan["canvas"] == "padded" else None,
            "pad": plan["pad"],
            "context_margin": margin,
            "threshold": p["threshold"],
        }
        for mode, outcome in outcomes.items():
            trimmed = ShiftOutcome(outcome.offsets, outcome.pred[:, :n], outcome.conf[:, :n], outcome.tv[:, :n],
                                   outcome.cosine[:, :n] if outcome.cosine is not None else None)  # fmt: skip
            prefix = f"{mode}/" if p["mode"] == "both" else ""
            metrics.update({prefix + k: v for k, v in trimmed.metrics(labels, p["threshold"]).items()})
        return metrics

    def _canvas_note(self, plan: dict[str, Any]) -> str:
        h, w = plan["size"]
        if plan["canvas"] == "padded":
            return (
                f"Source images are model-sized ({h}x{w}): realistic shifts cut windows from a canvas built by adding a "
                f"{plan['pad']} px '{self.params['border']}' border, so a window moved by s px shows s px of synthesized border."
            )
        return f"Source images are larger than the model input ({h}x{w}): realistic shifts move the window over real image content."

    def _shift_table(self, outcomes: dict[str, ShiftOutcome], plan: dict[str, Any]) -> Table:
        rows = []
        for mode, outcome in outcomes.items():
            changed = outcome.changed
            for s, (dy, dx) in enumerate(outcome.offsets):
                rows.append(
                    {"shift": mode, "dy": dy, "dx": dx, "size": shift_size((dy, dx)),
                     "change_rate": float(changed[s].mean()), "mean_tv": float(outcome.tv[s].mean())}
                )  # fmt: skip
        note = (
            self._canvas_note(plan)
            + " dy/dx: window move in pixels (down/right); content moves the other way."
        )
        return Table("Prediction changes per shift", pd.DataFrame(rows), note)

    # -- crop-selection trade-off --------------------------------------------------------------
    def _tradeoff(
        self,
        model: ImageClassifier,
        data: ImageDataset,
        plan: dict[str, Any],
        outcomes: dict[str, ShiftOutcome],
        labels: np.ndarray,
        context: RunContext,
    ) -> Table:
        p = self.params
        n = len(labels)
        rows: list[dict[str, Any]] = []
        skipped: list[int] = []

        def row(defense: str, window: int | None, shifts: str, outcome: ShiftOutcome) -> dict[str, Any]:
            consistent, correct = outcome.consistent, outcome.pred[0] == labels[: outcome.pred.shape[1]]
            return {"defense": defense, "window": window, "shifts": shifts, "accuracy": float(correct.mean()),
                    "fooling_rate": float(1.0 - consistent.mean()), "consistency": float(consistent.mean())}  # fmt: skip

        for mode, outcome in outcomes.items():
            rows.append(row("none (centre crop)", 1, mode, outcome))
        if "realistic" in outcomes:
            for k in p["windows"]:
                if k == 1:
                    continue  # K = 1 is the centre crop: the row above
                defense = CropSelection(
                    window=k, score=p["score"], sigma=p["sigma"], variant="realistic", border=p["border"]
                )
                margin = defense.context_margin if p["context"] else 0
                if plan["spare"] < p["max_shift"] + margin:
                    skipped.append(k)  # the source images leave too little real context for this window
                    continue
                outcome = self._measure(
                    defense.apply(model), data, plan, "realistic", margin, context, count=n
                )
                rows.append(row("crop-selection", k, "realistic", outcome))
        if "cyclic" in outcomes:
            defense = CropSelection(score=p["score"], sigma=p["sigma"], variant="circular")
            outcome = self._measure(defense.apply(model), data, plan, "cyclic", 0, context, count=n)
            rows.append(row("crop-selection circular", None, "cyclic", outcome))
        frame = pd.DataFrame(rows)
        base = {r["shifts"]: r for r in rows if r["window"] == 1}  # the model as given, per kind of shift
        frame["accuracy_drop"] = [base[r["shifts"]]["accuracy"] - r["accuracy"] for r in rows]
        # NaN where crop selection leaves nothing to divide by (no image fooled)
        frame["fooling_reduction"] = [
            base[r["shifts"]]["fooling_rate"] / r["fooling_rate"] if r["fooling_rate"] > 0 else np.nan
            for r in rows
        ]
        note = (
            f"Crop selection (score '{p['score']}', sigma {p['sigma']}) applied to the model for each window K; "
            f"accuracy on the centre view, fooling rate under shifts of 1..{p['max_shift']} px. "
            + (
                "The defense receives (K-1)/2 px of extra context per side from the same canvas. "
                if p["context"]
                else ""
            )
            + "fooling_reduction = fooling rate without / with crop selection."
            + (
                f" Windows {skipped} skipped: the images leave too little context around the model's window."
                if skipped
                else ""
            )
        )
        return Table("Crop-selection trade-off (accuracy vs fooling rate)", frame, note)

    @staticmethod
    def _tradeoff_curves(frame: pd.DataFrame) -> dict[str, Any]:
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
    def _records(self, outcomes: dict[str, ShiftOutcome], labels: np.ndarray, n: int) -> pd.DataFrame:
        primary_mode = "realistic" if "realistic" in outcomes else "cyclic"
        o = outcomes[primary_mode]
        changed = o.changed[:, :n]
        first = np.where(changed.any(axis=0), changed.argmax(axis=0), -1)
        frame = pd.DataFrame(
            {
                "index": np.arange(n),
                "label": labels,
                "prediction": o.pred[0, :n],
                "confidence": o.conf[0, :n],
                "correct": o.pred[0, :n] == labels,
                "consistent": ~changed.any(axis=0),
                "changed_shifts": changed.sum(axis=0),
                "flip_shift": [f"{o.offsets[s][0]},{o.offsets[s][1]}" if s >= 0 else None for s in first],
                "flip_prediction": [int(o.pred[s + 1, i]) if s >= 0 else None for i, s in enumerate(first)],
                "max_tv": o.tv[:, :n].max(axis=0),
                "max_cosine_distance": o.cosine[:, :n].max(axis=0) if o.cosine is not None else np.nan,
            }
        )
        for mode, other in outcomes.items():
            if mode != primary_mode:
                frame[f"{mode}_consistent"] = other.consistent[:n]
                frame[f"{mode}_changed_shifts"] = other.changed[:, :n].sum(axis=0)
        return frame

    def _artifacts(self, model: ImageClassifier, outcome: ShiftOutcome) -> list[Artifact]:
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
