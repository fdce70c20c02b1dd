"""The searches of the fooling probe: MAP-Elites over an encoding, and gradient ascent.

Both produce a :class:`SearchTrace`: the best image and confidence per class, the median best
confidence after every generation, and when each class first reached each confidence threshold.
A *generation* is one batched evaluation: generation 0 scores the random initial population (or the
noise starts of gradient ascent), each later one scores a full batch of children (or one ascent step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic

import torch

from robustcheck.api import RunContext
from robustcheck.errors import ProbeTimeout
from robustcheck.models.classifier import ImageClassifier
from robustcheck.probes.fooling.genomes import Encoding, PopulationT

#: images ``(P, C, H, W)`` -> class probabilities ``(P, K)`` float64
Evaluator = Callable[[torch.Tensor], torch.Tensor]


def batched_evaluator(model: ImageClassifier, batch_size: int) -> Evaluator:
    """Score a whole population in forward passes of ``batch_size`` images (eval mode, no gradients).

    Probabilities are computed in float64 from the logits so that confidences near 1 (0.9999 and
    beyond) still rank children instead of all rounding to 1.0.
    """

    def evaluate(images: torch.Tensor) -> torch.Tensor:
        return model.predict(images, batch_size=batch_size).double().softmax(1)

    return evaluate


@dataclass
class EliteArchive(Generic[PopulationT]):
    """MAP-Elites archive with one cell per class, each holding the genome most confident for its class.

    Attributes:
        fitness: ``(K,)`` float64 best probability per class so far (``-inf`` while empty).
        genomes: the elites (``K`` genomes, cell order), ``None`` before the first update.
        images: ``(K, C, H, W)`` the elites rendered, ``None`` before the first update.
    """

    fitness: torch.Tensor
    genomes: PopulationT | None = None
    images: torch.Tensor | None = None

    @classmethod
    def empty(cls, num_classes: int) -> EliteArchive[PopulationT]:
        """An archive of ``num_classes`` empty cells."""
        return cls(torch.full((num_classes,), -math.inf, dtype=torch.float64))

    def update(self, children: PopulationT, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Let each child take every cell whose class probability it beats; ``probs`` is ``(P, K)``.

        Where several children beat a cell, the most confident (the first on ties) takes it, which
        is what processing the children one by one gives. Returns the ``(K,)`` bool mask of replaced cells.
        """
        best, owner = probs.max(0)
        better = best > self.fitness
        if self.genomes is None or self.images is None:
            self.genomes, self.images = children.take(owner), images[owner].clone()
        else:
            cells = better.nonzero().flatten()
            self.genomes = self.genomes.replace(cells, children, owner[cells])
            self.images[cells] = images[owner[cells]]
        self.fitness = torch.where(better, best, self.fitness)
        return better

    def sample_parents(self, count: int, rng: torch.Generator) -> PopulationT:
        """``count`` parents drawn uniformly over cells (an elite owning k cells is k times as likely)."""
        if self.genomes is None:
            raise RuntimeError("the archive is empty: update it with a first population before sampling")
        return self.genomes.take(torch.randint(len(self.fitness), (count,), generator=rng))


@dataclass
class SearchTrace:
    """What one search produced.

    Attributes:
        generator: ``evolution-direct``, ``evolution-cppn`` or ``gradient-ascent``.
        best: ``(K,)`` best probability per class (float64).
        images: ``(K, C, H, W)`` the best image per class, within the model bounds.
        curve: generation -> median over classes of the best probability so far.
        first_generation: threshold -> ``(K,)`` int64 generation at which the class first reached it (-1: never).
        first_seconds: threshold -> ``(K,)`` float64 seconds from the search's start to that generation (NaN: never).
        first_cpu_seconds: the same in CPU seconds of this process (less sensitive to a busy machine).
        generations: generations completed after generation 0 (0 if only the start was scored).
        seconds: wall time of the search.
        cpu_seconds: CPU time of this process during the search (all torch threads).
        stopped: ``"generations"`` (all run), ``"time_budget"`` (the generator's own) or ``"deadline"`` (the run's).
    """

    generator: str
    best: torch.Tensor
    images: torch.Tensor
    curve: dict[int, float] = field(default_factory=dict)
    first_generation: dict[float, torch.Tensor] = field(default_factory=dict)
    first_seconds: dict[float, torch.Tensor] = field(default_factory=dict)
    first_cpu_seconds: dict[float, torch.Tensor] = field(default_factory=dict)
    generations: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    stopped: str = "generations"


