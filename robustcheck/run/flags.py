"""Validity flags: what makes a run's number something other than a robustness measurement.

A score can look like robustness and measure something else: a model at chance level, a model that
predicts one class whatever it sees, an attack that stops working where every attack must work
(gradient masking), a defense that only obfuscates gradients. :func:`audit_flags` checks the
finished runs of an audit (or a pytest session) and returns, per run, the :class:`Flag` s that
apply: a short kebab-case ``code`` (API: tests allow flags by code) and a one-line ``message`` with
the numbers. Flags are a pure function of the outcomes (spec, score, metrics, per-sample records
and status), so runs reused with ``--resume`` are flagged exactly like fresh ones.

Per-run flags come from one run's result; cross-run flags (``adaptive-weaker``, ``defense-worse``)
compare runs of the same audit. :data:`FLAG_CODES` lists every code with its rule; the thresholds
are the module constants below.

Only ``math`` is imported here: the pytest plugin reaches this module, and records are used through
the pandas API of the frames the probes return.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from robustcheck.run.runner import RunOutcome

#: clean accuracy at or below ``1/K + max(CHANCE_MARGIN, CHANCE_SE * binomial standard error)`` is chance level
CHANCE_MARGIN = 0.05
CHANCE_SE = 2.0
#: share of samples predicted as the most frequent class from which predictions count as constant
CONSTANT_SHARE = 0.95
#: fewest per-sample predictions ``constant-prediction`` judges
CONSTANT_MIN_SAMPLES = 10
#: robust accuracy above this at an Linf epsilon of half the bounds range: the attack did not converge
CONVERGENCE_ACCURACY = 0.05
#: share of samples with an all-zero input gradient from which ``zero-gradients`` is raised
ZERO_GRADIENT_SHARE = 0.10
#: score difference tolerated before an adaptive run counts as weaker, or a defense as worse
SCORE_TOLERANCE = 0.01

#: every flag code and its rule (the codes are API: ``allow_flags=[...]`` names them).
FLAG_CODES: dict[str, str] = {
    "chance-accuracy": (
        "clean accuracy at or below chance, 1/K for K classes, plus a margin: the larger of "
        f"{CHANCE_MARGIN:g} and {CHANCE_SE:g} binomial standard errors sqrt(p(1-p)/n) at p = 1/K for n samples "
        "(K: the model's class names, else the largest class id in the records + 1)"
    ),
    "constant-prediction": (
        f"at least {CONSTANT_SHARE:.0%} of the per-sample predictions are one class (at least "
        f"{CONSTANT_MIN_SAMPLES} samples, labels not themselves one class)"
    ),
    "no-convergence": (
        "Linf attack whose epsilons reach half the bounds range, where robust accuracy is still above "
        f"{CONVERGENCE_ACCURACY:g} (every image can be moved to mid-grey there): possible gradient masking"
    ),
    "zero-gradients": (
        f"the loss gradient with respect to the input is exactly zero on at least {ZERO_GRADIENT_SHARE:.0%} "
        "of the samples (gradient attacks; the records' zero_gradient column)"
    ),
    "adaptive-weaker": (
        f"the adaptive attack on a defense scores more than {SCORE_TOLERANCE:g} above (more robust than) "
        "the non-adaptive one on the same model, defense, probe, parameters and data: gradient obfuscation"
    ),
    "defense-worse": (
        f"a defended model scores more than {SCORE_TOLERANCE:g} below the bare model on the same probe, "
        "parameters and data"
    ),
    "partial": "the run timed out: its metrics cover only what finished",
    "few-samples": "the run measured fewer samples than asked (the data set holds fewer)",
    "one-class": "every sample of the run has the same label",
}


@dataclass(frozen=True)
class Flag:
    """A validity flag of one run: its ``code`` (a key of :data:`FLAG_CODES`) and a one-line message."""

    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def audit_flags(outcomes: Sequence[RunOutcome]) -> list[list[Flag]]:
    """The flags of every outcome (same order): its own and those from comparing it with the others."""
    flags = [run_flags(o) for o in outcomes]
    for i, extra in enumerate(cross_run_flags(outcomes)):
        flags[i] += extra
    order = list(FLAG_CODES)
    return [sorted(f, key=lambda flag: order.index(flag.code)) for f in flags]


# --------------------------------------------------------------------------- one run


def run_flags(outcome: RunOutcome) -> list[Flag]:
    """The flags that one run's result raises by itself (none for a run that ended in an error)."""
    result = outcome.result
    if result.status == "error":
        return []
    metrics = result.metrics or {}
    samples = _sample_records(result.records)
    flags: list[Flag] = []
    if result.status == "timeout":
        flags.append(Flag("partial", _one_line(f"timed out, metrics cover what finished: {result.message or 'time budget spent'}")))
    for check in (_chance, _constant, _no_convergence, _zero_gradients, _few_samples, _one_class):
        flag = check(outcome, metrics, samples)
        if flag is not None:
            flags.append(flag)
    return flags


