"""Fooling images (Nguyen, Yosinski & Clune, CVPR 2015: "Deep Neural Networks are Easily Fooled").

For every class the probe searches for an image the model labels with near-certainty although a
human would not recognise it. Three generators (``generator=all`` runs each, in this order):

* ``evolution-direct``: MAP-Elites (one cell per class) over pixel genomes, polynomial mutation and
  SBX crossover (:mod:`robustcheck.probes.fooling.genomes`);
* ``evolution-cppn``: MAP-Elites over CPPN genomes, mutation only (:mod:`robustcheck.probes.fooling.cppn`);
* ``gradient-ascent``: per-class ascent on the softmax probability from uniform noise, with the
  paper's progress-based step (:mod:`robustcheck.probes.fooling.search`); needs gradients and is
  skipped by ``all`` when the model has none.

A generation scores the whole population in batched forward passes (``context.batch_size`` images
each); gradient ascent runs ``population // K`` starts per class (at least 1) in one batch too, so a
generation costs about the same for every generator. Images are made at ``model.input_shape``
(or the data's shape) within ``model.bounds``. Each generator draws from its own generator seeded by
``context.seed`` and its name, so its results do not depend on which other generators ran.

Metrics (``G/`` = one generator's prefix, e.g. ``evolution-direct/classes_fooled``):
``G/classes_fooled`` (fraction of classes whose elite reaches ``threshold``), ``G/classes_fooled_9999``
(at 0.9999), ``G/median_best_confidence``, ``G/best_confidence`` (class index -> confidence),
``G/confidence_curve`` (generation -> median best confidence), ``G/generations_to_threshold`` and
``G/seconds_to_threshold`` (class index -> first generation / seconds at ``threshold``, ``None``: never),
``G/median_generations_to_threshold`` and ``G/median_seconds_to_threshold`` (over the classes that
reached it), ``G/generations_to_all_fooled`` and ``G/seconds_to_all_fooled`` (``None`` unless every
class reached it; ``G/cpu_seconds_to_all_fooled`` in CPU seconds of the process, which a busy machine
inflates less), ``G/generations_per_second``,
``G/transfer_confidence`` (mean probability a second model gives the elite's class),
``G/transfer_agreement`` (fraction of elites the second model puts in the same class) and
``G/nearest_distance`` (mean RMS distance to the nearest real image of the class, see
:mod:`robustcheck.probes.fooling.checks`). Top level: ``classes_fooled`` (the best generator's: most
classes fooled, ties broken by 0.9999, then by fewer generations), ``classes_fooled_9999`` (the best
at 0.9999), ``best_generator``, ``transfer_accuracy_on_data`` and
``nearest_distance_real_baseline``.

Records: one row per (generator, class): best confidence, generation and seconds to ``threshold``,
generation to 0.9999, transfer confidence and prediction, nearest-real-image distance. Tables: the
recognisability table (one row per generator) and the per-class table. Artifacts: one gallery per
generator, each elite captioned ``class (confidence)``.

Score: ``1 - classes_fooled`` (0 = every class can be fooled at ``threshold``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustcheck.api import Artifact, Probe, ProbeResult, RunContext, Table
from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import InputError, RequirementError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.params import Param
from robustcheck.probes.fooling.checks import (
    check_compatible,
    default_transfer_model,
    nearest_distances,
    real_nearest_baseline,
    transfer_probabilities,
)
from robustcheck.probes.fooling.cppn import CppnEncoding
from robustcheck.probes.fooling.genomes import DirectEncoding
from robustcheck.probes.fooling.search import (
    AscentSettings,
    Budget,
    SearchTrace,
    batched_evaluator,
    run_gradient_ascent,
    run_map_elites,
)

GENERATORS = ("evolution-direct", "evolution-cppn", "gradient-ascent")
STRICT_THRESHOLD = 0.9999
#: at most this many points per confidence curve (generations are subsampled evenly beyond it)
CURVE_POINTS = 101


@dataclass
class Recognisability:
    """Per-elite checks of one generator, ``(K,)`` arrays indexed by class.

    Attributes:
        transfer_confidence: probability in [0, 1] that the second model gives the elite's class
            (NaN: no second model).
        transfer_prediction: the second model's class for the elite (-1: no second model).
        nearest_distance: RMS distance, in units of the bounds' range, to the nearest real image of
            the class (NaN: no data of the model's shape, or none of that class).
    """

    transfer_confidence: np.ndarray
    transfer_prediction: np.ndarray
    nearest_distance: np.ndarray


class FoolingProbe(Probe):
    """Fooling images by MAP-Elites (direct and CPPN encodings) and gradient ascent."""

    default_budget_s = 300.0
    cost = "three searches of 200 generations: about 50 s on digits-cnn, 2 cores"

    name = "fooling"  # also the registry name; error messages of direct instances use it
    generator = Param("all", "which generator to run ('all': each in turn)", choices=(*GENERATORS, "all"))
    generations = Param(200, "generations per generator (0: score the random start only)", ge=0)
    population = Param(
        200, "genomes per generation, at least a pair for crossover (gradient ascent: population // classes starts per class)", ge=2
    )
    threshold = Param(0.99, "confidence at which a class counts as fooled", gt=0.0, lt=1.0)
    time_budget = Param(
        None, "seconds per generator (none: no limit besides the run's budget)", type=float, gt=0.0
    )
    mutation_rate = Param(0.1, "per-gene mutation probability of the direct encoding", ge=0.0, le=1.0)
    mutation_eta = Param(15.0, "polynomial-mutation distribution index of the direct encoding", gt=0.0)
    crossover_rate = Param(
        0.5, "probability that a parent pair is crossed by SBX (0 disables)", ge=0.0, le=1.0
    )
    crossover_eta = Param(10.0, "SBX distribution index of the direct encoding", gt=0.0)
    cppn_max_hidden = Param(16, "hidden node slots per CPPN genome", ge=0)
    ascent_max_lr = Param(1e12, "largest step size of gradient ascent", gt=0.0)
    ascent_decay = Param(0.0, "L2 decay towards the centre of the bounds per ascent step", ge=0.0, lt=1.0)
    transfer_model = Param(
        "auto",
        "second model of the transfer check: a model spec, 'auto' (built-in pairs) or none",
        optional=True,
    )
    transfer_normalize = Param(
        True, "set polarity and stretch contrast when converting images for the transfer model"
    )
    score_doc = (
        "1 - fraction of classes for which the best generator found an image the model gives that class "
        "with at least `threshold` confidence (0 = every class can be fooled)."
    )

    def generators(self) -> tuple[str, ...]:
        """The generators the ``generator`` parameter names, in run order."""
        return GENERATORS if self.generator == "all" else (self.generator,)

    def runnable_generators(self, model: ImageClassifier) -> list[str]:
        """:meth:`generators`, less gradient ascent if ``model`` has no gradients (error if none is left)."""
        chosen = [g for g in self.generators() if g != "gradient-ascent" or model.gradients != "none"]
        if not chosen:
            raise RequirementError(
                f"probe 'fooling' with generator 'gradient-ascent' needs gradients, which model {model.name!r} does not offer"
            )
        return chosen

    def check_requirements(self, model: ImageClassifier) -> None:
        if getattr(model, "is_captioner", False):
            raise RequirementError(
                f"probe 'fooling' needs an image classifier; model {model.name!r} is a captioner"
            )
        self.runnable_generators(model)
        super().check_requirements(model)

    # -- running -------------------------------------------------------------------------------
    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        shape = self._image_shape(model, data)
        num_classes = self._num_classes(model, shape)
        thresholds = sorted({self.threshold, STRICT_THRESHOLD})
        chosen = self.runnable_generators(model)
        # resolved before the search: a bad transfer-model spec fails at once
        transfer = self._transfer_model(model, num_classes)
        advance = _progress(context, len(data), len(chosen) * (self.generations + 1))
        traces: list[SearchTrace] = []
        for generator in chosen:
            trace = self._search(generator, model, shape, num_classes, thresholds, context, advance)
            traces.append(trace)
            if trace.stopped == "deadline":
                break
        return self._result(model, data, traces, num_classes, chosen, transfer)

    def _image_shape(self, model: ImageClassifier, data: ImageDataset) -> tuple[int, int, int]:
        shape = model.input_shape or (data.shape if len(data) else None)
        if shape is None or len(shape) != 3:
            raise InputError(
                f"probe 'fooling' needs the image shape: model {model.name!r} declares no input_shape (C, H, W) and there is no data"
            )
        return (int(shape[0]), int(shape[1]), int(shape[2]))

    def _num_classes(self, model: ImageClassifier, shape: tuple[int, int, int]) -> int:
        """The model's class count (from its labels, else from one forward pass on a mid-grey image)."""
        if model.num_classes is not None:
            return model.num_classes
        low, high = model.bounds
        return int(model.predict(torch.full((1, *shape), 0.5 * (low + high))).shape[1])

    def _rng(self, seed: int, generator: str) -> torch.Generator:
        """A generator per search, seeded by the run's seed and the search's name, so that a search
        draws the same numbers whichever other generators run (reduced to torch's 64-bit seed range)."""
        return torch.Generator().manual_seed((seed * 1000 + GENERATORS.index(generator)) % 2**64)

    def encoding(
        self, generator: str, shape: tuple[int, int, int], bounds: tuple[float, float]
    ) -> DirectEncoding | CppnEncoding:
        """The genome encoding of an evolutionary generator, images ``shape`` ``(C, H, W)`` in ``bounds``."""
        if generator == "evolution-direct":
            return DirectEncoding(
                shape, bounds, self.mutation_rate, self.mutation_eta, self.crossover_rate, self.crossover_eta
            )
        if generator == "evolution-cppn":
            return CppnEncoding(shape, bounds, max_hidden=self.cppn_max_hidden)
        raise ValueError(f"{generator!r} is not an evolutionary generator (no genome encoding)")

    def _search(
        self,
        generator: str,
        model: ImageClassifier,
        shape: tuple[int, int, int],
        num_classes: int,
        thresholds: list[float],
        context: RunContext,
        advance: Callable[[], None],
    ) -> SearchTrace:
        budget = Budget(self.time_budget, context)
        rng = self._rng(context.seed, generator)
        if generator == "gradient-ascent":
            settings = AscentSettings(
                starts_per_class=max(1, self.population // num_classes),
                max_lr=self.ascent_max_lr,
                decay=self.ascent_decay,
            )
            return run_gradient_ascent(
                model,
                shape=shape,
                num_classes=num_classes,
                generations=self.generations,
                settings=settings,
                thresholds=thresholds,
                rng=rng,
                budget=budget,
                batch_size=context.batch_size,
                on_generation=advance,
            )
        return run_map_elites(
            generator,
            self.encoding(generator, shape, model.bounds),
            batched_evaluator(model, context.batch_size),
            num_classes=num_classes,
            population=self.population,
            generations=self.generations,
            thresholds=thresholds,
            rng=rng,
            budget=budget,
            on_generation=advance,
        )

    # -- recognisability -----------------------------------------------------------------------
    def _transfer_model(self, model: ImageClassifier, num_classes: int) -> ImageClassifier | None:
        """The second model of the transfer check (``None``: none), loaded and checked against ``model``."""

        spec = self.transfer_model
        if spec == "auto":
            spec = default_transfer_model(model.name)
        if spec is None or spec == "none":
            return None
        transfer = load_model(spec)
        check_compatible(model, transfer, num_classes)
        return transfer

    def _recognisability(
        self,
        trace: SearchTrace,
        model: ImageClassifier,
        data: ImageDataset,
        transfer: ImageClassifier | None,
        same_shape: bool,
    ) -> Recognisability:
        """Transfer to the second model and distance to the real images of the data, for each elite."""
        count = len(trace.best)
        classes = torch.arange(count)
        confidence = np.full(count, np.nan)
        prediction = np.full(count, -1)
        if transfer is not None:
            probs = transfer_probabilities(
                transfer, trace.images, model.bounds, normalize=self.transfer_normalize
            )
            confidence = probs[classes, classes].numpy()
            prediction = probs.argmax(1).numpy()
        distance = np.full(count, np.nan)
        if same_shape:
            distance = nearest_distances(trace.images, classes, data, model.bounds).numpy()
        return Recognisability(confidence, prediction, distance)

    def _transfer_accuracy(
        self, model: ImageClassifier, data: ImageDataset, transfer: ImageClassifier | None
    ) -> float | None:
        """Accuracy of the transfer model on the probe's data, converted as the elites are."""
        if transfer is None or not len(data) or tuple(data.shape) != tuple(model.input_shape or data.shape):
            return None
        probs = transfer_probabilities(transfer, data.x, model.bounds, normalize=self.transfer_normalize)
        return float((probs.argmax(1) == data.y).double().mean())

    # -- results -------------------------------------------------------------------------------
    def _result(
        self,
        model: ImageClassifier,
        data: ImageDataset,
        traces: list[SearchTrace],
        num_classes: int,
        chosen: list[str],
        transfer: ImageClassifier | None,
    ) -> ProbeResult:
        threshold = self.threshold
        same_shape = len(data) > 0 and tuple(data.shape) == tuple(traces[0].images.shape[1:])
        metrics: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        for trace in traces:
            check = self._recognisability(trace, model, data, transfer, same_shape)
            metrics.update(_generator_metrics(trace, check, threshold))
            rows.extend(_generator_rows(trace, check, threshold, model))
        best = max(traces, key=lambda t: _rank(metrics, t.generator))
        classes_fooled = metrics[f"{best.generator}/classes_fooled"]
        metrics.update(
            {
                "classes_fooled": classes_fooled,
                "classes_fooled_9999": max(metrics[f"{t.generator}/classes_fooled_9999"] for t in traces),
                "best_generator": best.generator,
                "threshold": threshold,
                "num_classes": num_classes,
                "chance_confidence": 1.0 / num_classes,
                "transfer_model": transfer.name if transfer is not None else None,
                "transfer_accuracy_on_data": self._transfer_accuracy(model, data, transfer),
                "nearest_distance_real_baseline": real_nearest_baseline(data, model.bounds)
                if same_shape
                else None,
                "nearest_distance_data": data.name if same_shape else None,
                "nearest_distance_images": len(data) if same_shape else 0,
            }
        )
        if "gradient-ascent" in self.generators() and "gradient-ascent" not in chosen:
            metrics["gradient-ascent/skipped"] = "model offers no gradients"
        status, message = "ok", ""
        # the run's deadline stops the generator it interrupts and the ones that never started
        unfinished = [t.generator for t in traces if t.stopped == "deadline"] + chosen[len(traces) :]
        if unfinished:
            status, message = "timeout", f"time budget spent; unfinished generators: {', '.join(unfinished)}"
        return ProbeResult(
            1.0 - classes_fooled,
            metrics,
            pd.DataFrame(rows),
            [_gallery(t, model) for t in traces],
            tables=[
                _transfer_table(traces, metrics, threshold),
                _class_table(traces, model, threshold),
            ],
            status=status,
            message=message,
        )


def _rank(metrics: dict[str, Any], generator: str) -> tuple[float, float, float, float]:
    """Order of generators: more classes fooled (at the threshold, then at 0.9999), then fewer
    generations until all were fooled, then a higher median confidence."""
    all_fooled = metrics[f"{generator}/generations_to_all_fooled"]
    return (
        metrics[f"{generator}/classes_fooled"],
        metrics[f"{generator}/classes_fooled_9999"],
        -all_fooled if all_fooled is not None else -math.inf,
        metrics[f"{generator}/median_best_confidence"],
    )


def _progress(context: RunContext, total_units: int, total_generations: int) -> Callable[[], None]:
    """A per-generation callback that advances the runner's progress bar (sized in samples) evenly."""
    state = {"generations": 0, "reported": 0}

    def advance() -> None:
        state["generations"] += 1
        due = total_units * min(state["generations"], total_generations) // max(total_generations, 1)
        if due > state["reported"]:
            context.advance(due - state["reported"])
            state["reported"] = due

    return advance


def _curve(trace: SearchTrace) -> dict[str, float]:
    """Generation (as a string) -> median best confidence, at most :data:`CURVE_POINTS` points, the last kept."""
    generations = sorted(trace.curve)
    stride = max(1, math.ceil(len(generations) / (CURVE_POINTS - 1)))
    kept = generations[::stride]
    if kept[-1] != generations[-1]:
        kept.append(generations[-1])
    return {str(g): trace.curve[g] for g in kept}


def _finite_or_none(value: float) -> float | None:
    """``value`` as a JSON number; ``None`` for NaN (a check that was skipped, a threshold never reached)."""
    return float(value) if math.isfinite(value) else None


def _summary(values: np.ndarray, where: np.ndarray, how: Callable[[np.ndarray], Any]) -> float | None:
    """``how`` (``np.median``, ``np.mean``, ...) of ``values[where]``; ``None`` where nothing is selected."""
    return float(how(values[where])) if where.any() else None


def _generator_metrics(trace: SearchTrace, check: Recognisability, threshold: float) -> dict[str, Any]:
    """The metrics of one generator, keyed ``"<generator>/<metric>"`` (see the module docstring)."""
    best = trace.best.numpy()
    reached = trace.first_generation[threshold].numpy()  # (K,) generation, -1 = never
    seconds = trace.first_seconds[threshold].numpy()  # (K,) seconds, NaN = never
    fooled = reached >= 0
    every = fooled if fooled.all() else np.zeros_like(fooled)  # "to all fooled" needs every class
    transferred = ~np.isnan(check.transfer_confidence)
    agreed = (check.transfer_prediction == np.arange(len(best))).astype(np.float64)
    metrics: dict[str, Any] = {
        "classes_fooled": float(fooled.mean()),
        "classes_fooled_9999": float((trace.first_generation[STRICT_THRESHOLD] >= 0).double().mean()),
        "median_best_confidence": float(np.median(best)),
        "best_confidence": {str(k): float(v) for k, v in enumerate(best)},
        "generations_to_threshold": {str(k): int(g) if g >= 0 else None for k, g in enumerate(reached)},
        "seconds_to_threshold": {str(k): _finite_or_none(t) for k, t in enumerate(seconds)},
        "confidence_curve": _curve(trace),
        "median_generations_to_threshold": _summary(reached, fooled, np.median),
        "median_seconds_to_threshold": _summary(seconds, fooled, np.median),
        "generations_to_all_fooled": int(reached.max()) if fooled.all() else None,
        "seconds_to_all_fooled": _summary(seconds, every, np.max),
        "cpu_seconds_to_all_fooled": _summary(trace.first_cpu_seconds[threshold].numpy(), every, np.max),
        "generations": trace.generations,
        "seconds": trace.seconds,
        "cpu_seconds": trace.cpu_seconds,
        "generations_per_second": (trace.generations + 1) / trace.seconds if trace.seconds > 0 else None,
        "stopped": trace.stopped,
        "transfer_confidence": _summary(check.transfer_confidence, transferred, np.mean),
        "transfer_agreement": _summary(agreed, transferred, np.mean),
        "nearest_distance": _summary(check.nearest_distance, ~np.isnan(check.nearest_distance), np.mean),
    }
    return {f"{trace.generator}/{key}": value for key, value in metrics.items()}


def _generator_rows(
    trace: SearchTrace, check: Recognisability, threshold: float, model: ImageClassifier
) -> list[dict[str, Any]]:
    rows = []
    for k, confidence in enumerate(trace.best.tolist()):
        reached = int(trace.first_generation[threshold][k])
        strict = int(trace.first_generation[STRICT_THRESHOLD][k])
        rows.append(
            {
                "generator": trace.generator,
                "class": k,
                "label": model.label(k),
                "best_confidence": confidence,
                "fooled": reached >= 0,
                "generations_to_threshold": reached if reached >= 0 else None,
                "seconds_to_threshold": _finite_or_none(float(trace.first_seconds[threshold][k])),
                "fooled_9999": strict >= 0,
                "generations_to_9999": strict if strict >= 0 else None,
                "transfer_confidence": _finite_or_none(float(check.transfer_confidence[k])),
                "transfer_prediction": int(check.transfer_prediction[k])
                if check.transfer_prediction[k] >= 0
                else None,
                "nearest_distance": _finite_or_none(float(check.nearest_distance[k])),
            }
        )
    return rows


def _gallery(trace: SearchTrace, model: ImageClassifier) -> Artifact:
    """One elite per class, captioned ``class (confidence)``, scaled from the bounds to [0, 1] for display."""
    low, high = model.bounds
    images = ((trace.images - low) / (high - low)).clamp(0, 1)
    captions = [f"{model.label(k)} ({c:.4f})" for k, c in enumerate(trace.best.tolist())]
    return Artifact(f"{trace.generator}: best image per class", [img.numpy() for img in images], captions)


def _transfer_table(traces: list[SearchTrace], metrics: dict[str, Any], threshold: float) -> Table:
    """One row per generator: fooling rate, transfer to the second model, distance to real images."""
    rows = []
    for trace in traces:
        name = trace.generator
        rows.append(
            {
                "generator": name,
                f"classes fooled (>= {threshold:g})": metrics[f"{name}/classes_fooled"],
                "classes fooled (>= 0.9999)": metrics[f"{name}/classes_fooled_9999"],
                "median confidence": metrics[f"{name}/median_best_confidence"],
                "transfer confidence": metrics[f"{name}/transfer_confidence"],
                "transfer agreement": metrics[f"{name}/transfer_agreement"],
                "nearest real image (RMS)": metrics[f"{name}/nearest_distance"],
            }
        )
    second = metrics.get("transfer_model")
    transfer = (
        f"Transfer: mean probability that a second model, {second}, gives each elite's class (chance "
        f"{metrics['chance_confidence']:.3g}; its accuracy on the data through the same image conversion: "
        f"{_fmt(metrics.get('transfer_accuracy_on_data'))}); agreement: fraction of elites it puts in that class."
        if second
        else "Transfer: no second model for this model (set transfer_model to a model spec)."
    )
    data = metrics.get("nearest_distance_data")
    nearest = (
        f"Nearest real image: mean RMS pixel distance (fraction of the value range) from each elite to the closest "
        f"image of its class among the {metrics['nearest_distance_images']} images of {data}; real images of a class "
        f"lie {_fmt(metrics.get('nearest_distance_real_baseline'))} from their nearest neighbour (median)."
        if data
        else "Nearest real image: not computed (no data of the model's input shape)."
    )
    note = f"{transfer} {nearest}"
    return Table("Recognisability of the fooling images", pd.DataFrame(rows), note)


def _class_table(traces: list[SearchTrace], model: ImageClassifier, threshold: float) -> Table:
    """One row per class: each generator's best confidence and the generation / seconds it reached ``threshold``."""
    frame = pd.DataFrame({"class": [model.label(k) for k in range(len(traces[0].best))]})
    for trace in traces:
        reached = trace.first_generation[threshold]
        frame[f"{trace.generator} confidence"] = trace.best.tolist()
        frame[f"{trace.generator} generation"] = [int(g) if g >= 0 else None for g in reached.tolist()]
        frame[f"{trace.generator} seconds"] = [
            _finite_or_none(float(t)) for t in trace.first_seconds[threshold]
        ]
    note = (
        f"Best confidence per class, and the generation (0 = the random start) and wall-clock seconds from the "
        f"generator's start at which the class first reached {threshold:g} (empty: never)."
    )
    return Table("Confidence per class", frame, note)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
