"""Generations per second of the fooling probe's MAP-Elites: batched vs one image at a time.

Both sides run the same algorithm on the same model (default ``digits-cnn``) in the same process:

* ``batched``: what the probe does - the whole population is made, rendered and scored at once
  (:func:`robustcheck.probes.fooling.search.run_map_elites`, forward passes of ``--batch-size`` images);
* ``naive``: the textbook loop - for each child in turn draw a parent, mutate it, render it, score it
  with a forward pass of one image and update the archive.

Crossover is off on both sides (the naive loop makes one child at a time). Runs alternate
(batched, naive, batched, ...) and the medians over ``--repeats`` are reported, in wall-clock and in
CPU seconds of this process: on a shared, busy machine the CPU time is the steadier measure. The
table also gives the time of one batched forward pass of the population, so ``s/generation`` can
be read as "forward passes per generation". Compare numbers from the same run only.

    python benchmarks/bench_fooling.py --generations 5 --population 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from robustcheck.api import RunContext
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.probes.fooling.cppn import CppnEncoding
from robustcheck.probes.fooling.genomes import DirectEncoding, Encoding
from robustcheck.probes.fooling.probe import FoolingProbe
from robustcheck.probes.fooling.search import Budget, EliteArchive, batched_evaluator, run_map_elites


def make_encoding(name: str, model: ImageClassifier) -> DirectEncoding | CppnEncoding:
    """The probe's ``evolution-<name>`` encoding for ``model``, without crossover (see the module docstring)."""
    assert model.input_shape is not None
    shape = (model.input_shape[0], model.input_shape[1], model.input_shape[2])
    return FoolingProbe(crossover_rate=0.0).encoding(f"evolution-{name}", shape, model.bounds)


Timing = tuple[float, float]  # (wall seconds, CPU seconds) per generation


def batched(
    model: ImageClassifier, encoding: Encoding[Any], args: argparse.Namespace, classes: int
) -> Timing:
    """Seconds per generation of the probe's batched MAP-Elites."""
    trace = run_map_elites(
        "bench",
        encoding,
        batched_evaluator(model, args.batch_size),
        num_classes=classes,
        population=args.population,
        generations=args.generations,
        thresholds=[0.99],
        rng=torch.Generator().manual_seed(0),
        budget=Budget(None, RunContext()),
    )
    count = trace.generations + 1
    return trace.seconds / count, trace.cpu_seconds / count


def naive(model: ImageClassifier, encoding: Encoding[Any], args: argparse.Namespace, classes: int) -> Timing:
    """Seconds per generation when every child is made, rendered and scored on its own."""
    rng = torch.Generator().manual_seed(0)
    archive: EliteArchive[Any] = EliteArchive.empty(classes)
    start, cpu_start = time.perf_counter(), time.process_time()
    for generation in range(args.generations + 1):
        for _ in range(args.population):
            if generation == 0:
                child = encoding.random(1, rng)
            else:
                child = encoding.offspring(archive.sample_parents(1, rng), rng)
            image = encoding.render(child)
            archive.update(child, image, model.predict(image).double().softmax(1))
    count = args.generations + 1
    return (time.perf_counter() - start) / count, (time.process_time() - cpu_start) / count


def forward_pass(model: ImageClassifier, args: argparse.Namespace) -> Timing:
    """Seconds of one batched forward pass over a population of random images."""
    assert model.input_shape is not None
    low, high = model.bounds
    images = low + (high - low) * torch.rand(args.population, *model.input_shape)
    evaluate = batched_evaluator(model, args.batch_size)
    evaluate(images)  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    evaluate(images)
    return time.perf_counter() - start, time.process_time() - cpu_start


def medians(timings: list[Timing]) -> Timing:
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--encodings", nargs="+", default=["direct", "cppn"], choices=["direct", "cppn"])
    parser.add_argument("--generations", type=int, default=3, help="generations after the initial population")
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if model.num_classes is None:
        parser.error(f"model {args.model!r} names no classes (labels); give a labelled model")
    classes = model.num_classes
    forward = medians([forward_pass(model, args) for _ in range(max(5, args.repeats))])
    print(f"model {args.model}, population {args.population}, {args.generations + 1} generations per run, "
          f"{args.repeats} repeat(s), {args.threads} thread(s)")  # fmt: skip
    print(
        f"one batched forward pass of the population: {forward[0] * 1000:.1f} ms wall, {forward[1] * 1000:.1f} ms CPU\n"
    )
    header = (
        f"{'encoding':<10}{'mode':<9}{'gen/s':>8}{'s/gen':>8}{'CPU s/gen':>11}"
        f"{'fwd passes/gen (CPU)':>22}{'speedup wall':>14}{'speedup CPU':>13}"
    )
    print(header)
    print("-" * len(header))
    for name in args.encodings:
        encoding = make_encoding(name, model)
        runs: dict[str, list[Timing]] = {"batched": [], "naive": []}
        for _ in range(args.repeats):  # alternate, so both sides see the same machine load
            runs["batched"].append(batched(model, encoding, args, classes))
            runs["naive"].append(naive(model, encoding, args, classes))
        fast, slow = medians(runs["batched"]), medians(runs["naive"])
        for mode, (wall, cpu) in (("batched", fast), ("naive", slow)):
            speedups = (slow[0] / fast[0], slow[1] / fast[1]) if mode == "batched" else (1.0, 1.0)
            print(
                f"{name:<10}{mode:<9}{1 / wall:>8.2f}{wall:>8.3f}{cpu:>11.3f}{cpu / forward[1]:>22.2f}"
                f"{speedups[0]:>13.1f}x{speedups[1]:>12.1f}x"
            )


if __name__ == "__main__":
    main()
