"""Metrics, tables and records of the ``corruptions`` probe (:mod:`robustcheck.probes.corruptions.probe`),
all computed from the per-sample records alone, so that shards merge exactly.

Record columns: ``index``, ``label``, ``prediction`` and ``correct`` (clean), ``corrupted_accuracy`` (share of
the measured corruption-severity pairs the sample is classified correctly under), ``first_failure`` (the
first pair, in corruption order and by severity, that misclassifies it; ``None``: none does), one boolean
column ``<corruption>/<severity>`` per pair, and with a reference model ``reference_correct`` and
``reference:<corruption>/<severity>``.

Corruption error (Hendrycks & Dietterich 2019), per corruption ``c`` over the measured severities ``s``:
``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}`` and relative ``rCE_c = sum_s (E_{s,c} - E_clean) /
sum_s (E^ref_{s,c} - E^ref_clean)``, with ``E`` top-1 error rates of the model and of the reference model on
the same corrupted images; ``mce`` and ``relative_mce`` are their means over the corruptions (as ratios:
1.0 = as robust as the reference; the paper prints them times 100). A corruption whose denominator is
not positive (the reference makes no error, or loses nothing under it) has no CE; it is left out of the
mean and listed in ``mce_undefined``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from robustcheck.api import Table
from robustcheck.ops.corruptions import FAMILIES

REFERENCE_PREFIX = "reference:"
FAMILY_OF = {name: family for family, names in FAMILIES.items() for name in names}


def pair_column(name: str, severity: int) -> str:
    return f"{name}/{severity}"


def per_sample_records(
    labels: np.ndarray,
    prediction: np.ndarray,
    correct: dict[tuple[str, int], np.ndarray],
    reference: dict[tuple[str, int] | str, np.ndarray] | None,
) -> pd.DataFrame:
    """One row per sample (see the module docstring); ``correct`` maps ``(corruption, severity)`` to booleans
    ``(N,)``, ``reference`` the same plus ``"clean"`` for the reference model."""
    pairs = list(correct)
    stacked = np.stack([correct[p] for p in pairs], axis=1) if pairs else np.zeros((len(labels), 0), bool)
    failing = ~stacked
    first = np.where(failing.any(axis=1), failing.argmax(axis=1), -1)
    frame = pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "label": labels.astype(np.int64),
            "prediction": prediction.astype(np.int64),
            "correct": prediction == labels,
            "corrupted_accuracy": stacked.mean(axis=1) if pairs else np.nan,
            "first_failure": [pair_column(*pairs[i]) if i >= 0 else None for i in first],
        }
    )
    columns = {pair_column(*p): correct[p] for p in pairs}
    if reference is not None:
        columns["reference_correct"] = reference["clean"]
        columns.update({REFERENCE_PREFIX + pair_column(*p): reference[p] for p in pairs})
    return pd.concat([frame, pd.DataFrame(columns)], axis=1)


def _error_ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def compute_metrics(records: pd.DataFrame, names: Sequence[str], severities: Sequence[int]) -> dict[str, Any]:
    """Every metric of the probe from its records (see the module docstring and the probe's)."""
    clean = float(records["correct"].astype(bool).mean())
    grid = {
        name: {str(s): float(records[pair_column(name, s)].astype(bool).mean()) for s in severities}
        for name in names
    }
    all_pairs = [v for row in grid.values() for v in row.values()]
    mean_accuracy = float(np.mean(all_pairs))
    metrics: dict[str, Any] = {
        "clean_accuracy": clean,
        "mean_corruption_accuracy": mean_accuracy,
        "mean_corruption_error": 1.0 - mean_accuracy,
        "relative_accuracy": mean_accuracy / clean if clean > 0 else None,
        "accuracy_by_severity": {
            "0": clean,
            **{str(s): float(np.mean([grid[n][str(s)] for n in names])) for s in severities},
        },
        "corruption_accuracy": grid,
        "samples": len(records),
    }
    if "reference_correct" in records.columns:
        metrics.update(_reference_metrics(records, grid, clean, names, severities))
    return metrics


def _reference_metrics(
    records: pd.DataFrame,
    grid: dict[str, dict[str, float]],
    clean: float,
    names: Sequence[str],
    severities: Sequence[int],
) -> dict[str, Any]:
    ref_clean = float(records["reference_correct"].astype(bool).mean())
    ref_grid = {
        name: {
            str(s): float(records[REFERENCE_PREFIX + pair_column(name, s)].astype(bool).mean())
            for s in severities
        }
        for name in names
    }
    ce: dict[str, float | None] = {}
    rce: dict[str, float | None] = {}
    for name in names:
        errors = np.array([1 - grid[name][str(s)] for s in severities])
        ref_errors = np.array([1 - ref_grid[name][str(s)] for s in severities])
        ce[name] = _error_ratio(errors.sum(), ref_errors.sum())
        rce[name] = _error_ratio((errors - (1 - clean)).sum(), (ref_errors - (1 - ref_clean)).sum())
    defined = [v for v in ce.values() if v is not None]
    defined_relative = [v for v in rce.values() if v is not None]
    undefined = sorted({n for n in names if ce[n] is None or rce[n] is None})
    return {
        "reference_clean_accuracy": ref_clean,
        "reference_mean_corruption_accuracy": float(
            np.mean([v for row in ref_grid.values() for v in row.values()])
        ),
        "mce": float(np.mean(defined)) if defined else None,
        "relative_mce": float(np.mean(defined_relative)) if defined_relative else None,
        "corruption_error": ce,
        "relative_corruption_error": rce,
        **({"mce_undefined": undefined} if undefined else {}),
    }


def accuracy_table(
    metrics: dict[str, Any],
    names: Sequence[str],
    severities: Sequence[int],
    sources: dict[str, str],
    reference: str | None,
) -> Table:
    """Accuracy per corruption (rows) and severity (columns), with each corruption's mean, family, image
    source and (with a reference model) corruption errors; first row clean, last row the mean per severity."""
    grid = metrics["corruption_accuracy"]
    rows: list[dict[str, Any]] = [
        {
            "corruption": "clean",
            "family": "",
            "source": "",
            **{str(s): None for s in severities},
            "mean": metrics["clean_accuracy"],
        }
    ]
    for name in names:
        row: dict[str, Any] = {"corruption": name, "family": FAMILY_OF[name], "source": sources[name]}
        row.update({str(s): grid[name][str(s)] for s in severities})
        row["mean"] = float(np.mean(list(grid[name].values())))
        if reference is not None:
            row["CE"] = metrics["corruption_error"][name]
            row["relative CE"] = metrics["relative_corruption_error"][name]
        rows.append(row)
    last: dict[str, Any] = {"corruption": "mean", "family": "", "source": ""}
    last.update({str(s): metrics["accuracy_by_severity"][str(s)] for s in severities})
    last["mean"] = metrics["mean_corruption_accuracy"]
    if reference is not None:
        last["CE"], last["relative CE"] = metrics["mce"], metrics["relative_mce"]
    rows.append(last)
    note = (
        "Top-1 accuracy under each corruption at each severity (columns 1-5). source: 'generated' by robustcheck's "
        "torch implementation, or 'data' = the pre-generated images the data carries (CIFAR-10-C / ImageNet-C files)."
    )
    if reference is not None:
        note += (
            f" CE: summed errors over the severities divided by those of reference model {reference!r} on the same "
            "images (1 = as robust as the reference; last row: mCE); relative CE: the same for the errors added "
            "by the corruption over the clean error."
        )
    return Table("Accuracy per corruption and severity", pd.DataFrame(rows), note)