class _Recorder:
    """Fills a :class:`SearchTrace` generation by generation."""

    def __init__(self, generator: str, num_classes: int, thresholds: Sequence[float]) -> None:
        self.generator, self.start, self.cpu_start = generator, time.perf_counter(), time.process_time()
        self.curve: dict[int, float] = {}
        self.first_generation = {t: torch.full((num_classes,), -1, dtype=torch.int64) for t in thresholds}
        self.first_seconds = {
            t: torch.full((num_classes,), math.nan, dtype=torch.float64) for t in thresholds
        }
        self.first_cpu_seconds = {t: seconds.clone() for t, seconds in self.first_seconds.items()}
        self.generation = 0

    def elapsed(self) -> float:
        """Wall-clock seconds since the search started."""
        return time.perf_counter() - self.start

    def cpu_elapsed(self) -> float:
        """CPU seconds of this process since the search started."""
        return time.process_time() - self.cpu_start

    def record(self, generation: int, fitness: torch.Tensor) -> None:
        """Note the best probability per class ``fitness`` ``(K,)`` float64 after ``generation``."""
        self.generation = generation
        # quantile, not median: torch's median of an even count is the lower middle value, not their mean
        self.curve[generation] = float(fitness.quantile(0.5))
        seconds, cpu_seconds = self.elapsed(), self.cpu_elapsed()
        for threshold, first in self.first_generation.items():
            new = (fitness >= threshold) & (first < 0)
            first[new] = generation
            self.first_seconds[threshold][new] = seconds
            self.first_cpu_seconds[threshold][new] = cpu_seconds

    def finish(self, best: torch.Tensor, images: torch.Tensor, stopped: str) -> SearchTrace:
        """The trace of the search: ``best`` ``(K,)`` and ``images`` ``(K, C, H, W)`` are the elites."""
        return SearchTrace(
            generator=self.generator,
            best=best.clone(),
            images=images.clone(),
            curve=self.curve,
            first_generation=self.first_generation,
            first_seconds=self.first_seconds,
            first_cpu_seconds=self.first_cpu_seconds,
            generations=self.generation,
            seconds=self.elapsed(),
            cpu_seconds=self.cpu_elapsed(),
            stopped=stopped,
        )


@dataclass
class Budget:
    """When a search must stop besides its generation count.

    Attributes:
        time_budget: seconds for this search (``None``: no own limit).
        context: the run's context; its deadline stops every search (status ``timeout``).
    """

    time_budget: float | None
    context: RunContext

    def stop_reason(self, elapsed: float) -> str | None:
        """``"time_budget"``, ``"deadline"`` or ``None`` (go on) after ``elapsed`` seconds of the search."""
        if self.time_budget is not None and elapsed >= self.time_budget:
            return "time_budget"
        try:
            self.context.check_time()
        except ProbeTimeout:
            return "deadline"
        return None


def run_map_elites(
    generator: str,
    encoding: Encoding[PopulationT],
    evaluate: Evaluator,
    *,
    num_classes: int,
    population: int,
    generations: int,
    thresholds: Sequence[float],
    rng: torch.Generator,
    budget: Budget,
    on_generation: Callable[[], None] = lambda: None,
) -> SearchTrace:
    """MAP-Elites with one cell per class: score a random population, then for each generation draw
    ``population`` parents uniformly from the archive, make children and let each take the cells it beats."""
    recorder = _Recorder(generator, num_classes, thresholds)
    archive: EliteArchive[PopulationT] = EliteArchive.empty(num_classes)
    children = encoding.random(population, rng)
    stopped = "generations"
    for generation in range(generations + 1):
        if generation:
            children = encoding.offspring(archive.sample_parents(population, rng), rng)
        images = encoding.render(children)
        try:
            scores = evaluate(images)
        except ProbeTimeout:  # the run's budget ran out inside a model call: keep the archive of the last generation
            if not generation:
                raise
            stopped = "deadline"
            break
        archive.update(children, images, scores)
        recorder.record(generation, archive.fitness)
        on_generation()
        reason = budget.stop_reason(recorder.elapsed()) if generation < generations else None
        if reason:
            stopped = reason
            break
    assert archive.images is not None
    return recorder.finish(archive.fitness, archive.images, stopped)


