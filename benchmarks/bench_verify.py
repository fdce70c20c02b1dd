"""Benchmark of the z3-safety engine on digits-mlp (64-32-32-10), all numbers measured in the same run.

1. Per eps: verified share and mean seconds per property of
   * ours (PGD, then interval + CROWN bounds, then Z3 on the residual: stable ReLUs fixed, unstable split),
   * ours without branch and bound (one Z3 query per class, every unstable ReLU a case split),
   * ours with the HiGHS MILP backend instead of Z3,
   * a naive Z3 encoding (every ReLU an ``If``, no bounds, one query per competing class), capped by
     ``--naive-timeout`` seconds per property.
2. Z3 vs MILP time on the same residual queries (the disjuncts the bounds leave open), with verdict agreement.

Usage: ``python benchmarks/bench_verify.py [--samples 4] [--eps 0.01 0.03 0.05] [--timeout 10] [--naive-timeout 5]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from robustcheck.data import digits
from robustcheck.verifiers import encoding
from robustcheck.verifiers.bounds import crown_bounds, output_lower
from robustcheck.verifiers.engine import FloatModel, Options, Verifier
from robustcheck.verifiers.network import Network, from_classifier, spec_error
from robustcheck.verifiers.vnnlib import Property, robustness_property
from robustcheck.zoo import digits_mlp


@dataclass
class Row:
    method: str
    eps: float
    verified: int
    falsified: int
    unknown: int
    seconds: list[float]


def naive_verify(cache: encoding.Z3Network, prop: Property, timeout: float) -> str:
    """Every ReLU an If, no bounds: one query per competing class until the property's time is spent."""
    deadline = time.monotonic() + timeout
    verdict = "safe"
    for spec, rhs in prop.disjuncts:
        left = deadline - time.monotonic()
        if left <= 0:
            return "unknown"
        result = encoding.naive_z3_query(cache, prop.lo, prop.hi, spec, rhs, left)
        if result.status == "sat":
            return "unsafe"
        if result.status == "unknown":
            verdict = "unknown"
    return verdict


def residual_queries(net: Network, prop: Property) -> list[tuple[np.ndarray, np.ndarray, object]]:
    """The disjuncts CROWN leaves open, with the float32 margin the engine would add."""
    bounds = crown_bounds(net, prop.lo, prop.hi)
    magnitudes = bounds.magnitudes(prop.lo, prop.hi)
    out = []
    for spec, rhs in prop.disjuncts:
        tol = spec_error(net, spec, bounds.lower, bounds.upper, magnitudes)
        if not np.any(output_lower(net, spec, bounds, prop.lo, prop.hi) > rhs + tol):
            out.append((spec, rhs + tol, bounds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="correctly classified test digits per eps")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per property for our engine")
    parser.add_argument("--naive-timeout", type=float, default=5.0, help="seconds per property for naive Z3")
    parser.add_argument(
        "--max-residual", type=int, default=6, help="residual queries timed with both solvers"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, data = digits_mlp(), digits()
    net = from_classifier(model)
    float_model = FloatModel.from_classifier(model)
    predictions = model.predict(data.x).argmax(1)
    chosen = [i for i in range(len(data)) if int(predictions[i]) == int(data.y[i])][: args.samples]
    ours = {
        engine: Verifier(net, float_model, Options(engine=engine, timeout=args.timeout))
        for engine in ("z3", "milp")
    }
    ours["flat"] = Verifier(net, float_model, Options(engine="z3", timeout=args.timeout, branching=False))
    cache = ours["z3"].z3_network()
    rows: list[Row] = []
    residuals: list[tuple[Property, tuple[np.ndarray, np.ndarray, object]]] = []
    for eps in args.eps:
        props = []
        for i in chosen:
            x = data.x[i].reshape(-1).double().numpy()
            props.append(
                (x, robustness_property(np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1), int(data.y[i]), 10))
            )
        for method in ("ours-z3", "ours-flat", "ours-milp", "naive-z3"):
            row = Row(method, eps, 0, 0, 0, [])
            for x, prop in props:
                start = time.perf_counter()
                if method == "naive-z3":
                    status = naive_verify(cache, prop, args.naive_timeout)
                else:
                    status = ours[method.split("-")[1]].verify(prop, start=x).status
                row.seconds.append(time.perf_counter() - start)
                row.verified += status == "safe"
                row.falsified += status == "unsafe"
                row.unknown += status not in ("safe", "unsafe")
            rows.append(row)
        for _, prop in props:
            residuals += [(prop, q) for q in residual_queries(net, prop)]

    print(
        f"digits-mlp {net.hidden_sizes}, {len(chosen)} samples per eps, timeout ours {args.timeout:g} s, naive {args.naive_timeout:g} s"
    )
    print("(2 shared CPU cores, other jobs running: compare ratios within this run only)\n")
    print(f"{'eps':>6} {'method':>10} {'verified':>9} {'falsified':>9} {'unknown':>8} {'mean s':>8}")
    for row in rows:
        n = row.verified + row.falsified + row.unknown
        print(
            f"{row.eps:>6g} {row.method:>10} {row.verified / n:>9.2f} {row.falsified / n:>9.2f} {row.unknown / n:>8.2f} {np.mean(row.seconds):>8.3f}"
        )
    for eps in args.eps:
        by: dict[str, float] = {r.method: float(np.mean(r.seconds)) for r in rows if r.eps == eps}
        print(f"eps {eps:g}: naive-z3 / ours-z3 mean time = {by['naive-z3'] / by['ours-z3']:.1f}x, "
              f"ours-z3 / ours-milp = {by['ours-z3'] / by['ours-milp']:.1f}x")  # fmt: skip

    print(f"\nresidual queries (open after CROWN): {len(residuals)}; timing the first {args.max_residual}")
    print("z3 = branch and bound with Z3 leaves; flat = one Z3 query with every unstable ReLU a case split")
    print(
        f"{'#':>3} {'unstable':>8} {'z3':>8} {'z3 s':>8} {'nodes':>6} {'leaves':>6} {'flat':>8} {'flat s':>8} "
        f"{'milp':>6} {'milp s':>8}"
    )
    z3_total = milp_total = 0.0
    agree = both = 0
    for k, (prop, (spec, rhs, bounds)) in enumerate(residuals[: args.max_residual]):
        z3_result = encoding.z3_branch_and_bound(cache, prop.lo, prop.hi, bounds, spec, rhs, args.timeout)
        flat = encoding.z3_query(cache, prop.lo, prop.hi, bounds, spec, rhs, args.timeout)
        milp_result = encoding.milp_query(net, prop.lo, prop.hi, bounds, spec, rhs, args.timeout)
        print(
            f"{k:>3} {bounds.num_unstable():>8} {z3_result.status:>8} {z3_result.seconds:>8.3f} {z3_result.nodes:>6} "
            f"{z3_result.z3_calls:>6} {flat.status:>8} "
            f"{flat.seconds:>8.3f} {milp_result.status:>6} {milp_result.seconds:>8.3f}"
        )
        if z3_result.status != "unknown" and milp_result.status != "unknown":
            both += 1
            agree += z3_result.status == milp_result.status
            z3_total += z3_result.seconds
            milp_total += milp_result.seconds
    if both:
        print(
            f"decided by both: {both}, verdicts agree: {agree}/{both}, z3 / milp time = {z3_total / max(milp_total, 1e-9):.1f}x"
        )
    else:
        print("no residual query decided by both solvers within the timeout")


if __name__ == "__main__":
    main()
