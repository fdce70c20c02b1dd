"""VNN-COMP-style benchmark runs: every instance (network, property, timeout) of an ``instances.csv`` decided
within its timeout, one result file per instance, verdicts compared with the reference answers.

CSV columns: ``onnx``, ``vnnlib`` (paths relative to the CSV's folder) and ``timeout_s`` are needed, or the
competition's own header-less ``onnx,vnnlib,timeout`` layout; ``benchmark`` and ``reference``
(``holds`` / ``violated`` / ``unknown``) and the reference tools' columns are used when present.

The wall time of an instance covers everything done for it: reading its property, bounds, attacks, solver calls
and, the first time a network is used, loading it (later instances of the same network reuse it). The engine
gets what is left of the instance's timeout after loading and parsing.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustcheck.errors import InputError
from robustcheck.verifiers.engine import Engine, FloatModel, Options, verify_properties
from robustcheck.verifiers.extraction import from_onnx
from robustcheck.verifiers.network import Network
from robustcheck.verifiers.vnnlib import read_vnnlib, write_result

#: reference answers and the verdict that agrees with each
_AGREES = {"holds": "unsat", "violated": "sat"}


@dataclass
class Instance:
    benchmark: str
    onnx: Path
    vnnlib: Path
    timeout: float
    reference: str = "unknown"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def network(self) -> str:
        return self.onnx.stem


@dataclass
class InstanceResult:
    instance: Instance
    verdict: str  # sat / unsat / timeout / unknown / error
    seconds: float
    message: str = ""
    result_file: Path | None = None
    #: an unsat whose every property the bounds proved and the exact replay confirmed
    replayed: bool = False

    @property
    def decided(self) -> bool:
        return self.verdict in ("sat", "unsat")

    @property
    def correct(self) -> bool:
        return self.decided and _AGREES.get(self.instance.reference) == self.verdict

    @property
    def wrong(self) -> bool:
        """A verdict that contradicts a reference answer."""
        expected = _AGREES.get(self.instance.reference)
        return self.decided and expected is not None and expected != self.verdict


def read_instances(path: str | Path) -> list[Instance]:
    """The instances of a CSV (see the module docstring); paths resolved against the CSV's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read instances file {str(path)!r}: {exc.strerror or exc}") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise InputError(f"instances file {str(path)!r} is empty")
    header = [h.strip() for h in rows[0]]
    if {"onnx", "vnnlib"} <= set(header):
        records = [dict(zip(header, r, strict=False)) for r in rows[1:] if r]
    else:  # the competition's header-less onnx,vnnlib,timeout
        records = [{"onnx": r[0], "vnnlib": r[1], "timeout_s": r[2] if len(r) > 2 else ""} for r in rows if r]
    out = []
    for i, rec in enumerate(records, start=2):
        try:
            timeout = float(rec.get("timeout_s") or rec.get("timeout") or "nan")
        except ValueError:
            raise InputError(f"{path}: line {i}: bad timeout {rec.get('timeout_s')!r}") from None
        extra = {k: v for k, v in rec.items() if k not in ("benchmark", "onnx", "vnnlib", "timeout_s", "reference")}
        out.append(Instance(rec.get("benchmark") or path.parent.name, path.parent / rec["onnx"].strip(),
                            path.parent / rec["vnnlib"].strip(), timeout, rec.get("reference") or "unknown", extra))  # fmt: skip
    return out


def select(instances: list[Instance], benchmarks: list[str] | None = None, networks: list[str] | None = None,
           per_network: int | None = None) -> list[Instance]:  # fmt: skip
    """A subset: only the named benchmarks / networks (ONNX stems), and at most ``per_network`` instances per
    network, spread evenly over its rows (every k-th)."""
    chosen = [i for i in instances if (not benchmarks or i.benchmark in benchmarks) and
              (not networks or i.network in networks)]  # fmt: skip
    if per_network is None:
        return chosen
    by_net: dict[str, list[Instance]] = {}
    for inst in chosen:
        by_net.setdefault(inst.network, []).append(inst)
    keep = set()
    for rows in by_net.values():
        step = max(1, len(rows) / max(per_network, 1))
        keep |= {id(rows[int(k * step)]) for k in range(min(per_network, len(rows)))}
    return [i for i in chosen if id(i) in keep]


