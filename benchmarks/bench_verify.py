"""Benchmark of the z3-safety engine on digits-mlp (64-32-32-10), all numbers measured in the same run.

1. Per eps: verified share and mean seconds per property of
   * ours (PGD, then interval + CROWN bounds, then Z3 on the residual: stable ReLUs fixed, unstable split),
   * ours without branch and bound (one Z3 query per class, every unstable ReLU a case split),
   * ours with the HiGHS MILP backend instead of Z3,
   * a naive Z3 encoding (every ReLU an ``If``, no bounds, one query per competing class), capped by
     ``--naive-timeout`` seconds per property.
2. Z3 vs MILP time on the same residual queries (the disjuncts the bounds leave open), with verdict agreement.
3. Z3 vs HiGHS on the same branch-and-bound leaves: the engine's branch and bound (alpha-beta-CROWN bounds)
   runs with ``--leaf-unstable`` so that sub-domains with that few open ReLUs go to the exact solver; every leaf
   it sends is recorded and then solved by both, with verdict agreement.

Usage: ``python benchmarks/bench_verify.py [--samples 4] [--eps 0.01 0.03 0.05] [--timeout 10] [--naive-timeout 5]
[--leaf-unstable 8] [--max-leaves 200]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from robustcheck.data.builtin import digits
from robustcheck.verifiers import encoding
from robustcheck.verifiers.bounds import LayerBounds, crown_bounds
from robustcheck.verifiers.engine import Engine, FloatModel, Options
from robustcheck.verifiers.extraction import from_classifier
from robustcheck.verifiers.network import Network
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


def residual_queries(verifier: Engine, prop: Property) -> list[tuple[np.ndarray, np.ndarray, LayerBounds]]:
    """The disjuncts CROWN leaves open, as ``(spec, rhs + proof margin, bounds)``: the engine's own queries."""
    bounds = crown_bounds(verifier.net, prop.lo, prop.hi)
    return [(d.spec, d.rhs + d.tol, bounds) for d in verifier.open_disjuncts(prop, bounds)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="correctly classified test digits per eps")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per property for our engine")
    parser.add_argument("--naive-timeout", type=float, default=5.0, help="seconds per property for naive Z3")
    parser.add_argument(
        "--max-residual", type=int, default=6, help="residual queries timed with both solvers"
    )
    parser.add_argument("--leaf-unstable", type=int, default=8, help="open ReLUs at which a sub-domain is a leaf")
    parser.add_argument("--max-leaves", type=int, default=200, help="branch-and-bound leaves timed with both solvers")
    return parser.parse_args()


def run_methods(eps: float, props: list[tuple[np.ndarray, Property]], ours: dict[str, Engine],
                naive_timeout: float) -> list[Row]:  # fmt: skip
    """One row per method: verdict counts and seconds per property on the same properties."""
    cache = ours["z3"].z3_network()
    rows = []
    for method in ("ours-z3", "ours-flat", "ours-milp", "naive-z3"):
        row = Row(method, eps, 0, 0, 0, [])
        for x, prop in props:
            start = time.perf_counter()
            if method == "naive-z3":
                status = naive_verify(cache, prop, naive_timeout)
            else:
                status = ours[method.split("-")[1]].verify(prop, start=x).status
            row.seconds.append(time.perf_counter() - start)
            row.verified += status == "safe"
            row.falsified += status == "unsafe"
            row.unknown += status not in ("safe", "unsafe")
        rows.append(row)
    return rows


