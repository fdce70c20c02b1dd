"""The zoo leaderboard audit on the local executor vs the Ray executor, on this machine.

Both run the same run units (every zoo classifier x bare / each default defense x fgsm, pgd-linf,
deepfool; ``--samples`` samples each) with the same seed, and must give identical scores; the table
prints wall time, runs per minute and the speed-up. Ray's time includes starting a local instance
(``ray.init``) and its workers, which is what a user on one machine pays.

    python benchmarks/bench_executor.py --samples 100 --cpus 2

How it scales past one machine: every unit is an independent Ray task holding one CPU (``Plugin.resources``
declares more, e.g. a GPU), models load once per worker process, and only the finished outcome travels back
to the driver, which saves it. On a cluster (``--ray-address auto`` from a node of a running cluster) the
audit's wall time falls with the number of CPUs until it reaches the longest single unit; splitting large
units into sample shards is what would go further.
"""

from __future__ import annotations

import argparse
import time

from robustcheck.run.ray import RayExecutor
from robustcheck.run.runner import LocalExecutor, Runner, RunSpec

MODELS = ("digits-mlp", "digits-cnn")
DEFENSES = (None, "bit-depth", "median-filter")
PROBES = ("fgsm", "pgd-linf", "deepfool")


def specs(samples: int, seed: int) -> list[RunSpec]:
    return [
        RunSpec(model=m, probe=p, defense=d, samples=samples, seed=seed)
        for m in MODELS
        for d in DEFENSES
        for p in PROBES
    ]


def timed(executor: object, units: list[RunSpec]) -> tuple[float, list[float | None]]:
    runner = Runner(None, quiet=True)
    for name in MODELS:  # load models in the driver before timing, as an audit's check() does
        runner.model(name)
    start = time.perf_counter()
    outcomes = runner.run(units, executor)
    return time.perf_counter() - start, [o.result.score for o in outcomes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # Ray gives each task one thread (OMP_NUM_THREADS=1): compare like with like
    units = specs(args.samples, args.seed)
    local_s, local_scores = timed(LocalExecutor(), units)
    ray_s, ray_scores = timed(RayExecutor(num_cpus=args.cpus), units)
    print(f"{len(units)} runs, {args.samples} samples each, seed {args.seed}")
    print(f"{'executor':<10}{'wall s':>10}{'runs/min':>10}")
    for name, seconds in (("local", local_s), (f"ray x{args.cpus}", ray_s)):
        print(f"{name:<10}{seconds:>10.1f}{60 * len(units) / seconds:>10.1f}")
    print(f"speed-up ray / local: {local_s / ray_s:.2f}x; identical scores: {local_scores == ray_scores}")


if __name__ == "__main__":
    main()