def _sample_records(records: pd.DataFrame | None) -> pd.DataFrame | None:
    """``records`` if they hold one row per classified sample (``index`` and integer ``label``), else ``None``.

    Other probes record per class (fooling) or per sample, mode and epsilon (captions).
    """
    if records is None or not len(records) or not {"index", "label"} <= set(records.columns):
        return None
    if records["label"].dtype.kind not in "iu" or records["index"].duplicated().any():
        return None
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _sample_count(metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> int | None:
    if samples is not None:
        return len(samples)
    n = _number(metrics.get("samples"))
    return int(n) if n is not None else None


def _clean_accuracy(metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> float | None:
    value = _number(metrics.get("clean_accuracy"))
    if value is not None or samples is None:
        return value
    if "correct" in samples.columns:
        return float(samples["correct"].astype(bool).mean())
    if "prediction" in samples.columns:
        return float((samples["prediction"] == samples["label"]).mean())
    return None


def _num_classes(outcome: RunOutcome, metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> int | None:
    """``metrics["num_classes"]`` when the probe records it, else the number of class names the model was
    audited with, else the largest class id seen in the records + 1."""
    declared = _number(metrics.get("num_classes"))
    if declared is not None:
        return int(declared)
    labels = getattr(outcome, "labels", None)
    if isinstance(labels, Sequence) and not isinstance(labels, str) and len(labels) >= 2:
        return len(labels)
    if samples is None:
        return None
    seen = [int(samples[c].max()) for c in ("label", "prediction", "adv_prediction") if c in samples.columns and samples[c].dtype.kind in "iu"]
    return max(seen) + 1 if seen else None


def _chance(outcome: RunOutcome, metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> Flag | None:
    accuracy, classes, n = _clean_accuracy(metrics, samples), _num_classes(outcome, metrics, samples), _sample_count(metrics, samples)
    if accuracy is None or classes is None or classes < 2 or not n:
        return None
    chance = 1.0 / classes
    margin = max(CHANCE_MARGIN, CHANCE_SE * math.sqrt(chance * (1 - chance) / n))
    if accuracy > chance + margin:
        return None
    return Flag(
        "chance-accuracy",
        f"clean accuracy {accuracy:.3f} is at or below chance level {chance:.3f} ({classes} classes) + margin {margin:.3f} "
        f"on {n} samples: the score does not measure robustness",
    )


def _constant(outcome: RunOutcome, metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> Flag | None:
    if samples is None or "prediction" not in samples.columns or len(samples) < CONSTANT_MIN_SAMPLES:
        return None
    shares = samples["prediction"].value_counts(normalize=True)
    if float(shares.iloc[0]) < CONSTANT_SHARE or float(samples["label"].value_counts(normalize=True).iloc[0]) >= CONSTANT_SHARE:
        return None
    return Flag(
        "constant-prediction",
        f"the model predicts class {shares.index[0]} for {float(shares.iloc[0]):.0%} of the {len(samples)} samples: "
        "its output barely depends on the input",
    )


def _no_convergence(outcome: RunOutcome, metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> Flag | None:
    curve, bounds = metrics.get("robust_accuracy"), metrics.get("bounds")
    if metrics.get("norm") != "linf" or not isinstance(curve, Mapping) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        return None
    low, high = (_number(b) for b in bounds)
    if low is None or high is None or not high > low:
        return None
    try:
        points = sorted((float(eps), acc) for eps, acc in curve.items() if _number(acc) is not None)
    except (TypeError, ValueError):  # not an epsilon -> accuracy curve
        return None
    reached = [(eps, float(acc)) for eps, acc in points if eps >= (high - low) / 2 - 1e-12]
    if not reached:
        return None
    eps, accuracy = reached[-1]
    if accuracy <= CONVERGENCE_ACCURACY:
        return None
    return Flag(
        "no-convergence",
        f"robust accuracy is still {accuracy:.3f} at Linf epsilon {eps:g}, at least half the bounds range "
        f"[{low:g}, {high:g}], where it should approach 0: possible gradient masking or a failing attack",
    )


def _zero_gradients(outcome: RunOutcome, metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> Flag | None:
    if samples is None or "zero_gradient" not in samples.columns:
        return None
    measured = samples["zero_gradient"].dropna()
    if not len(measured):
        return None
    share = float(measured.astype(bool).mean())
    if share < ZERO_GRADIENT_SHARE:
        return None
    return Flag(
        "zero-gradients",
        f"the input gradient of the loss is exactly zero on {share:.0%} of {len(measured)} samples: "
        "gradient attacks see nothing to follow (masked or non-differentiable model)",
    )


def _asked(outcome: RunOutcome) -> int | None:
    """How many samples the run was asked for: the spec's ``samples``, capped by a probe's own ``samples``."""
    asked = [outcome.spec.samples, outcome.spec.probe.params.get("samples")]
    counts = [int(a) for a in asked if isinstance(a, int) and not isinstance(a, bool) and a > 0]
    return min(counts) if counts else None


def _few_samples(outcome: RunOutcome, metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> Flag | None:
    asked = _asked(outcome)
    if samples is None or asked is None or outcome.result.status == "timeout" or len(samples) >= asked:
        return None
    return Flag("few-samples", f"measured {len(samples)} samples of the {asked} asked: the data holds fewer")


def _one_class(outcome: RunOutcome, metrics: Mapping[str, Any], samples: pd.DataFrame | None) -> Flag | None:
    if samples is None or len(samples) < 2 or samples["label"].nunique() != 1:
        return None
    return Flag(
        "one-class",
        f"all {len(samples)} samples have label {int(samples['label'].iloc[0])}: the run says nothing about the other classes",
    )


# --------------------------------------------------------------------------- across runs


def _comparable(outcome: RunOutcome) -> tuple[Any, ...]:
    """What two runs must share to be compared: model, probe, parameters other than ``adaptive``, data, samples, seed."""
    spec = outcome.spec
    params = {k: v for k, v in spec.probe.params.items() if k != "adaptive"}
    return spec.model, spec.probe.name, json.dumps(params, sort_keys=True, default=str), outcome.data_name, spec.samples, spec.seed


def _adaptive(outcome: RunOutcome) -> bool | None:
    value = (outcome.result.metrics or {}).get("adaptive")
    if isinstance(value, bool):
        return value
    value = outcome.spec.probe.params.get("adaptive")
    return value if isinstance(value, bool) and outcome.spec.defense is not None else None


def _scored(outcome: RunOutcome) -> bool:
    return outcome.result.status == "ok" and _number(outcome.result.score) is not None


def cross_run_flags(outcomes: Sequence[RunOutcome]) -> list[list[Flag]]:
    """``adaptive-weaker`` and ``defense-worse``, per outcome (same order), from comparing finished runs."""
    flags: list[list[Flag]] = [[] for _ in outcomes]
    scored = [(i, o) for i, o in enumerate(outcomes) if _scored(o)]
    bare: dict[tuple[Any, ...], RunOutcome] = {}
    for _, o in scored:
        if o.spec.defense is None:
            bare.setdefault(_comparable(o), o)
    non_adaptive: dict[tuple[Any, ...], RunOutcome] = {}
    for _, o in scored:
        if o.spec.defense is not None and _adaptive(o) is False:
            non_adaptive.setdefault((*_comparable(o), str(o.spec.defense)), o)
    for i, o in scored:
        if o.spec.defense is None:
            continue
        score = float(o.result.score)  # type: ignore[arg-type]
        reference = bare.get(_comparable(o))
        if reference is not None and score < float(reference.result.score) - SCORE_TOLERANCE:  # type: ignore[arg-type]
            flags[i].append(
                Flag(
                    "defense-worse",
                    f"with defense {o.spec.defense} the score {score:.3f} is below the bare model's "
                    f"{float(reference.result.score):.3f} on the same probe and data: the defense makes it less robust",  # type: ignore[arg-type]
                )
            )
        other = non_adaptive.get((*_comparable(o), str(o.spec.defense))) if _adaptive(o) is True else None
        if other is not None and score > float(other.result.score) + SCORE_TOLERANCE:  # type: ignore[arg-type]
            flags[i].append(
                Flag(
                    "adaptive-weaker",
                    f"the adaptive attack scores {score:.3f}, above the non-adaptive {float(other.result.score):.3f} "  # type: ignore[arg-type]
                    f"on defense {o.spec.defense}: its gradients mislead the attack (gradient obfuscation)",
                )
            )
    return flags


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
