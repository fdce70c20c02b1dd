"""Common-corruption probe (Hendrycks & Dietterich, ICLR 2019: CIFAR-10-C / ImageNet-C).

How does the model hold up under ordinary image corruptions (noise, blur, weather, digital artefacts)?
Every sample is classified clean and under each of ``corruptions`` at each of ``severities`` (1..5).

Corrupted images come from the data when it carries them (a CIFAR-10-C / ImageNet-C folder read with
``--data``, :class:`~robustcheck.data.formats.corrupted.CorruptedDataset`: the official images) and are
generated otherwise by :mod:`robustcheck.ops.corruptions` (``source``: ``auto``, ``generate`` or ``data``),
seeded by the run's seed (one generator per corruption, severity and batch, so a corruption's images do
not change when others are added or removed). Which source each corruption used is in ``sources`` and in
the table. ``preset`` picks the published parameter set for generated images (``auto``: CIFAR below 96 px).

Metrics: ``clean_accuracy``, ``corruption_accuracy`` (corruption -> severity -> accuracy, drawn as a heat
map), ``accuracy_by_severity`` (severity 0 = clean, then the mean over corruptions), ``mean_corruption_accuracy``
(mean over all pairs), ``mean_corruption_error`` (1 - that), ``relative_accuracy`` (mean corruption accuracy /
clean accuracy). With ``reference=MODEL`` (a registered model name or any model source ``--model`` takes;
run undefended on the same corrupted images): ``corruption_error`` and ``relative_corruption_error`` per
corruption, ``mce``, ``relative_mce``, ``reference_clean_accuracy`` and ``reference_mean_corruption_accuracy``
(see :mod:`robustcheck.probes.corruptions.measure`). Score = mean corruption accuracy / clean accuracy,
clipped to [0, 1] (none when the clean accuracy is 0).

With a defense, every image (clean and corrupted) goes through it: the probe measures whether the defense
helps against corruptions. The time budget is checked before every corruption batch; a run that runs out
keeps the samples for which every corruption finished (status ``timeout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from robustcheck.api import Artifact, Probe, ProbeResult, RunContext
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.corrupted import CorruptedDataset
from robustcheck.errors import InputError, ProbeTimeout
from robustcheck.models.classifier import ImageClassifier, audited_model
from robustcheck.models.loading import load_model
from robustcheck.ops.corruptions import CORRUPTION_NAMES, PRESET_CHOICES, corrupt, resolve_preset
from robustcheck.params import Param
from robustcheck.probes.corruptions.measure import accuracy_table, compute_metrics, per_sample_records

SOURCES = ("auto", "generate", "data")
EXAMPLE_SEVERITIES = (1, 3, 5)


def corruption_seed(seed: int, corruption: str, severity: int, start: int) -> int:
    """The generator seed of one batch (starting at sample ``start``) of one corruption at one severity."""
    entropy = [seed % 2**63, CORRUPTION_NAMES.index(corruption), severity, start]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % 2**63)


class CorruptionsProbe(Probe):
    """Common corruptions (CIFAR-10-C / ImageNet-C): accuracy under 15 corruptions at 5 severities, mCE."""

    name = "corruptions"
    score_doc = (
        "Mean accuracy over the corruptions and severities divided by the clean accuracy, clipped to [0, 1] "
        "(1 = the corruptions cost no accuracy)."
    )
    shardable: ClassVar[bool] = True

    corruptions = Param(
        list(CORRUPTION_NAMES),
        "corruptions to apply",
        type=str,
        list=True,
        choices=CORRUPTION_NAMES,
        min_items=1,
    )
    severities = Param(
        [1, 2, 3, 4, 5],
        "severities to apply (1 = mild .. 5 = strong)",
        type=int,
        list=True,
        ge=1,
        le=5,
        min_items=1,
        sort=True,
    )
    reference = Param(
        None,
        "model whose errors normalise the corruption errors (mCE), e.g. a registered model name",
        type=str,
    )
    preset = Param(
        "auto",
        "parameter set of generated corruptions (auto: cifar below 96 px, else imagenet)",
        choices=PRESET_CHOICES,
    )
    source = Param(
        "auto",
        "corrupted images: from the data where it carries them (auto), always generated, or only from the data",
        choices=SOURCES,
    )
    examples = Param(1, "samples shown per corruption, clean and at severities 1, 3, 5", ge=0)

    # -- plan ----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The requested corruptions without repeats, in the standard order."""
        wanted = set(self.corruptions)
        return [name for name in CORRUPTION_NAMES if name in wanted]

    @property
    def levels(self) -> list[int]:
        return sorted(set(self.severities))

    def _sources(self, data: ImageDataset) -> dict[str, str]:
        carried = data.corruptions if isinstance(data, CorruptedDataset) else ()
        if self.source == "data":
            missing = [n for n in self.names if n not in carried]
            if missing:
                raise InputError(
                    f"probe {self.name!r}: source=data but data {data.name!r} carries no images for {', '.join(missing)}"
                    + ("" if carried else " (it is not a CIFAR-10-C / ImageNet-C folder)")
                )
        use_data = self.source != "generate"
        return {n: "data" if use_data and n in carried else "generated" for n in self.names}

    def _reference_model(self, model: ImageClassifier, data: ImageDataset) -> ImageClassifier | None:
        if self.reference is None:
            return None
        reference = audited_model(load_model(self.reference), data)
        reference.to(model.device)
        reference.device = model.device
        return reference

    # -- run -----------------------------------------------------------------------------------
    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        if len(data) == 0:
            raise InputError(f"probe {self.name!r}: data {data.name!r} holds no images")
        sources = self._sources(data)
        reference = self._reference_model(model, data)
        preset = resolve_preset(data.x[:1], self.preset)
        outcome = _Measurement(self, model, reference, data, sources, preset, context)
        outcome.measure()
        if not outcome.finished:
            raise ProbeTimeout("time budget spent before the first batch finished")
        records = per_sample_records(
            data.y[: outcome.finished].numpy(),
            np.concatenate(outcome.predictions),
            {key: np.concatenate(parts) for key, parts in outcome.correct.items()},
            {key: np.concatenate(parts) for key, parts in outcome.reference.items()}
            if reference is not None
            else None,
        )
        return self._result(records, sources, preset, outcome.artifacts, outcome.cut)

    def _result(
        self, records: pd.DataFrame, sources: dict[str, str], preset: str, artifacts: list[Artifact], cut: str
    ) -> ProbeResult:
        metrics = compute_metrics(records, self.names, self.levels)
        generated = any(s == "generated" for s in sources.values())
        metrics.update(
            {"preset": preset if generated else None, "sources": sources, "reference": self.reference}
        )
        clean, mean = metrics["clean_accuracy"], metrics["mean_corruption_accuracy"]
        score = min(max(mean / clean, 0.0), 1.0) if clean > 0 else None
        message = cut
        if score is None:
            message = "; ".join(
                filter(
                    None, [cut, "clean accuracy is 0: no score (mean corruption accuracy / clean accuracy)"]
                )
            )
        return ProbeResult(
            score,
            metrics,
            records,
            artifacts,
            tables=[accuracy_table(metrics, self.names, self.levels, sources, self.reference)],
            status="timeout" if cut else "ok",
            message=message,
        )

    def merge(self, parts: Sequence[ProbeResult], offsets: Sequence[int]) -> ProbeResult:
        """Concatenate the shards' records (re-indexed) and recompute every metric from them."""
        records = pd.concat(
            [
                p.records.assign(index=p.records["index"] + offset)
                for p, offset in zip(parts, offsets, strict=True)
            ],
            ignore_index=True,
        )
        first = parts[0].metrics
        artifacts = [a for p in parts for a in p.artifacts][: len(parts[0].artifacts)]
        cut = "; ".join(p.message for p in parts if p.status == "timeout")
        return self._result(records, dict(first["sources"]), first.get("preset") or "auto", artifacts, cut)


