"""The ``robustcheck`` command line: ``list``, ``audit``, ``leaderboard``, ``zoo train``, ``verify``.

Exit codes: 0 ok, 1 a score under ``--fail-under``, 2 usage or input error (or a probe that
raised), 3 inconclusive (a run timed out), 4 internal error (``--debug`` shows the traceback),
130 interrupted (finished runs stay saved: ``--resume``).

Each subcommand imports its machinery (torch, the runner, the verifier) inside its function, so that
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustcheck import __version__
from robustcheck.cli import verify as verify_command
from robustcheck.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUDGET_S,
    DEFAULT_MODEL,
    DEFAULT_OUT,
    DEFAULT_SAMPLES,
)
from robustcheck.errors import (
    EXIT_BELOW_THRESHOLD,
    EXIT_INCONCLUSIVE,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    RobustCheckError,
    UsageError,
)

EXIT_INTERRUPTED = 130
EXIT_CODES_HELP = """\
exit codes:
  0    ok: every run finished, no score under its threshold
  1    a score under its threshold (--fail-under, or fail_under of a probe in the config)
  2    usage or input error (unknown name, bad option, missing or unreadable file, bad --out,
       a model factory or probe that raised); one line names the cause
  3    inconclusive: a run timed out (--budget)
  4    internal error in robustcheck (rerun with --debug for the traceback)
  130  interrupted (finished runs are saved: rerun with --resume)
"""
AUDIT_EPILOG = f"""\
examples:
  robustcheck audit                                   # digits-cnn, default probes, bare + default defenses
  robustcheck audit --model digits-mlp --probe pgd-linf:steps=40,epsilons=[0,0.05,0.1] --defense none
  robustcheck audit --model my_pkg.models:build --data cifar.npz --probe fgsm --samples 500 --seed 1
  robustcheck audit --model net.onnx --data images/ --probe deepfool --fail-under 0.4
  robustcheck audit --config audit.toml --resume

The last line on stderr is the verdict (also under --quiet), with the report's path.

