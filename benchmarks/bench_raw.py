"""Benchmark of the ``raw-isp`` defense: throughput and the robustness table (issue 6).

1. Images per second through the defended model (classic, learned, JPEG) vs the bare model, measured
   in the same run on the same batches.
2. For each defense x attack (FGSM, PGD-Linf) x eps in {2, 4, 8}/255, through the Runner and the
   foolbox probes: clean accuracy with the defense, non-adaptive robust accuracy (crafted on the bare
   model, ``adaptive=false``) and adaptive robust accuracy (through the defense; EOT over the noise
   for randomised defenses).

    python benchmarks/bench_raw.py                     # digits-cnn, 100 samples
    python benchmarks/bench_raw.py --samples 300 --steps 20 --eot 8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import pandas as pd
import torch

from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.plugins import create_defense
from robustcheck.run.runner import Runner, RunSpec

EPSILONS = [0.0, 2 / 255, 4 / 255, 8 / 255]
DEFENSES = [
    "none",
    "raw-isp:mode=classic",
    "raw-isp:mode=classic,noise=0.0003",
    "raw-isp:mode=learned",
    "jpeg:quality=75",
    "bit-depth:bits=4",
]
THROUGHPUT_DEFENSES = [
    "raw-isp:mode=classic",
    "raw-isp:mode=classic,noise=0.0003",
    "raw-isp:mode=learned",
    "jpeg",
]


def is_randomised(defense: str | None) -> bool:
    """True for a raw-isp spec with sensor noise (adaptive attacks then need EOT)."""
    if not defense or not defense.startswith("raw-isp"):
        return False
    return bool(create_defense(defense).params["noise"] > 0)


def images_per_second(model: torch.nn.Module, x: torch.Tensor, batch_size: int, repeats: int) -> float:
    """Forward passes over ``x`` ``(N, C, H, W)`` in batches, best of ``repeats`` runs, in images/s."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
            best = min(best, time.perf_counter() - start)
    return len(x) / best


def throughput_table(model: ImageClassifier, x: torch.Tensor, batch_size: int, repeats: int) -> pd.DataFrame:
    """Images/s of the bare model and of each defended model; ratio = defended / bare."""
    rows = [{"defense": "none", "images_per_s": images_per_second(model, x, batch_size, repeats)}]
    for spec in THROUGHPUT_DEFENSES:
        defended = create_defense(spec).apply(model).eval()
        rows.append({"defense": spec, "images_per_s": images_per_second(defended, x, batch_size, repeats)})
    frame = pd.DataFrame(rows)
    frame["ratio_to_bare"] = frame["images_per_s"] / frame["images_per_s"].iloc[0]
    return frame


def robustness_specs(
    model: str, defenses: Sequence[str], samples: int, steps: int, eot: int, seed: int
) -> list[tuple[str, str, bool, RunSpec]]:
    """(defense, attack, adaptive, spec) for the grid; the bare model is attacked once per attack."""
    out = []
    for defense in defenses:
        spec_defense = None if defense == "none" else defense
        for attack in ("fgsm", "pgd-linf"):
            params: dict = {"epsilons": EPSILONS, "examples": 0}
            if attack == "pgd-linf":  # step size such that the steps together travel 2.5 eps
                params.update(steps=steps, rel_stepsize=2.5 / steps)
            for adaptive in (False, True) if spec_defense else (True,):
                run_params = {**params, "adaptive": adaptive}
                if adaptive and is_randomised(spec_defense):
                    run_params["eot"] = eot
                out.append(
                    (
                        defense,
                        attack,
                        adaptive,
                        RunSpec(model, attack, run_params, None, spec_defense, samples, seed),
                    )
                )
    return out


def robustness_table(runner: Runner, specs: list[tuple[str, str, bool, RunSpec]]) -> pd.DataFrame:
    """One row per defense x attack x eps: clean, non-adaptive and adaptive robust accuracy."""
    results: dict[tuple[str, str], dict[str, dict]] = {}
    seconds: dict[tuple[str, str], float] = {}
    for defense, attack, adaptive, spec in specs:
        outcome = runner.execute(spec)
        if outcome.result.status != "ok":
            raise SystemExit(f"{spec.label}: {outcome.result.status}: {outcome.result.message}")
        key = (defense, attack)
        results.setdefault(key, {})["adaptive" if adaptive else "non_adaptive"] = outcome.result.metrics
        seconds[key] = seconds.get(key, 0.0) + outcome.result.seconds
    rows = []
    for (defense, attack), by_mode in results.items():
        adaptive = by_mode["adaptive"]
        non_adaptive = by_mode.get("non_adaptive", adaptive)  # bare model: both are the same attack
        for key, value in adaptive["robust_accuracy"].items():
            if float(key) == 0.0:
                continue
            rows.append(
                {
                    "defense": defense,
                    "attack": attack,
                    "eps": f"{round(float(key) * 255)}/255",
                    "clean": adaptive["clean_accuracy"],
                    "non_adaptive": non_adaptive["robust_accuracy"][key],
                    "adaptive": value,
                    "seconds": round(seconds[(defense, attack)], 1),
                }
            )
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="digits-cnn", help="model spec (default data is used)")
    parser.add_argument("--samples", type=int, default=100, help="test samples attacked")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument(
        "--eot", type=int, default=8, help="noise draws averaged per gradient (randomised defenses)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="throughput batch size")
    parser.add_argument("--repeats", type=int, default=3, help="throughput: best of this many passes")
    parser.add_argument("--defenses", nargs="*", default=DEFENSES, help="defense specs ('none' = bare model)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    runner = Runner(quiet=True)
    model = load_model(args.model)
    runner.add_model(args.model, model)
    pd.set_option("display.width", 200)
    if not args.skip_throughput:
        data = runner.data_for(RunSpec(args.model, "fgsm", samples=None))
        print(
            f"throughput on {len(data)} images of {data.name} (batch {args.batch_size}, best of {args.repeats})"
        )
        print(
            throughput_table(model, data.x, args.batch_size, args.repeats).to_string(
                index=False, float_format="%.3f"
            )
        )
        print()
    specs = robustness_specs(args.model, args.defenses, args.samples, args.steps, args.eot, args.seed)
    table = robustness_table(runner, specs)
    print(
        f"robust accuracy on {args.samples} samples, {args.model}; PGD {args.steps} steps; EOT {args.eot} for noisy raw-isp"
    )
    print(table.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
