"""``robustcheck verify``: run the z3-safety engine from the command line, one output line per property.

Two modes:

* ``--eps E --samples N`` (with ``--model NAME`` or ``--onnx FILE``): local robustness of ``N`` seeded, class-stratified samples
  of the model's data (or ``--data``) in the L-infinity ball of radius ``E``.
* ``--vnnlib FILE``: a VNN-LIB 1.0 property on ``--onnx FILE`` (or ``--model``); ``--results OUT`` writes a
  VNN-COMP result file (``sat`` with the assignment, ``unsat``, ``timeout`` or ``unknown``). The VNN-LIB
  property is judged with VNN-COMP's semantics (the real-valued network with the file's float weights) unless
  ``--semantics float32``; counterexamples are always re-run on the float32 model.

* ``--instances CSV``: a whole VNN-COMP-style benchmark (``onnx,vnnlib,timeout`` rows; see
  :mod:`robustcheck.verifiers.vnncomp`), each instance within its CSV timeout (or ``--timeout``), one result file
  per instance under ``--results-dir``, a summary table per network (decided, correct vs the reference, wrong,
  median time); exit 1 if any verdict contradicts a reference answer.

The verifier (torch, Z3) is imported when the command runs, not with this module, which the CLI's
parser imports for its arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from robustcheck.errors import EXIT_INCONCLUSIVE, EXIT_OK, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``verify`` subcommand's options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="registry name, import path or model file")
    source.add_argument("--onnx", help="ONNX network file")
    source.add_argument("--instances", help="VNN-COMP instances CSV (benchmark mode)")
    parser.add_argument("--eps", type=float, help="L-infinity radius (with --samples)")
    parser.add_argument("--samples", type=int, help="number of samples to verify (with --eps; default 10)")
    parser.add_argument("--data", help="data source for --eps (default: the model's own)")
    parser.add_argument("--vnnlib", help="VNN-LIB 1.0 property file")
    parser.add_argument("--results", help="write a VNN-COMP result file here (with --vnnlib)")
    parser.add_argument("--timeout", type=float, help="seconds per property, or per instance with --instances "
                        "(default 60; with --instances the CSV's timeouts)")  # fmt: skip
    parser.add_argument("--results-dir", default="vnncomp-results", help="result files of --instances (default %(default)s)")
    parser.add_argument("--benchmark", action="append", help="with --instances: only this benchmark (repeatable)")
    parser.add_argument("--network", action="append", help="with --instances: only this ONNX stem (repeatable)")
    parser.add_argument("--per-network", type=int, help="with --instances: at most N instances per network, spread "
                        "evenly over its rows (a quick subset)")  # fmt: skip
    parser.add_argument(
        "--engine",
        choices=["z3", "milp"],
        default="z3",
        help="solver for what the bounds leave open: z3 (exact rationals, default) or milp (HiGHS, faster; its "
        "SAFE rests on floating-point tolerances and says so)",
    )
    parser.add_argument("--semantics", choices=["float32", "real"], help="SAFE for the float32 model (default with --eps) "
                        "or for the real-valued network (default with --vnnlib, as in VNN-COMP)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample draw and the PGD stage (default 0)")
    parser.add_argument("--replay-ops", type=int, default=None, metavar="N",
                        help="replay SAFE verdicts of the float64 bounds in exact rational arithmetic when that takes "
                        "at most N integer multiply-adds and a quarter of the time left (default 1e9; 0: never)")  # fmt: skip
    parser.add_argument("--refine-share", type=float, default=None, metavar="S",
                        help="share of the time left that tightening intermediate bounds by branch and bound may take "
                        "when the bounds and a first branch and bound pass leave a disjunct open (default 0.5; 0: "
                        "never)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Execute ``robustcheck verify``; exit 0 when every property is decided, 3 when some stay unknown (with
    ``--instances``: 1 when a verdict contradicts a reference)."""
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    if args.replay_ops is not None and args.replay_ops < 0:
        raise UsageError(f"--replay-ops must be 0 or more, got {args.replay_ops}")
    if args.refine_share is not None and not 0 <= args.refine_share <= 1:
        raise UsageError(f"--refine-share must be between 0 and 1, got {args.refine_share}")
    if getattr(args, "instances", None):
        if args.vnnlib or args.eps is not None or args.samples is not None:
            raise UsageError("--instances runs the CSV's properties: do not give --vnnlib, --eps or --samples")
        return _run_instances(args)
    if args.timeout is None:
        args.timeout = 60.0
    if args.vnnlib:
        if args.eps is not None or args.samples is not None:
            raise UsageError("give either --vnnlib FILE or --eps E --samples N, not both")
        return _run_vnnlib(args)
    if args.results:
        raise UsageError("--results needs --vnnlib")
    if args.eps is None:
        raise UsageError("give --eps E (with --samples N) or --vnnlib FILE")
    return _run_samples(args)