def print_rows(rows: list[Row], epsilons: list[float]) -> None:
    print(f"{'eps':>6} {'method':>10} {'verified':>9} {'falsified':>9} {'unknown':>8} {'mean s':>8}")
    for row in rows:
        n = row.verified + row.falsified + row.unknown
        print(f"{row.eps:>6g} {row.method:>10} {row.verified / n:>9.2f} {row.falsified / n:>9.2f} "
              f"{row.unknown / n:>8.2f} {np.mean(row.seconds):>8.3f}")  # fmt: skip
    print("(ours-milp: SAFE rests on HiGHS's floating-point infeasibility, not an exact proof)")
    for eps in epsilons:
        by: dict[str, float] = {r.method: float(np.mean(r.seconds)) for r in rows if r.eps == eps}
        print(f"eps {eps:g}: naive-z3 / ours-z3 mean time = {by['naive-z3'] / by['ours-z3']:.1f}x, "
              f"ours-z3 / ours-milp = {by['ours-z3'] / by['ours-milp']:.1f}x")  # fmt: skip


def time_residuals(verifier: Engine, residuals: list[tuple[Property, tuple[np.ndarray, np.ndarray, LayerBounds]]],
                   timeout: float) -> None:  # fmt: skip
    """Z3 (branch and bound, and flat) vs MILP on the same residual queries, with verdict agreement."""
    net, cache = verifier.net, verifier.z3_network()
    print("z3 = branch and bound with Z3 leaves; flat = one Z3 query with every unstable ReLU a case split")
    print(f"{'#':>3} {'unstable':>8} {'z3':>8} {'z3 s':>8} {'nodes':>6} {'leaves':>6} {'flat':>8} {'flat s':>8} "
          f"{'milp':>6} {'milp s':>8}")  # fmt: skip
    z3_total = milp_total = 0.0
    agree = both = 0
    for k, (prop, (spec, rhs, bounds)) in enumerate(residuals):
        z3_result = encoding.z3_branch_and_bound(cache, prop.lo, prop.hi, bounds, spec, rhs, timeout)
        flat = encoding.z3_query(cache, prop.lo, prop.hi, bounds, spec, rhs, timeout)
        milp_result = encoding.milp_query(net, prop.lo, prop.hi, bounds, spec, rhs, timeout)
        print(f"{k:>3} {bounds.num_unstable():>8} {z3_result.status:>8} {z3_result.seconds:>8.3f} "
              f"{z3_result.nodes:>6} {z3_result.z3_calls:>6} {flat.status:>8} {flat.seconds:>8.3f} "
              f"{milp_result.status:>6} {milp_result.seconds:>8.3f}")  # fmt: skip
        if z3_result.status != "unknown" and milp_result.status != "unknown":
            both += 1
            agree += z3_result.status == milp_result.status
            z3_total += z3_result.seconds
            milp_total += milp_result.seconds
    if both:
        print(f"decided by both: {both}, verdicts agree: {agree}/{both}, "
              f"z3 / milp time = {z3_total / max(milp_total, 1e-9):.1f}x")  # fmt: skip
    else:
        print("no residual query decided by both solvers within the timeout")


@dataclass
class Leaf:
    prop: Property
    bounds: LayerBounds
    spec: np.ndarray
    rhs: np.ndarray
    splits: dict[tuple[int, int], int]


def bab_leaves(net: Network, float_model: FloatModel, props: list[Property], leaf_unstable: int,
               timeout: float) -> list[Leaf]:  # fmt: skip
    """The leaves the engine's branch and bound sends to the exact solver on ``props`` (Z3 answers them)."""
    engine = Engine(net, float_model, Options(engine="z3", timeout=timeout, leaf_unstable=leaf_unstable))
    leaves: list[Leaf] = []
    solve = engine._leaf_query

    def recording(prop, bounds, spec, rhs, seconds, splits, proof):  # noqa: ANN001, ANN202
        leaves.append(Leaf(prop, bounds, spec, rhs, dict(splits or {})))
        return solve(prop, bounds, spec, rhs, seconds, splits, proof)

    engine._leaf_query = recording  # type: ignore[method-assign]
    for prop in props:
        engine.verify(prop)
    return leaves


