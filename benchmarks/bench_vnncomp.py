"""VNN-COMP 2021 dev set (eran, verivital, oval21): our verdicts beside the reference tools', in one run.

Per network: instances run, decided, correct vs the reference verdict, wrong (a verdict contradicting the
reference: must be 0), decided where the reference is unknown, our median wall time per instance and the worst
overrun of the timeout, next to the counts alpha-beta-CROWN and nnenum decided on the same instances (from
``instances.csv``; their times were measured on the competition's machines, alpha-beta-CROWN on a GPU).

Usage::

    python benchmarks/bench_vnncomp.py [--per-network 4] [--timeout 60] [--benchmark eran] [--network NAME]
                                       [--decided-only]

Without ``--timeout`` every instance gets the competition's timeout (300-720 s: the whole set takes hours).
``--per-network N`` picks N instances per network spread over its rows, for quick runs. Exit status 1 if any
verdict is wrong. Timings depend on the machine's load: state it with the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from robustcheck.threads import prefer_passive_waiting

prefer_passive_waiting()  # before torch loads: idle OpenMP threads must sleep on a shared machine

from robustcheck.verifiers import vnncomp  # noqa: E402
from robustcheck.verifiers.engine import Options  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp2021" / "instances.csv"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default=str(DATA), help="instances CSV (default: the shared dev set)")
    parser.add_argument("--per-network", type=int, help="at most N instances per network (quick subset)")
    parser.add_argument("--timeout", type=float, help="seconds per instance (default: the CSV's)")
    parser.add_argument("--benchmark", action="append", help="only this benchmark (repeatable)")
    parser.add_argument("--network", action="append", help="only this network, by ONNX stem (repeatable)")
    parser.add_argument("--decided-only", action="store_true",
                        help="only instances with a reference verdict (holds / violated)")  # fmt: skip
    parser.add_argument("--engine", choices=["z3", "milp"], default="z3", help="exact solver on the leaves")
    parser.add_argument("--results-dir", help="write VNN-COMP result files here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the bounds (default: the "
                        "machine's share; 1 on a busy machine)")  # fmt: skip
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not Path(args.instances).exists():
        print(f"no instances file at {args.instances}: the dev set is not on this machine")
        return 0
    instances = vnncomp.read_instances(args.instances)
    if args.decided_only:
        instances = [i for i in instances if i.reference in ("holds", "violated")]
    chosen = vnncomp.select(instances, args.benchmark, args.network, args.per_network)
    options = Options(engine=args.engine, semantics="real", threads=args.threads)
    began = time.monotonic()

    def report(r: vnncomp.InstanceResult) -> None:
        flag = ("  WRONG" if r.wrong else "") + ("  (replayed exactly)" if r.replayed else "")
        print(f"{r.instance.network:26s} {r.instance.vnnlib.stem[:48]:48s} {r.verdict:8s} {r.seconds:7.1f}s "
              f"ref={r.instance.reference}{flag}", flush=True)  # fmt: skip

    results = vnncomp.run_instances(chosen, options, Path(args.results_dir) if args.results_dir else None,
                                    args.timeout, report)  # fmt: skip
    rows = [s.row() for s in vnncomp.summarize(results, args.timeout)]
    print()
    print(vnncomp.format_table(rows))
    wrong = sum(r.wrong for r in results)
    print(f"\n{len(results)} instances in {time.monotonic() - began:.0f} s; wrong verdicts: {wrong}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
