"""The same small audit, quiet and beside a CPU-bound competitor, with robustcheck's threads and torch's old default.

    python benchmarks/bench_contention.py                 # default audit: pgd-linf:steps=20, 100 samples
    python benchmarks/bench_contention.py --extra 1 2     # also fixed --threads 1 and --threads 2

Each variant runs ``robustcheck audit --probe pgd-linf:steps=20 --samples 100 --defense none --quiet`` as a
fresh process (the time a user waits, torch import included), first on its own, then beside a competitor: a
process doing 2-thread torch matmuls in a loop for the whole contended phase. Variants:

* ``robustcheck``: robustcheck's default threads and passive OpenMP waiting (what the CLI does);
* ``torch default``: torch loaded before robustcheck sets anything (OpenMP spins while it waits) and one
  thread per core (``--threads`` = the CPU count): the behaviour before threads were configured;
* ``N threads``: ``--threads N`` with passive waiting (``--extra``).

The table gives the wall times and the slowdown (contended / quiet); the goal is <= 2x for ``robustcheck``
with one 2-thread competitor on 2 cores. The load average is printed at each phase: a machine that is busy
already makes every number larger (and the default pick 1 thread). Scores must be the same in every cell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from robustcheck.threads import available_cpus, default_threads

# --budget 0: no run cut short by its time budget, so every cell computes the same score
AUDIT = [
    "audit",
    "--probe",
    "pgd-linf:steps=20",
    "--samples",
    "100",
    "--defense",
    "none",
    "--budget",
    "0",
    "--quiet",
]
COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""
# torch (and its OpenMP runtime) loaded before robustcheck.cli can ask for passive waiting
OLD_DEFAULT = "import sys, torch; from robustcheck.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(key, None)
    return env


def audit(variant: str, out: Path) -> tuple[float, float | None]:
    """Run the audit as ``variant``; return (wall seconds, score)."""
    args = [*AUDIT, "--out", str(out)]
    if variant == "torch default":
        command = [sys.executable, "-c", OLD_DEFAULT, *args, "--threads", str(os.cpu_count() or 1)]
    else:
        command = [sys.executable, "-m", "robustcheck.cli.main", *args]
        if variant != "robustcheck":
            command += ["--threads", variant.split()[0]]
    start = time.perf_counter()
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    results = out / "results.json"
    if proc.returncode not in (0, 1, 3) or not results.exists():  # timed all the same; the score is unknown
        last = proc.stderr.strip().splitlines()[-1:] or [""]
        print(f"  ({variant}: exit {proc.returncode}: {last[0]})", flush=True)
        return seconds, None
    return seconds, json.loads(results.read_text())["runs"][0]["score"]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--extra", nargs="*", type=int, default=[], help="also run with --threads N for these N"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds the competitor runs before the first contended audit",
    )
    args = parser.parse_args()
    variants = ["robustcheck", "torch default", *(f"{n} threads" for n in args.extra)]
    print(f"CPUs available: {available_cpus()} (os.cpu_count {os.cpu_count()}); robustcheck's default now: "
          f"{default_threads()} thread(s); load average {load()}")  # fmt: skip
    times: dict[tuple[str, str], float] = {}
    scores: set[float | None] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            seconds, score = audit(variant, Path(tmp) / f"quiet-{variant}")
            times[variant, "quiet"] = seconds
            scores.add(score)
            print(f"  quiet      {variant:14s} {seconds:7.1f} s  score {score}  (load {load()})", flush=True)
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=_env())
        try:
            time.sleep(args.warmup)
            for variant in variants:
                seconds, score = audit(variant, Path(tmp) / f"contended-{variant}")
                times[variant, "contended"] = seconds
                scores.add(score)
                print(
                    f"  contended  {variant:14s} {seconds:7.1f} s  score {score}  (load {load()})", flush=True
                )
        finally:
            competitor.terminate()
            competitor.wait()
    print()
    print(f"{'variant':16s} {'quiet s':>8s} {'contended s':>12s} {'slowdown':>9s}")
    for variant in variants:
        quiet, contended = times[variant, "quiet"], times[variant, "contended"]
        print(f"{variant:16s} {quiet:8.1f} {contended:12.1f} {contended / quiet:8.1f}x")
    known = sorted(s for s in scores if s is not None)
    print(f"scores: {known} ({'the same' if len(known) == 1 else 'DIFFERENT'} in every cell that wrote one)")
    ratio = times["robustcheck", "contended"] / times["robustcheck", "quiet"]
    print(f"robustcheck slowdown beside one 2-thread competitor: {ratio:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