{EXIT_CODES_HELP}"""
KIND_TITLES = {"model": "models", "data": "data sources", "probe": "probes", "defense": "defenses", "verifier": "verifiers"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other usage error
        self.exit(EXIT_USAGE, f"robustcheck: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robustcheck", description="Robustness and adversarial testing for PyTorch image models.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"robustcheck {__version__}")
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    listing = sub.add_parser("list", help="list registered models, data, probes, defenses and verifiers")
    listing.add_argument("kind", nargs="?", choices=["model", "data", "probe", "defense", "verifier"], help="only this kind")

    audit = sub.add_parser(
        "audit", help="audit models and write results.json, records.csv and report.html",
        description="Audit models and write results.json, records.csv and report.html into the output folder.",
        epilog=AUDIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    audit.add_argument("--model", action="append", help=f"registry name, import path 'pkg.mod:factory' or file (repeatable; default {DEFAULT_MODEL})")
    audit.add_argument("--data", help="data source (default: each model's own)")
    audit.add_argument("--probe", action="append", help="probe as NAME or NAME:key=value,... (repeatable; default: the default probe set)")
    audit.add_argument("--defense", action="append", help="defense as NAME[:key=value,...] (repeatable; 'none' for bare models only; default: bare plus the default defenses)")
    audit.add_argument(
        "--samples", type=_samples_arg, help=f"samples per run, a seeded class-stratified draw, or 'all' (default {DEFAULT_SAMPLES})"
    )
    audit.add_argument(
        "--input-shape", type=_input_shape_arg, metavar="C,H,W",
        help="image shape the models take, e.g. 3,32,32 (default: what each model declares, else the data's shape)",
    )  # fmt: skip
    audit.add_argument("--trust-pickle", action="store_true", help="allow model files holding a pickled whole module (torch.save(model)): loading one runs code from the file")
    audit.add_argument("--seed", type=int, help="seed of every run (default 0)")
    audit.add_argument("--out", help=f"output folder (default ./{DEFAULT_OUT})")
    audit.add_argument("--config", help="audit configuration file (TOML); command-line options override it")
    audit.add_argument("--fail-under", type=float, help="exit 1 if any score is below this threshold")
    audit.add_argument("--budget", type=float, help=f"time budget per run in seconds (default: each probe's own, {DEFAULT_BUDGET_S:g} for most, see 'robustcheck list'; 0: none)")
    audit.add_argument("--batch-size", type=int, help=f"samples per batch (default {DEFAULT_BATCH_SIZE})")
    audit.add_argument("--results-db", help="results database the runs are appended to, for leaderboards (default OUT/results.db)")
    audit.add_argument("--executor", choices=["local", "ray"], help="where runs execute: in this process (default) or as Ray tasks (extra [ray])")
    audit.add_argument("--shards", type=int, help="split each run of a shardable probe into N sample shards (run in parallel by --executor ray)")
    audit.add_argument("--ray-task-cpus", type=float, help="CPUs per Ray task (default: what each probe declares, 1)")
    audit.add_argument("--ray-task-gpus", type=float, help="GPUs per Ray task (default: what each probe declares, 0)")
    audit.add_argument("--ray-address", help="join this Ray cluster ('auto', 'ray://head:10001'); default: start a local Ray instance")
    audit.add_argument("--resume", action="store_true", help="reuse runs already finished in the output folder")
    audit.add_argument("--threads", type=int, help="torch CPU threads (default: the CPUs available, at most 2; 1 on a busy machine)")
    audit.add_argument("--save-adversarials", action="store_true", help="write each attack run's adversarial examples (with labels and predictions) to OUT/adversarials/RUN_ID.npz")
    audit.add_argument("--device", help="where models run: auto (default: a GPU where there is one), cpu, cuda, cuda:N or mps")
    audit.add_argument("--quiet", action="store_true", help="no progress bars or summary table (the verdict line on stderr stays)")

    board = sub.add_parser("leaderboard", help="rank models and defended variants across audits")
    board.add_argument("sources", nargs="+", help="results databases, results.json files or audit folders")
    board.add_argument("--out", default="leaderboard.html", help="output file (default leaderboard.html)")
    board.add_argument("--markdown", action="store_true", help="write Markdown instead of HTML")
    board.add_argument("--all", action="store_true", help="average every run of a cell instead of taking the latest")
    board.add_argument("--cards", help="TOML file of model cards for the threat-model tables: [model] architecture, training, extra_data, reference, licence")

    verify = sub.add_parser("verify", help="prove or refute local robustness / VNN-LIB properties (z3-safety)")
    verify_command.add_arguments(verify)

    zoo = sub.add_parser("zoo", help="the built-in model zoo")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", parser_class=_Parser)
    train = zoo_sub.add_parser("train", help="retrain built-in models deterministically")
    train.add_argument("names", nargs="*", help="models to train (default: all)")
    train.add_argument("--out", help="folder for the weights (default: the installed package's)")
    for command in (listing, audit, board, verify, zoo, train):
        _add_debug(command, argparse.SUPPRESS)  # also after the subcommand; does not reset a top-level --debug
    return parser


def _add_debug(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")


def _samples_arg(text: str) -> int | str:
    """``--samples``: a positive integer or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def _input_shape_arg(text: str) -> tuple[int, int, int]:
    """``--input-shape C,H,W``: three positive integers."""
    parts = [p.strip() for p in text.split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive integers, e.g. 3,32,32), got {text!r}")
    return shape  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "audit"
    if args.command is None:  # bare `robustcheck` runs the default audit
        args = parser.parse_args(["audit", *(argv or [])])
    try:
        if command == "list":
            return cmd_list(args)
        if command == "leaderboard":
            return cmd_leaderboard(args)
        if command == "zoo":
            return cmd_zoo(args, parser)
        if command == "verify":
            return verify_command.run(args)
        return cmd_audit(args)
    except RobustCheckError as exc:
        return _report_error(exc, f"robustcheck: error: {_one_line(str(exc))}", EXIT_USAGE, args)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line and exit 4, not a traceback and exit 1
        cause = _user_code_failure(exc)
        if cause is not None:  # the user's code raised where robustcheck called it: an input error
            return _report_error(exc, f"robustcheck: error: {_one_line(cause)}", EXIT_USAGE, args)
        message = _one_line(f"{type(exc).__name__}: {exc}")
        hint = "" if getattr(args, "debug", False) else " (rerun with --debug for the traceback)"
        return _report_error(exc, f"robustcheck: internal error: {message}{hint}", EXIT_INTERNAL, args)