def _engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``replay_ops`` and ``refine_share`` where given (else the engine's defaults)."""
    given = {"replay_ops": args.replay_ops, "refine_share": args.refine_share}
    return {key: value for key, value in given.items() if value is not None}


def _options(args: argparse.Namespace, default_semantics: str) -> Any:
    from robustcheck.verifiers.engine import Options

    return Options(
        engine=args.engine,
        timeout=args.timeout,
        seed=args.seed,
        semantics=args.semantics or default_semantics,
        **_engine_overrides(args),
    )


def _run_instances(args: argparse.Namespace) -> int:
    import json

    from robustcheck.errors import EXIT_BELOW_THRESHOLD
    from robustcheck.verifiers import vnncomp

    instances = vnncomp.read_instances(args.instances)
    chosen = vnncomp.select(instances, args.benchmark, args.network, args.per_network)
    if not chosen:
        raise UsageError(f"no instance of {args.instances} matches the --benchmark / --network selection")
    results_dir = Path(args.results_dir)
    options = _options(args, "real")

    def report(r: Any) -> None:
        mark = (" WRONG" if r.wrong else "") + (" (replayed exactly)" if r.replayed else "")
        print(f"{r.instance.benchmark}/{r.instance.onnx.name} {r.instance.vnnlib.name}: {r.verdict} "
              f"({r.seconds:.1f}s of {args.timeout or r.instance.timeout:g}; reference {r.instance.reference}){mark}",
              flush=True)  # fmt: skip

    results = vnncomp.run_instances(chosen, options, results_dir, args.timeout, report)
    rows = [s.row() for s in vnncomp.summarize(results, args.timeout)]
    print(vnncomp.format_table(rows))
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "summary.json").write_text(json.dumps({"summary": rows, "instances": [
        {"benchmark": r.instance.benchmark, "onnx": str(r.instance.onnx), "vnnlib": str(r.instance.vnnlib),
         "verdict": r.verdict, "seconds": round(r.seconds, 3), "reference": r.instance.reference,
         "wrong": r.wrong, "replayed": r.replayed, "message": r.message} for r in results]}, indent=1))  # fmt: skip
    print(f"results: {results_dir}")
    wrong = sum(r.wrong for r in results)
    if wrong:
        print(f"{wrong} verdict(s) contradict the reference")
        return EXIT_BELOW_THRESHOLD
    return EXIT_OK if all(r.decided for r in results) else EXIT_INCONCLUSIVE


def _run_vnnlib(args: argparse.Namespace) -> int:
    import time

    from robustcheck.verifiers.engine import Engine, FloatModel, verify_properties
    from robustcheck.verifiers.vnnlib import read_vnnlib, write_result

    began = time.monotonic()  # --timeout bounds the whole run: loading and parsing count

    if args.onnx:
        from robustcheck.verifiers.extraction import from_onnx

        net, module, full_shape = from_onnx(args.onnx)
        model = FloatModel.from_module(module.eval(), full_shape)
    else:
        from robustcheck.models.loading import load_model
        from robustcheck.verifiers.extraction import from_classifier

        classifier = load_model(args.model)
        net, model = from_classifier(classifier), FloatModel.from_classifier(classifier)
    props = read_vnnlib(args.vnnlib, net.num_inputs, net.num_outputs)
    verifier = Engine(net, model, _options(args, "real"))
    left = args.timeout - (time.monotonic() - began)
    verdict, found, outcomes = (verify_properties(verifier, props, left) if left > 0 else ("timeout", None, []))
    for prop, outcome in zip(props, outcomes, strict=False):
        print(_line(prop.name, outcome))
    print(f"result: {verdict}")
    if args.results:
        x = found.counterexample if found is not None else None
        y = found.output if found is not None else None
        path = write_result(args.results, verdict, x, y)
        print(f"results: {path}")
    return EXIT_OK if verdict in ("sat", "unsat") else EXIT_INCONCLUSIVE


def _run_samples(args: argparse.Namespace) -> int:
    from robustcheck.data.loading import load_data
    from robustcheck.models.classifier import audited_model
    from robustcheck.models.loading import load_model
    from robustcheck.verifiers.z3_safety import Z3Safety

    model = load_model(args.model or args.onnx)
    source = args.data or model.default_data
    if source is None:
        raise UsageError(f"model {model.name!r} names no default data: give --data")
    samples = 10 if args.samples is None else args.samples
    data = load_data(source).sample(samples, args.seed)  # seeded and class-stratified, like an audit
    model = audited_model(model, data)  # what the model does not declare (input shape, labels), the data supplies
    probe = Z3Safety(
        eps=args.eps, timeout=args.timeout, engine=args.engine, semantics=args.semantics or "float32",
        **_engine_overrides(args),
    )
    result = probe(model, data, seed=args.seed)
    for _, row in result.records.iterrows():
        head = f"sample {int(row['index'])} (label {model.label(int(row['label']))})"
        if row["status"] == "misclassified":
            print(f"{head}: skipped (misclassified as {model.label(int(row['prediction']))})")
            continue
        extra = (
            f" -> {model.label(int(row['cex_prediction']))}"
            if row["status"] == "unsafe" and _present(row.get("cex_prediction"))
            else ""
        )
        print(f"{head}: {row['status']}{extra} stage={row['stage']} {row['seconds']:.2f}s unstable={row['unstable_relus']} "
              f"{row.get('message', '')}".rstrip())  # fmt: skip
    m = result.metrics
    print(f"verified {m['verified']:.3f}, falsified {m['falsified']:.3f}, unknown {m['unknown']:.3f} of correctly "
          f"classified samples at eps {args.eps:g} (clean accuracy {m['clean_accuracy']:.3f}, mean {m['mean_seconds']:.2f} s)")  # fmt: skip
    return EXIT_INCONCLUSIVE if m["unknown"] > 0 or m["errors"] else EXIT_OK


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _line(name: str, outcome: Any) -> str:
    return (f"{Path(name).name}: {outcome.status} stage={outcome.stage} {outcome.seconds:.2f}s "
            f"unstable={outcome.unstable} {outcome.message}").rstrip()  # fmt: skip