class Runner:
    """Runs instances one after the other, caching loaded networks."""

    def __init__(self, options: Options, results_dir: Path | None, timeout: float | None = None) -> None:
        self.options, self.results_dir, self.timeout = options, results_dir, timeout
        self._networks: dict[Path, tuple[Network, FloatModel]] = {}

    def run(self, inst: Instance) -> InstanceResult:
        limit = self.timeout if self.timeout is not None else inst.timeout
        if not limit or limit != limit or limit <= 0:
            raise InputError(f"instance {inst.vnnlib.name}: no timeout in the CSV; give --timeout")
        began = time.monotonic()
        deadline = began + limit
        replayed = False
        try:
            if inst.onnx not in self._networks:
                net, module, shape = from_onnx(str(inst.onnx))
                self._networks[inst.onnx] = (net, FloatModel.from_module(module.eval(), shape))
            net, model = self._networks[inst.onnx]
            props = read_vnnlib(inst.vnnlib, net.num_inputs, net.num_outputs)
            # a small reserve for writing the result: the instance must end within its timeout
            left = deadline - time.monotonic() - min(2.0, 0.01 * limit + 0.2)
            if left <= 0:
                verdict, found, message = "timeout", None, "timeout while loading"
            else:
                verdict, found, outcomes = verify_properties(Engine(net, model, self.options), props, left)
                replayed = verdict == "unsat" and all(o.replayed for o in outcomes)
                message = "; ".join(dict.fromkeys(f"{o.stage}: {o.message}" for o in outcomes if o.message))[:300]
        except InputError as exc:
            verdict, found, message = "error", None, str(exc)
        seconds = time.monotonic() - began
        result = InstanceResult(inst, verdict, seconds, message, replayed=replayed)
        if self.results_dir is not None:
            target = self.results_dir / inst.benchmark / f"{inst.onnx.stem}__{inst.vnnlib.stem}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            status = verdict if verdict in ("sat", "unsat", "timeout") else "unknown"
            x = found.counterexample if found is not None else None
            y = found.output if found is not None else None
            result.result_file = write_result(target, status, x, y)
        return result


def run_instances(instances: list[Instance], options: Options, results_dir: Path | None, timeout: float | None = None,
                  report: Callable[[InstanceResult], None] | None = None) -> list[InstanceResult]:  # fmt: skip
    runner = Runner(options, results_dir, timeout)
    results = []
    for inst in instances:
        result = runner.run(inst)
        results.append(result)
        if report is not None:
            report(result)
    return results


@dataclass
class Summary:
    """Per network: counts and times of our results beside the reference tools' (from the CSV)."""

    benchmark: str
    network: str
    instances: int
    decided: int
    correct: int
    wrong: int
    unchecked: int  # decided where the reference is unknown
    replayed: int  # unsat verdicts the exact replay confirmed
    median_s: float
    max_overrun: float  # max over instances of seconds / timeout - 1
    reference: dict[str, int]

    def row(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "network": self.network, "instances": self.instances,
                "decided": self.decided, "correct": self.correct, "wrong": self.wrong, "unchecked": self.unchecked,
                "replayed": self.replayed,
                "median_s": round(self.median_s, 2), "max_overrun_pct": round(100 * self.max_overrun, 1),
                **self.reference}  # fmt: skip


def summarize(results: list[InstanceResult], timeout: float | None = None) -> list[Summary]:
    groups: dict[tuple[str, str], list[InstanceResult]] = {}
    for r in results:
        groups.setdefault((r.instance.benchmark, r.instance.network), []).append(r)
    out = []
    for (bench, network), rows in groups.items():
        ref = {"ref_holds": sum(r.instance.reference == "holds" for r in rows),
               "ref_violated": sum(r.instance.reference == "violated" for r in rows)}  # fmt: skip
        for tool in ("abcrown", "nnenum"):
            answers = [r.instance.extra.get(f"{tool}_result", "") for r in rows]
            if any(answers):
                ref[f"{tool}_decided"] = sum(a in ("sat", "unsat", "holds", "violated") for a in answers)
        overrun = max(r.seconds / (timeout or r.instance.timeout) - 1 for r in rows)
        out.append(Summary(bench, network, len(rows), sum(r.decided for r in rows), sum(r.correct for r in rows),
                           sum(r.wrong for r in rows), sum(r.decided and r.instance.reference not in _AGREES for r in rows),
                           sum(r.replayed for r in rows),
                           statistics.median(r.seconds for r in rows), overrun, ref))  # fmt: skip
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no instances)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)