def _report_error(exc: BaseException, line: str, code: int, args: argparse.Namespace) -> int:
    """Print the error as one line on stderr (after its traceback under ``--debug``); return ``code``."""
    if getattr(args, "debug", False):
        traceback.print_exception(exc, file=sys.stderr)
    print(line, file=sys.stderr)
    return code


#: Where robustcheck calls the user's code while loading models: (module, function) -> what was called.
_USER_CODE_CALLS = {
    ("robustcheck.models.loading", "_call_factory"): ("name", "model factory {!r}"),
    ("robustcheck.models.loading", "_import_object"): ("path", "importing the module of model {!r}"),
    ("robustcheck.models.loading", "_import_file"): ("spec", "importing the file of model {!r}"),
}


def _user_code_failure(exc: BaseException) -> str | None:
    """``"model factory 'pkg.mod:build' raised ValueError: ..."`` when ``exc`` came out of the user's code
    that robustcheck called to load a model (a factory, or the import of its module); else ``None``."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        found = _USER_CODE_CALLS.get((frame.f_globals.get("__name__"), frame.f_code.co_name))
        if found is not None and tb.tb_next is not None:  # raised below that frame: in what it called
            variable, what = found
            return f"{what.format(str(frame.f_locals.get(variable, '?')))} raised {type(exc).__name__}: {exc}"
        tb = tb.tb_next
    return None


def _one_line(message: str) -> str:
    """Errors are shown as one line: torch and plugin messages often span several."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from robustcheck import registry

    console = Console()
    for kind in [args.kind] if args.kind else list(registry.GROUPS):
        table = Table(title=KIND_TITLES[kind], title_justify="left", show_edge=False, show_lines=kind in registry.PLUGIN_KINDS)
        for column in ("name", "source", "description"):
            table.add_column(column)
        for entry in registry.entries(kind):
            description = entry.summary
            for param in getattr(entry.obj, "parameters", {}).values():  # from each parameter's declaration
                description += f"\n  {param.name}: {param.describe()}"
            budget = getattr(entry.obj, "default_budget_s", None)
            if budget is not None:  # probes: what a run costs, and the time it gets unless --budget says otherwise
                cost = getattr(entry.obj, "cost", "")
                description += f"\n  default budget: {budget:g} s" + (f" ({cost})" if cost else "")
            table.add_row(escape(entry.name), escape(entry.source), escape(plain_text(description)))
        console.print(table)
    return EXIT_OK


_RST_ROLE = re.compile(r":[\w:-]+:`~?([^`<]*?)(?:\s*<[^`>]*>)?`")  # :func:`name`, :class:`~a.b.C`, :ref:`text <target>`
_RST_LITERAL = re.compile(r"``(.+?)``")
_RST_DEFAULT_ROLE = re.compile(r"(?<![`\w])`([^`]+)`(?![`\w])")