def time_leaves(net: Network, cache: encoding.Z3Network, leaves: list[Leaf], timeout: float) -> None:
    """Z3 (exact rationals) vs HiGHS (MILP) on the same branch-and-bound leaves: decided, agreement, times."""
    seconds: dict[str, list[float]] = {"z3": [], "milp": []}
    decided = {"z3": 0, "milp": 0}
    agree = both = 0
    for leaf in leaves:
        lo, hi = leaf.prop.lo, leaf.prop.hi
        results = {
            "z3": encoding.z3_query(cache, lo, hi, leaf.bounds, leaf.spec, leaf.rhs, timeout, splits=leaf.splits),
            "milp": encoding.milp_query(net, lo, hi, leaf.bounds, leaf.spec, leaf.rhs, timeout),
        }
        for name, result in results.items():
            seconds[name].append(result.seconds)
            decided[name] += result.status != "unknown"
        if all(r.status != "unknown" for r in results.values()):
            both += 1
            agree += results["z3"].status == results["milp"].status
    unstable = [leaf.bounds.num_unstable() for leaf in leaves] or [0]
    print(f"leaves: {len(leaves)} (open ReLUs median {np.median(unstable):.0f}, max {max(unstable)}); decided by "
          f"both: {both}, verdicts agree: {agree}/{both}")  # fmt: skip
    for name, times in seconds.items():
        if times:
            print(f"  {name:<4} decided {decided[name]:>4}  median {np.median(times) * 1e3:9.1f} ms  "
                  f"total {sum(times):8.2f} s")  # fmt: skip
    if seconds["milp"] and sum(seconds["milp"]) > 0:
        print(f"  z3 / milp total time = {sum(seconds['z3']) / sum(seconds['milp']):.1f}x")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    model, data = digits_mlp(), digits()
    net = from_classifier(model)
    float_model = FloatModel.from_classifier(model)
    predictions = model.predict(data.x).argmax(1)
    chosen = [i for i in range(len(data)) if int(predictions[i]) == int(data.y[i])][: args.samples]
    ours = {
        "z3": Engine(net, float_model, Options(engine="z3", timeout=args.timeout)),
        "milp": Engine(net, float_model, Options(engine="milp", timeout=args.timeout)),
        "flat": Engine(net, float_model, Options(engine="z3", timeout=args.timeout, branching=False)),
    }
    rows: list[Row] = []
    residuals: list[tuple[Property, tuple[np.ndarray, np.ndarray, LayerBounds]]] = []
    for eps in args.eps:
        props = []
        for i in chosen:
            x = data.x[i].reshape(-1).double().numpy()
            box = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
            props.append((x, robustness_property(*box, int(data.y[i]), 10)))
        rows += run_methods(eps, props, ours, args.naive_timeout)
        residuals += [(prop, q) for _, prop in props for q in residual_queries(ours["z3"], prop)]

    print(f"digits-mlp {net.hidden_sizes}, {len(chosen)} samples per eps, timeout ours {args.timeout:g} s, "
          f"naive {args.naive_timeout:g} s")  # fmt: skip
    print("(2 shared CPU cores, other jobs running: compare ratios within this run only)\n")
    print_rows(rows, args.eps)
    print(f"\nresidual queries (open after CROWN): {len(residuals)}; timing the first {args.max_residual}")
    time_residuals(ours["z3"], residuals[: args.max_residual], args.timeout)
    open_props = list({id(prop): prop for prop, _ in residuals}.values())  # each property once, in order
    leaves = bab_leaves(net, float_model, open_props, args.leaf_unstable, args.timeout)
    print(f"\nbranch-and-bound leaves (sub-domains with <= {args.leaf_unstable} open ReLUs) of the "
          f"{len(open_props)} properties with residual queries; timing the first {args.max_leaves}")  # fmt: skip
    time_leaves(net, ours["z3"].z3_network(), leaves[: args.max_leaves], args.timeout)


if __name__ == "__main__":
    main()
