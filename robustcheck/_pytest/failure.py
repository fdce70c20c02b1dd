"""The failure message of a robustness check in pytest: explanation, validity flags, worst samples,
reproduce command.

Private to the pytest plugin (:mod:`robustcheck.pytest_plugin`). Like the plugin it is imported in
every pytest session, so it imports nothing heavy at module level: pandas and numpy only within
the functions that get records, which exist only once a run has taken place.
"""

from __future__ import annotations

import numbers
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from robustcheck.errors import UsageError
from robustcheck.params import format_spec
from robustcheck.reports.formatting import format_value
from robustcheck.run.flags import FLAG_CODES, audit_flags  # light: the rules import only the standard library

if TYPE_CHECKING:
    import pandas as pd

    from robustcheck.run.flags import Flag
    from robustcheck.run.runner import RunOutcome, RunSpec

WORST_SAMPLES = 5
SAMPLE_COLUMNS = ("index", "label", "prediction", "adv_prediction", "min_epsilon")


@dataclass
class Check:
    """One robustness run of the session and what the test expected of it."""

    outcome: RunOutcome
    test: str
    key: str
    reproduce: str
    min_score: float | None = None
    #: the run's validity flags (set by :func:`flag_problems`) and the codes the test allows
    flags: list[Flag] = field(default_factory=list)
    allowed: frozenset[str] = frozenset()
    #: why the assertion failed (``[]``: it passed; ``None``: the run was not asserted, ``robustcheck.run``)
    problems: list[str] | None = None

    @property
    def verdict(self) -> str | None:
        """``"pass"``, ``"fail"`` (also inconclusive runs: the test fails) or ``None`` (not asserted)."""
        return None if self.problems is None else ("fail" if self.problems else "pass")


def flag_problems(check: Check, outcomes: Sequence[RunOutcome], allow_flags: Sequence[str] | str = ()) -> list[str]:
    """Flag ``check`` (its run, compared with the session's ``outcomes``, which end with it) and say which
    of its flags the test does not allow; an unknown code in ``allow_flags`` is a usage error."""
    allowed = [allow_flags] if isinstance(allow_flags, str) else list(allow_flags)
    unknown = [code for code in allowed if code not in FLAG_CODES]
    if unknown:
        raise UsageError(f"allow_flags: unknown flag code {unknown[0]!r}; the codes are {', '.join(FLAG_CODES)}")
    check.allowed = frozenset(allowed)
    check.flags = audit_flags(outcomes)[-1] if outcomes and outcomes[-1] is check.outcome else []
    refused = [flag.code for flag in check.flags if flag.code not in check.allowed]
    return [f"flagged {', '.join(refused)} (allow with allow_flags=[{', '.join(repr(c) for c in refused)}])"] if refused else []


def explain(check: Check, problems: list[str]) -> str:
    """The one-screen explanation of a failed robustness check."""
    spec, result = check.outcome.spec, check.outcome.result
    run = check.outcome.to_json()
    threshold = f"min_score {check.min_score:.4f}" if check.min_score is not None else "none"
    score = f"{result.score:.4f}" if result.score is not None else "none"
    lines = [
        f"robustness check failed: {spec.probe.name} on {spec.model}: " + "; ".join(problems),
        f"  probe:      {spec.probe.name}",
        f"  params:     {format_spec('', spec.probe.params)[1:] or '(defaults)'}",
        f"  model:      {spec.model}" + (f" + {spec.defense}" if spec.defense else ""),
        f"  data:       {run['data']} ({run['samples']} samples)",
        f"  score:      {score}   threshold: {threshold}",
        f"  status:     {result.status}" + (f": {result.message}" if result.message else ""),
        f"  seed:       {result.seed}",
    ]
    metrics = _scalar_metrics(result.metrics)
    if metrics:
        lines.append(f"  metrics:    {metrics}")
    for flag in check.flags:
        lines.append(f"  flag:       {flag.code}{' (allowed)' if flag.code in check.allowed else ''}: {flag.message}")
    lines += _worst_lines(result.records)
    lines.append(f"  reproduce:  {check.reproduce}")
    return "\n".join(lines)


def _scalar_metrics(metrics: Mapping[str, Any]) -> str:
    shown = [f"{k}={format_value(v)}" for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)]
    return " ".join(shown)


def _worst_lines(records: pd.DataFrame | None) -> list[str]:
    if records is None or not len(records):
        return []
    worst = worst_samples(records)
    if not len(worst):
        return [f"  worst samples: none of the {len(records)} samples was misclassified or fooled"]
    columns = [c for c in SAMPLE_COLUMNS if c in worst.columns] or list(worst.columns)
    return [f"  worst samples (of {len(records)}; correctly classified but fooled first):", *_table(worst, columns, indent=4)]


def worst_samples(records: pd.DataFrame, limit: int = WORST_SAMPLES) -> pd.DataFrame:
    """The ``limit`` worst rows: correctly classified but fooled first (smallest ``min_epsilon``
    first when the column exists), then samples misclassified without attack.

    Records without correctness information give their first rows.
    """
    cols = set(records.columns)
    correct = records["correct"].astype(bool) if "correct" in cols else None
    if correct is None and {"label", "prediction"} <= cols:
        correct = records["prediction"] == records["label"]
    fooled = None
    if "min_epsilon" in cols:
        fooled = records["min_epsilon"].notna()
    elif {"label", "adv_prediction"} <= cols:
        fooled = records["adv_prediction"] != records["label"]
    if correct is None and fooled is None:
        return records.head(limit)
    import numpy as np

    rank = np.full(len(records), 2)
    if correct is not None:
        rank[~correct.to_numpy(bool)] = 1
    if fooled is not None:
        bad = fooled.to_numpy(bool) & (correct.to_numpy(bool) if correct is not None else True)
        rank[bad] = 0
    ranked = records.assign(_rank=rank)
    order = ["_rank", *(["min_epsilon"] if "min_epsilon" in cols else []), *(["index"] if "index" in cols else [])]
    ranked = ranked[ranked["_rank"] < 2].sort_values(order, kind="stable", na_position="last")
    return ranked.drop(columns="_rank").head(limit)


def _table(frame: pd.DataFrame, columns: list[str], indent: int) -> list[str]:
    cells = [[str(c) for c in columns]] + [[format_value(row[c]) for c in columns] for _, row in frame.iterrows()]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return [" " * indent + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]


def audit_command(spec: RunSpec, outcome: RunOutcome) -> str:
    """The ``robustcheck audit`` command line that repeats ``spec``."""
    parts = ["robustcheck", "audit", "--model", spec.model]
    if spec.data:
        parts += ["--data", spec.data]
    parts += ["--probe", str(spec.probe), "--seed", str(spec.seed)]
    parts += ["--samples", str(outcome.to_json()["samples"]), "--defense", str(spec.defense or "none")]
    if spec.budget_s:
        parts += ["--budget", f"{spec.budget_s:g}"]
    if spec.device:
        parts += ["--device", spec.device]
    return shlex.join(parts)
