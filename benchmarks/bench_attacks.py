"""Overhead of robustcheck's PGD-Linf probe over calling foolbox directly.

Both sides attack the same model (``digits-cnn``) on the same samples (``digits-rgb32``) with the
same parameters, in batches of the same size, in the same process; runs alternate and the median
wall time of each side is reported, with the overhead ratio ``ours / raw - 1``.

* ``ours``: ``create_probe("pgd-linf", ...)(model, data, seed=0)`` (attack, re-check, records, artifacts).
* ``raw``: ``fb.attacks.LinfPGD(...)(fb.PyTorchModel(model, bounds=(0, 1)), x, criterion, epsilons=...)``
  per batch, plus robust accuracy from foolbox's success flags. By default the model's parameters
  keep ``requires_grad`` (what a plain foolbox user runs: every attack step also computes weight
  gradients); ``raw-frozen`` turns it off around the call, as robustcheck does, and is the fair
  baseline for the overhead.

    python benchmarks/bench_attacks.py --samples 256 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.loading import load_data
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.ops.metrics import epsilon_key
from robustcheck.params import parse_value
from robustcheck.plugins import create_probe
from robustcheck.probes._foolbox import import_foolbox
from robustcheck.probes.foolbox_attacks import LINF_EPSILONS
from robustcheck.seeding import seed_everything


def run_ours(model: ImageClassifier, data: ImageDataset, args: argparse.Namespace) -> dict[str, float]:
    probe = create_probe(
        "pgd-linf",
        steps=args.steps,
        rel_stepsize=args.rel_stepsize,
        epsilons=args.epsilons,
        random_start=args.random_start,
    )
    result = probe(model, data, seed=0, batch_size=args.batch_size)
    return result.metrics["robust_accuracy"]


def run_raw(
    model: ImageClassifier, data: ImageDataset, args: argparse.Namespace, frozen: bool
) -> dict[str, float]:
    fb = import_foolbox()
    seed_everything(0)
    params = list(model.parameters())
    if frozen:
        for p in params:
            p.requires_grad_(False)
    try:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=args.device)
        attack = fb.attacks.LinfPGD(
            rel_stepsize=args.rel_stepsize, steps=args.steps, random_start=args.random_start
        )
        successes = []
        for start in range(0, len(data), args.batch_size):
            x = data.x[start : start + args.batch_size].to(args.device)
            y = data.y[start : start + args.batch_size].to(args.device)
            _, _, success = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=args.epsilons)
            successes.append(success)
        robust = 1.0 - torch.cat(successes, dim=1).float().mean(dim=1).cpu()
    finally:
        for p in params:
            p.requires_grad_(True)
            p.grad = None  # a plain foolbox run leaves weight gradients behind
    return {epsilon_key(e): float(a) for e, a in zip(args.epsilons, robust, strict=True)}


def timed(fn: Callable[[], dict[str, float]]) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=256, help="leading samples of digits-rgb32 (default 256)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="samples per attack call (default 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rel-stepsize", type=float, default=0.1)
    parser.add_argument("--epsilons", type=parse_value, default=LINF_EPSILONS, help="e.g. [0,2/255,8/255]")
    parser.add_argument("--random-start", type=parse_value, default=True, help="true/false (default true)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each side, alternating (default 5)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no-raw-unfrozen", action="store_true", help="skip the raw run with trainable parameters"
    )
    args = parser.parse_args(argv)
    args.epsilons = sorted(
        float(e) for e in (args.epsilons if isinstance(args.epsilons, list) else [args.epsilons])
    )
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model("digits-cnn")
    model.to(args.device)
    model.device = torch.device(args.device)
    model.eval()
    data = load_data("digits-rgb32").head(args.samples)
    sides: dict[str, Callable[[], dict[str, float]]] = {
        "ours": lambda: run_ours(model, data, args),
        "raw-frozen": lambda: run_raw(model, data, args, frozen=True),
    }
    if not args.no_raw_unfrozen:
        sides["raw"] = lambda: run_raw(model, data, args, frozen=False)

    print(
        f"PGD-Linf on digits-cnn, {len(data)} samples of digits-rgb32, batch {args.batch_size}, steps {args.steps}, "
        f"rel_stepsize {args.rel_stepsize}, random_start {args.random_start}, {len(args.epsilons)} epsilons, "
        f"device {args.device}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    for fn in sides.values():  # warm-up (imports, allocator, first-call costs)
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    accuracy: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            seconds, accuracy[name] = timed(fn)
            times[name].append(seconds)

    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["raw-frozen"]
    print(f"\n{'side':<12} {'median s':>9} {'min s':>8} {'max s':>8} {'vs raw-frozen':>14}")
    for name, t in times.items():
        print(
            f"{name:<12} {medians[name]:>9.3f} {min(t):>8.3f} {max(t):>8.3f} {medians[name] / base - 1:>+13.1%}"
        )
    overhead = medians["ours"] / base - 1
    print(f"\noverhead ours / raw-frozen - 1 = {overhead:+.1%} (target < 10%)")
    if "raw" in medians:
        print(f"overhead ours / raw - 1        = {medians['ours'] / medians['raw'] - 1:+.1%}")

    print(f"\n{'epsilon':>10} " + " ".join(f"{name:>11}" for name in accuracy))
    for key in accuracy["ours"]:
        print(f"{key:>10} " + " ".join(f"{accuracy[name][key]:>11.4f}" for name in accuracy))
    ours, raw = np.array(list(accuracy["ours"].values())), np.array(list(accuracy["raw-frozen"].values()))
    print(f"max |ours - raw| = {np.abs(ours - raw).max():.4f}")


if __name__ == "__main__":
    main()