def plain_text(text: str) -> str:
    """Docstring text without reStructuredText markup: ``x`` -> x, :func:`a.b` -> a.b, :class:`~a.B` -> B."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1).strip()
        return target.rsplit(".", 1)[-1] if match.group(0).split("`", 1)[1].startswith("~") else target

    return _RST_DEFAULT_ROLE.sub(r"\1", _RST_LITERAL.sub(r"\1", _RST_ROLE.sub(role, text)))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from robustcheck.reports.leaderboard import build_leaderboard, load_cards, to_markdown, write_leaderboard
    from robustcheck.run.history import runs_frame

    cards = load_cards(args.cards) if args.cards else None
    table, probes = build_leaderboard(runs_frame(args.sources), all_runs=args.all, cards=cards)
    path = write_leaderboard(table, probes, args.out, markdown=args.markdown)
    if not args.markdown:
        print(to_markdown(table, probes), end="")
    print(f"leaderboard: {path}")
    return EXIT_OK


def cmd_zoo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import importlib

    from robustcheck.errors import UnknownPluginError, UsageError
    from robustcheck.zoo import TRAINERS

    if args.zoo_command != "train":
        parser.parse_args(["zoo", "--help"])
    for name in args.names or list(TRAINERS):
        if name not in TRAINERS:
            raise UnknownPluginError("zoo model", name, TRAINERS)
        trainer = TRAINERS[name]
        module, _, function = trainer.function.partition(":")
        train = getattr(importlib.import_module(module), function)
        path, quality = train(name, Path(args.out) if args.out else None)
        print(f"{name}: {trainer.metric} {quality:.4f}, weights written to {path}")
        if trainer.minimum is not None and quality < trainer.minimum:
            raise UsageError(f"{name} reached only {quality:.4f} {trainer.metric} (< {trainer.minimum})")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from robustcheck.run.plan import AuditPlan

    plan = AuditPlan.from_sources(_cli_options(args), args.config)
    check_output_paths(plan)
    return run_audit(plan, resume=args.resume, quiet=args.quiet)


def check_output_paths(plan: Any) -> None:
    """Fail before any run (exit 2, one line) when the output folder or results database cannot be written."""
    _check_writable(Path(plan.out), "output folder (--out)", folder=True)
    _check_writable(Path(plan.results_db_path), "results database (--results-db)", folder=False)


def _check_writable(path: Path, what: str, *, folder: bool) -> None:
    """Raise :class:`UsageError` unless ``path`` is (or can be created as) a writable folder or file."""
    shown = f"{what} {str(path)!r}"
    if os.path.lexists(path) and not path.exists():
        raise UsageError(f"{shown} is a broken symbolic link")
    if path.exists():
        if folder and not path.is_dir():
            raise UsageError(f"{shown} is an existing file, not a folder")
        if not folder and path.is_dir():
            raise UsageError(f"{shown} is a folder, not a file")
    ancestor = path if folder and path.is_dir() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:  # the nearest part of the path that exists
        if os.path.lexists(ancestor):
            raise UsageError(f"{shown}: {str(ancestor)!r} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{shown} lies under {str(ancestor)!r}, which is a file, not a folder")
    try:  # os.access is not enough: root, read-only mounts, ACLs
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise UsageError(f"{shown} cannot be written: no write access to {str(ancestor)!r} ({exc.strerror or exc})") from None


def _cli_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "models": args.model,
        "data": args.data,
        "probes": args.probe,
        "defenses": args.defense,
        "samples": args.samples,
        "input_shape": args.input_shape,
        "trust_pickle": args.trust_pickle or None,
        "seed": args.seed,
        "out": args.out,
        "fail_under": args.fail_under,
        "budget": args.budget,
        "batch_size": args.batch_size,
        "results_db": args.results_db,
        "executor": args.executor,
        "ray_address": args.ray_address,
        "ray_task_cpus": args.ray_task_cpus,
        "ray_task_gpus": args.ray_task_gpus,
        "shards": args.shards,
        "threads": args.threads,
        "device": args.device,
        "save_adversarials": args.save_adversarials or None,
    }
    return {k: v for k, v in options.items() if v is not None}


def run_audit(plan: Any, *, resume: bool = False, quiet: bool = False) -> int:
    """Execute ``plan``; every finished run is saved at once, outputs are written at the end."""
    from robustcheck.run.runner import Runner
    from robustcheck.threads import configure_threads

    configure_threads(plan.threads)  # once per audit, before any parallel work
    runner = Runner(plan.out, resume=resume, quiet=quiet, save_adversarials=plan.save_adversarials)
    try:  # Ctrl-C while models load or outputs are written is an interruption too, not a traceback
        executor = plan.make_executor()
        specs = plan.specs(runner)
        runner.check(specs)
        outcomes = runner.run(specs, executor)
        thresholds = [plan.threshold(o.spec.probe.name) for o in outcomes]
        runner.write_outputs(outcomes, plan.seed, [t if t > -math.inf else None for t in thresholds], plan.results_db_path)
    except KeyboardInterrupt:
        print(f"\nrobustcheck: interrupted; finished runs are saved in {plan.out}: rerun with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    from robustcheck.run.flags import audit_flags

    flagged = audit_flags(outcomes)
    if not quiet:
        _print_summary(outcomes, plan, flagged)
    for o in outcomes:
        if o.result.status == "error":
            print(f"robustcheck: error: {_one_line(f'{o.spec.label}: {o.result.message}')}", file=sys.stderr)
    code, line = verdict(outcomes, plan, flagged)
    print(line, file=sys.stderr)  # always, also under --quiet: what CI logs show
    return code


#: How many runs a verdict line names per category before "and N more".
VERDICT_NAMES = 3


def _run_name(o: Any) -> str:
    """``pgd-linf on digits-cnn+bit-depth``."""
    defense = f"+{o.spec.defense}" if o.spec.defense else ""
    return f"{o.spec.probe.name} on {o.spec.model}{defense}"


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:VERDICT_NAMES])
    return shown + (f", and {len(items) - VERDICT_NAMES} more" if len(items) > VERDICT_NAMES else "")


def _under_threshold(o: Any, plan: Any) -> bool:
    return o.result.score is not None and o.result.score < plan.threshold(o.spec.probe.name)


def verdict(outcomes: Sequence[Any], plan: Any, flagged: Sequence[Sequence[Any]]) -> tuple[int, str]:
    """The exit code and the one verdict line of an audit: runs that raised (2), scores under their
    threshold (1), runs that timed out (3), else ok (0); flagged runs named; the report's path last."""
    from robustcheck.reports.formatting import format_score

    n = len(outcomes)
    errors = [_run_name(o) for o in outcomes if o.result.status == "error"]
    under = [
        f"{_run_name(o)}: {format_score(o.result.score)} < {format_score(plan.threshold(o.spec.probe.name))}"
        for o in outcomes
        if _under_threshold(o, plan)
    ]
    timeouts = [_run_name(o) for o in outcomes if o.result.status == "timeout"]
    flags = [f"{_run_name(o)}: {', '.join(f.code for f in fl)}" for o, fl in zip(outcomes, flagged, strict=True) if fl]
    parts = []
    if errors:
        parts.append(f"{len(errors)} of {n} runs raised ({_names(errors)})")
    if under:
        parts.append(f"{len(under)} of {n} runs under their threshold ({_names(under)})")
    if timeouts:
        parts.append(f"{len(timeouts)} of {n} runs timed out ({_names(timeouts)})")
    if not parts:
        thresholds = any(plan.threshold(o.spec.probe.name) > -math.inf for o in outcomes)
        parts.append(f"{n} run{'s' if n != 1 else ''}, " + ("no threshold failed" if thresholds else "no threshold set"))
    if flags:
        parts.append(f"{len(flags)} flagged ({_names(flags)})")
    if errors:
        code, head = EXIT_USAGE, "error"
    elif under:
        code, head = EXIT_BELOW_THRESHOLD, "FAIL"
    elif timeouts:
        code, head = EXIT_INCONCLUSIVE, "inconclusive"
    else:
        code, head = EXIT_OK, "ok"
    return code, f"robustcheck: {head}: {'; '.join(parts)}; report: {Path(plan.out) / 'report.html'}"