@dataclass(frozen=True)
class AscentSettings:
    """Gradient ascent on the class probability with the paper's progress-based step size.

    Each step moves ``x += lr * g`` (``g`` the gradient of the target probability ``p``) with
    ``lr = min(max_lr, desired / |g|^2)`` and ``desired = min(early_progress, late_progress * (1 - p))``,
    i.e. the step a first-order model predicts raises ``p`` by ``desired``. Then ``x`` decays towards
    the centre of the bounds by the factor ``1 - decay`` (L2 decay) and is clipped to the bounds.
    """

    starts_per_class: int = 1
    max_lr: float = 1e12
    early_progress: float = 0.03
    late_progress: float = 0.1
    decay: float = 0.0


def probability_gradient(
    model: ImageClassifier, images: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-class probabilities ``(B,)`` float64 and their gradients ``(B, C, H, W)`` w.r.t. ``images``."""
    probs, grads = [], []
    with model.eval_mode(), model.frozen():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(model.device).requires_grad_(True)
            t = targets[start : start + batch_size].to(model.device)
            p = model(x).double().softmax(1).gather(1, t.view(-1, 1)).squeeze(1)
            (g,) = torch.autograd.grad(p.sum(), x)
            probs.append(p.detach().cpu())
            grads.append(g.float().cpu())
    return torch.cat(probs), torch.cat(grads)


def ascent_step(
    images: torch.Tensor,
    grad: torch.Tensor,
    prob: torch.Tensor,
    settings: AscentSettings,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """One progress-based ascent step on images ``(B, C, H, W)`` (see :class:`AscentSettings`)."""
    low, high = bounds
    norm2 = grad.flatten(1).pow(2).sum(1).double()
    desired = torch.minimum(
        torch.full_like(prob, settings.early_progress), settings.late_progress * (1.0 - prob)
    )
    lr = torch.where(norm2 > 0, torch.clamp(desired / norm2.clamp_min(1e-300), max=settings.max_lr), 0.0)
    moved = images + lr.float().view(-1, 1, 1, 1) * grad
    centre = 0.5 * (low + high)
    return (centre + (1.0 - settings.decay) * (moved - centre)).clamp(low, high)


def run_gradient_ascent(
    model: ImageClassifier,
    *,
    shape: tuple[int, int, int],
    num_classes: int,
    generations: int,
    settings: AscentSettings,
    thresholds: Sequence[float],
    rng: torch.Generator,
    budget: Budget,
    batch_size: int,
    on_generation: Callable[[], None] = lambda: None,
) -> SearchTrace:
    """From uniform-noise images (``starts_per_class`` per class, all classes in one batch) ascend each
    target class's probability; the best image per class over starts and steps is its elite."""
    low, high = model.bounds
    starts = settings.starts_per_class
    targets = torch.arange(num_classes).repeat_interleave(starts)
    images = low + (high - low) * torch.rand((len(targets), *shape), generator=rng)
    recorder = _Recorder("gradient-ascent", num_classes, thresholds)
    best = torch.full((num_classes,), -math.inf, dtype=torch.float64)
    best_images = torch.zeros((num_classes, *shape))
    stopped = "generations"
    for step in range(generations + 1):
        try:
            prob, grad = probability_gradient(model, images, targets, batch_size)
        except ProbeTimeout:  # the run's budget ran out inside a model call: keep the best images so far
            if not step:
                raise
            stopped = "deadline"
            break
        top, which = prob.view(num_classes, starts).max(1)
        better = top > best
        best_images[better] = images[(torch.arange(num_classes) * starts + which)[better]]
        best = torch.where(better, top, best)
        recorder.record(step, best)
        on_generation()
        reason = budget.stop_reason(recorder.elapsed()) if step < generations else None
        if step == generations or reason:
            stopped = reason or stopped
            break
        images = ascent_step(images, grad, prob, settings, (low, high))
    return recorder.finish(best, best_images, stopped)