class _Measurement:
    """One run's loop over batches, corruptions and severities, and what it collects."""

    def __init__(
        self,
        probe: CorruptionsProbe,
        model: ImageClassifier,
        reference: ImageClassifier | None,
        data: ImageDataset,
        sources: dict[str, str],
        preset: str,
        context: RunContext,
    ) -> None:
        self.probe, self.model, self.reference_model, self.data = probe, model, reference, data
        self.sources, self.preset, self.context = sources, preset, context
        self.finished = 0
        self.cut = ""
        self.predictions: list[np.ndarray] = []
        self.correct: dict[tuple[str, int], list[np.ndarray]] = {
            (n, s): [] for n in probe.names for s in probe.levels
        }
        self.reference: dict[Any, list[np.ndarray]] = {key: [] for key in [*self.correct, "clean"]}
        self.artifacts: list[Artifact] = []

    def _predict(self, model: ImageClassifier, x: torch.Tensor) -> np.ndarray:
        return model(x.to(model.device)).argmax(dim=1).cpu().numpy()

    def _corrupted(self, x: torch.Tensor, name: str, severity: int, start: int, stop: int) -> torch.Tensor:
        """The batch ``x`` (samples ``start:stop``) under one corruption, within the model's bounds."""
        if self.sources[name] == "data":
            assert isinstance(self.data, CorruptedDataset)
            return self.data.corrupted(name, severity, torch.arange(start, stop)).to(x.device)
        low, high = self.model.bounds
        generator = torch.Generator(device=x.device).manual_seed(
            corruption_seed(self.context.seed, name, severity, start)
        )
        unit = ((x - low) / (high - low)).clamp(0.0, 1.0)
        return low + corrupt(unit, name, severity, generator, self.preset) * (high - low)

    def measure(self) -> None:
        batch_size, n = self.context.batch_size, len(self.data)
        models = [self.model] + ([self.reference_model] if self.reference_model is not None else [])
        with torch.no_grad():
            for m in models:
                m.eval()
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                try:
                    batch = self._batch(start, stop)
                except ProbeTimeout as exc:
                    self.cut = f"{exc}: {start} of {n} samples measured under every corruption"
                    return
                self._keep(batch)
                self.finished = stop
                self.context.advance(stop - start)

    def _batch(self, start: int, stop: int) -> dict[str, Any]:
        """Predictions of one batch, clean and under every corruption and severity (nothing kept on timeout)."""
        x = self.data.x[start:stop].to(self.model.device)
        labels = self.data.y[start:stop].numpy()
        out: dict[str, Any] = {
            "prediction": self._predict(self.model, x),
            "correct": {},
            "reference": {},
            "examples": {},
        }
        if self.reference_model is not None:
            out["reference"]["clean"] = self._predict(self.reference_model, x) == labels
        shown = min(self.probe.examples, stop - start) if start == 0 else 0
        for name in self.probe.names:
            for severity in self.probe.levels:
                self.context.check_time()
                corrupted = self._corrupted(x, name, severity, start, stop)
                prediction = self._predict(self.model, corrupted)
                out["correct"][(name, severity)] = prediction == labels
                if self.reference_model is not None:
                    out["reference"][(name, severity)] = (
                        self._predict(self.reference_model, corrupted) == labels
                    )
                if shown:
                    out["examples"][(name, severity)] = (corrupted[:shown].cpu(), prediction[:shown])
        out["shown"] = shown
        out["x"] = x[:shown].cpu()
        out["labels"] = labels
        return out

    def _keep(self, batch: dict[str, Any]) -> None:
        self.predictions.append(batch["prediction"])
        for key, value in batch["correct"].items():
            self.correct[key].append(value)
        for key, value in batch["reference"].items():
            self.reference[key].append(value)
        if batch["shown"]:
            self.artifacts = self._artifacts(batch)

    def _artifacts(self, batch: dict[str, Any]) -> list[Artifact]:
        """Per corruption and shown sample: the clean image and the corrupted ones at severities 1, 3, 5
        (those measured; all measured ones up to three when none of 1, 3, 5 is)."""
        low, high = self.model.bounds
        levels = [s for s in self.probe.levels if s in EXAMPLE_SEVERITIES] or self.probe.levels[:3]
        labels, clean_pred = batch["labels"], batch["prediction"]
        model = self.model

        def caption(what: str, pred: int, label: int) -> str:
            return f"{what}: {model.label(int(pred))} ({'correct' if pred == label else 'wrong'})"

        artifacts = []
        for name in self.probe.names:
            for i in range(batch["shown"]):
                images = [((batch["x"][i] - low) / (high - low)).numpy()]
                captions = [caption("clean", clean_pred[i], labels[i])]
                for severity in levels:
                    corrupted, prediction = batch["examples"][(name, severity)]
                    images.append(((corrupted[i] - low) / (high - low)).clamp(0, 1).numpy())
                    captions.append(caption(f"severity {severity}", prediction[i], labels[i]))
                title = f"{name} ({self.sources[name]}), sample {i}: true {model.label(int(labels[i]))}"
                artifacts.append(Artifact(title, images, captions))
        return artifacts