def _print_summary(outcomes: Sequence[Any], plan: Any, flagged: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from robustcheck.reports.formatting import DASH, format_score

    table = Table(title="robustcheck audit", title_justify="left")
    for column in ("model", "defense", "probe", "clean acc", "score", "threshold", "verdict", "status", "flags", "seconds"):
        table.add_column(column, overflow="fold")  # names wrap, never end in an ellipsis
    for o, flags in zip(outcomes, flagged, strict=True):
        r = o.result
        clean = r.metrics.get("clean_accuracy")
        score = format_score(r.score)
        threshold = plan.threshold(o.spec.probe.name)
        if r.status != "ok" or r.score is None:
            passed = {"timeout": "inconclusive"}.get(r.status, r.status)
        elif threshold == -math.inf:
            passed = DASH
        elif r.score < threshold:
            score, passed = f"[red]{score}[/red]", "[red]FAIL[/red]"
        else:
            passed = "[green]pass[/green]"
        table.add_row(
            escape(o.spec.model), escape(str(o.spec.defense or DASH)), escape(o.spec.probe.name), format_score(clean), score,
            format_score(threshold), passed,
            r.status + (" (saved)" if o.resumed else ""), f"[yellow]{', '.join(f.code for f in flags)}[/yellow]", f"{r.seconds:.1f}",
        )  # fmt: skip
    # a log (CI, a pipe) has no width: rich would assume 80 columns and squeeze the table
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
    console.print(table)
    for o, flags in zip(outcomes, flagged, strict=True):  # validity flags: the score may not measure robustness
        for flag in flags:
            console.print(f"[yellow]flag[/yellow] {escape(o.spec.label)}: {flag.code}: {escape(flag.message)}", soft_wrap=True)
    console.print(f"report: {escape(str(Path(plan.out) / 'report.html'))}")


if __name__ == "__main__":
    sys.exit(main())
