"""``robustcheck verify``: run the z3-safety engine from the command line, one output line per property.

Two modes:

* ``--eps E --samples N`` (with ``--model NAME`` or ``--onnx FILE``): local robustness of ``N`` seeded, class-stratified samples
  of the model's data (or ``--data``) in the L-infinity ball of radius ``E``.
* ``--vnnlib FILE``: a VNN-LIB 1.0 property on ``--onnx FILE`` (or ``--model``); ``--results OUT`` writes a
  VNN-COMP result file (``sat`` with the assignment, ``unsat``, ``timeout`` or ``unknown``). The VNN-LIB
  property is judged with VNN-COMP's semantics (the real-valued network with the file's float weights) unless
  ``--semantics float32``; counterexamples are always re-run on the float32 model.

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
    parser.add_argument("--eps", type=float, help="L-infinity radius (with --samples)")
    parser.add_argument("--samples", type=int, help="number of samples to verify (with --eps; default 10)")
    parser.add_argument("--data", help="data source for --eps (default: the model's own)")
    parser.add_argument("--vnnlib", help="VNN-LIB 1.0 property file")
    parser.add_argument("--results", help="write a VNN-COMP result file here (with --vnnlib)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per property (default 60)")
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


def run(args: argparse.Namespace) -> int:
    """Execute ``robustcheck verify``; exit 0 when every property is decided, 3 when some stay unknown."""
    if args.timeout is None or not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    if args.vnnlib:
        if args.eps is not None or args.samples is not None:
            raise UsageError("give either --vnnlib FILE or --eps E --samples N, not both")
        return _run_vnnlib(args)
    if args.results:
        raise UsageError("--results needs --vnnlib")
    if args.eps is None:
        raise UsageError("give --eps E (with --samples N) or --vnnlib FILE")
    return _run_samples(args)


def _options(args: argparse.Namespace, default_semantics: str) -> Any:
    from robustcheck.verifiers.engine import Options

    return Options(
        engine=args.engine,
        timeout=args.timeout,
        seed=args.seed,
        semantics=args.semantics or default_semantics,
    )


def _run_vnnlib(args: argparse.Namespace) -> int:
    from robustcheck.verifiers.engine import Engine, FloatModel, verify_properties
    from robustcheck.verifiers.vnnlib import read_vnnlib, write_result

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
    verdict, found, outcomes = verify_properties(verifier, props, args.timeout)
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
    from robustcheck.models.loading import load_model
    from robustcheck.verifiers.z3_safety import Z3Safety

    model = load_model(args.model or args.onnx)
    source = args.data or model.default_data
    if source is None:
        raise UsageError(f"model {model.name!r} names no default data: give --data")
    samples = 10 if args.samples is None else args.samples
    data = load_data(source).sample(samples, args.seed)  # seeded and class-stratified, like an audit
    probe = Z3Safety(
        eps=args.eps, timeout=args.timeout, engine=args.engine, semantics=args.semantics or "float32"
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
