"""Leaderboards across models, defenses and runs: HTML (one offline file) and Markdown.

**Threat-model leaderboards** (RobustBench style) come first when the runs include the ``autoattack`` probe:
one table per threat model (norm, epsilon), one row per model and defended variant, ranked by AutoAttack
robust accuracy at that threat model (ties share a rank), with clean accuracy, the 8-bit robust accuracy, the
model card (architecture, training, extra data, reference, licence: the zoo's cards for built-in models, the
``cards`` argument for others) and the row's mean of probe scores beside it. :func:`build_leaderboard`
attaches them to its table (``table.attrs["threat_models"]``), so every writer shows them.

**The mean-of-scores table** (secondary): one row per model and defended variant; one column per probe (with its parameters when a probe ran
with several settings); ``clean accuracy``; ``overall`` = the unweighted mean of the row's probe
scores; ``coverage`` = how many of the leaderboard's probes the row has. Rows are ranked by
coverage first (a row missing probes cannot outrank a complete one), then by overall score; equal
keys share a rank (1, 2, 2, 4). By default each cell is the latest run of its (model, defense,
probe, params); with ``all_runs`` it is the mean over every run. A cell whose run carries validity
flags (any of its runs, with ``all_runs``) is marked with a flag sign and the flag codes
(the ``flags`` column: probe column -> flags).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from robustcheck.reports.formatting import DASH, format_epsilon, format_score

TEMPLATES = Path(__file__).parent / "templates"
FLAG_SIGN = "\u2691"


def _union_flags(groups: pd.Series) -> list[dict[str, str]]:
    """The flags of a cell's runs, one per code (the latest message)."""
    seen: dict[str, dict[str, str]] = {}
    for flags in groups:
        for flag in flags or []:
            seen[str(flag.get("code"))] = {"code": str(flag.get("code")), "message": str(flag.get("message") or "")}
    return list(seen.values())


def _cell_flags(row: pd.Series, probe: str) -> list[dict[str, str]]:
    return (row.get("flags") or {}).get(probe) or []


def _probe_column(frame: pd.DataFrame) -> pd.Series:
    """``probe`` alone, or ``probe k=v,...`` where the same probe ran with different parameters."""
    params = frame["params"].map(lambda p: json.dumps(p, sort_keys=True))
    varied = params.groupby(frame["probe"]).transform("nunique") > 1
    label = frame["params"].map(lambda p: ",".join(f"{k}={v}" for k, v in sorted(p.items())))
    return frame["probe"].where(~varied, frame["probe"] + " " + label)


def build_leaderboard(
    frame: pd.DataFrame, *, all_runs: bool = False, cards: Mapping[str, Mapping[str, str]] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Rank the runs in ``frame`` (see :func:`robustcheck.run.history.runs_frame`); return (table, probe columns).

    The threat-model leaderboard of the ``autoattack`` runs rides along as ``table.attrs["threat_models"]``
    (see :func:`build_threat_leaderboard`; ``cards``: model name -> card fields, over the zoo's)."""
    table, probes = _build_scores(frame, all_runs=all_runs)
    table.attrs["threat_models"] = build_threat_leaderboard(frame, cards=cards, scores=table)
    return table, probes


def _build_scores(frame: pd.DataFrame, *, all_runs: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The mean-of-scores table: one row per model and defended variant, one column per probe."""
    frame = frame[frame["status"] != "error"].copy()
    if frame.empty:
        return pd.DataFrame(columns=["rank", "model", "defense", "clean_accuracy", "overall", "coverage", "flags"]), []
    if "flags" not in frame.columns:
        frame["flags"] = [[] for _ in range(len(frame))]
    frame["defense"] = frame["defense"].fillna("")
    frame["column"] = _probe_column(frame)
    frame["order"] = range(len(frame))
    keys = ["model", "defense", "column"]
    if all_runs:
        ordered = frame.sort_values(["created", "order"])
        cells = ordered.groupby(keys, sort=False).agg(
            score=("score", "mean"), runs=("score", "size"), report=("report", "last"), flags=("flags", _union_flags)
        )
    else:
        latest = frame.sort_values(["created", "order"]).groupby(keys, sort=False).tail(1)
        cells = latest.set_index(keys)[["score", "report", "flags"]].assign(runs=1)
    probes = sorted(frame["column"].unique())
    table = cells["score"].unstack("column").reindex(columns=probes)
    clean = frame.sort_values(["created", "order"]).groupby(["model", "defense"])["clean_accuracy"].last()
    reports = cells["report"].dropna().groupby(level=["model", "defense"]).last()
    table = table.reset_index()
    index = pd.MultiIndex.from_frame(table[["model", "defense"]])
    table["clean_accuracy"] = clean.reindex(index).to_numpy()
    table["report"] = reports.reindex(index).to_numpy() if len(reports) else None
    flagged = cells["flags"][cells["flags"].map(bool)]
    by_row: dict[tuple[str, str], dict[str, list[dict[str, str]]]] = {}
    for (model, defense, column), flags in flagged.items():
        by_row.setdefault((model, defense), {})[column] = list(flags)
    table["flags"] = [by_row.get((m, d), {}) for m, d in zip(table["model"], table["defense"], strict=True)]
    scores = table[probes]
    table["coverage"] = scores.notna().sum(axis=1)
    table["overall"] = scores.mean(axis=1, skipna=True)
    ranked = table.sort_values(["coverage", "overall", "model", "defense"], ascending=[False, False, True, True], na_position="last")
    key = list(zip(ranked["coverage"], ranked["overall"].fillna(-1.0), strict=True))
    ranked["rank"] = [1 + sum(other > k for other in key) for k in key]  # competition ranking: ties share
    columns = ["rank", "model", "defense", "clean_accuracy", *probes, "overall", "coverage", "report", "flags"]
    return ranked[columns].reset_index(drop=True), probes


#: the probe whose robust accuracy ranks the threat-model leaderboards
THREAT_PROBE = "autoattack"
#: model-card fields shown beside each threat-model row, with their column titles
CARD_FIELDS = {"architecture": "architecture", "training": "training", "extra_data": "extra data", "reference": "paper / URL", "licence": "licence"}
THREAT_COLUMNS = [
    "threat_model", "norm", "epsilon", "rank", "model", "defense", "robust_accuracy", "clean_accuracy",
    "robust_accuracy_8bit", *CARD_FIELDS, "mean_score", "samples", "version", "report", "flags",
]  # fmt: skip


def threat_model_name(norm: Any, epsilon: float) -> str:
    """``"Linf, eps 8/255"``, ``"L2, eps 0.5"``."""
    label = {"linf": "Linf", "l2": "L2"}.get(str(norm), str(norm))
    return f"{label}, eps {format_epsilon(epsilon)}"


def load_cards(path: str | Path) -> dict[str, dict[str, str]]:
    """Model cards from a TOML file: one table per model name with any of the :data:`CARD_FIELDS` as strings::

        ["my-resnet"]
        architecture = "ResNet-18"
        training = "TRADES, Linf 8/255"
        extra_data = "500k unlabelled images"
        reference = "https://arxiv.org/abs/..."
        licence = "MIT"
    """
    import tomllib

    from robustcheck.errors import InputError

    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no model-card file at {str(path)!r}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"model-card file {str(path)!r} is not valid TOML: {exc}") from None
    cards: dict[str, dict[str, str]] = {}
    for model, card in doc.items():
        if not isinstance(card, dict):
            raise InputError(f"model-card file {str(path)!r}: [{model}] must be a table of {', '.join(CARD_FIELDS)}")
        unknown = sorted(set(card) - set(CARD_FIELDS))
        if unknown:
            raise InputError(f"model-card file {str(path)!r}: [{model}] has unknown fields {', '.join(unknown)}; fields: {', '.join(CARD_FIELDS)}")
        cards[str(model)] = {field: str(value) for field, value in card.items()}
    return cards


def _zoo_cards() -> dict[str, dict[str, str]]:
    from robustcheck.zoo import MODEL_CARDS

    return {name: dict(card) for name, card in MODEL_CARDS.items()}


def build_threat_leaderboard(
    frame: pd.DataFrame, *, cards: Mapping[str, Mapping[str, str]] | None = None, scores: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per threat model (norm, epsilon), model and defense from the ``autoattack`` runs in ``frame``.

    Each run contributes a row per nonzero epsilon of its ``robust_accuracy`` curve (the latest run of a cell
    wins); rows are ranked within their threat model by that robust accuracy (competition ranking: ties share),
    with ``clean_accuracy``, ``robust_accuracy_8bit``, the model card (``cards`` over the zoo's, by model name)
    and ``mean_score``, the row's mean of probe scores from ``scores`` (:func:`build_leaderboard`'s table).
    Sorted by norm, epsilon and rank; empty (with the columns) when no ``autoattack`` run succeeded.
    """
    if "probe" not in frame.columns or frame.empty:
        return pd.DataFrame(columns=THREAT_COLUMNS)
    runs = frame[(frame["probe"] == THREAT_PROBE) & (frame["status"] != "error")].copy()
    runs["order"] = range(len(runs))
    rows = []
    for _, run in runs.sort_values(["created", "order"]).iterrows():
        metrics = run.get("metrics") if isinstance(run.get("metrics"), Mapping) else {}
        curve, curve_8bit = metrics.get("robust_accuracy"), metrics.get("robust_accuracy_8bit") or {}
        if not isinstance(curve, Mapping):
            continue
        for key, accuracy in curve.items():
            try:
                epsilon = float(key)
            except (TypeError, ValueError):
                continue
            if epsilon <= 0 or not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
                continue
            rows.append(
                {
                    "norm": str(metrics.get("norm", "linf")),
                    "epsilon": epsilon,
                    "model": str(run["model"]),
                    "defense": run["defense"] if isinstance(run["defense"], str) else "",
                    "robust_accuracy": float(accuracy),
                    "clean_accuracy": metrics.get("clean_accuracy", run.get("clean_accuracy")),
                    "robust_accuracy_8bit": curve_8bit.get(key) if isinstance(curve_8bit, Mapping) else None,
                    "samples": metrics.get("samples"),
                    "version": metrics.get("version"),
                    "report": run.get("report"),
                    "flags": list(run.get("flags") or []),
                }
            )
    if not rows:
        return pd.DataFrame(columns=THREAT_COLUMNS)
    table = pd.DataFrame(rows).drop_duplicates(["norm", "epsilon", "model", "defense"], keep="last")
    table["threat_model"] = [threat_model_name(n, e) for n, e in zip(table["norm"], table["epsilon"], strict=True)]
    group = table.groupby(["norm", "epsilon"])["robust_accuracy"]
    table["rank"] = group.rank(method="min", ascending=False).astype(int)  # ties share a rank
    known = {**_zoo_cards(), **{name: dict(card) for name, card in (cards or {}).items()}}
    for field in CARD_FIELDS:
        table[field] = [known.get(model, {}).get(field) for model in table["model"]]
    mean = {}
    if scores is not None and not scores.empty:
        mean = {(m, d): o for m, d, o in zip(scores["model"], scores["defense"], scores["overall"], strict=True)}
    table["mean_score"] = [mean.get((m, d)) for m, d in zip(table["model"], table["defense"], strict=True)]
    table = table.sort_values(["norm", "epsilon", "rank", "model", "defense"])
    return table[THREAT_COLUMNS].reset_index(drop=True)


def _threat_groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    threats = table.attrs.get("threat_models")
    if not isinstance(threats, pd.DataFrame) or threats.empty:
        return []
    return [(str(part["threat_model"].iloc[0]), part) for _, part in threats.groupby(["norm", "epsilon"], sort=True)]


def _card_text(value: Any) -> str:
    return str(value) if isinstance(value, str) and value else DASH


def threat_markdown(table: pd.DataFrame) -> str:
    """The threat-model sections of ``table`` (``table.attrs["threat_models"]``) in Markdown; empty without them."""
    lines: list[str] = []
    for name, part in _threat_groups(table):
        header = ["rank", "model", "defense", "AutoAttack robust accuracy", "clean accuracy", "8-bit robust accuracy",
                  *CARD_FIELDS.values(), "mean of scores"]  # fmt: skip
        lines += [f"## Threat model {name}", "", "| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            cells = [str(r["rank"]), str(r["model"]), str(r["defense"]) or DASH, _flagged(format_score(r["robust_accuracy"]), r["flags"]),
                     format_score(r["clean_accuracy"]), format_score(r["robust_accuracy_8bit"]),
                     *(_card_text(r[f]) for f in CARD_FIELDS), format_score(r["mean_score"])]  # fmt: skip
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        lines.append("")
    if lines:
        lines += ["## All probes: mean of scores (secondary)", ""]
    return "\n".join(lines)


_THREAT_HTML = """{% for name, rows in groups %}<h2>Threat model {{ name }}</h2>
<p class="note">Ranked by AutoAttack robust accuracy at this threat model (ties share a rank); clean accuracy,
8-bit robust accuracy (adversarials rounded to 1/255 steps), the model card and the mean of all probe scores beside it.</p>
<table class="threat-model">
<thead><tr><th>rank</th><th class="text">model</th><th class="text">defense</th><th>AutoAttack robust accuracy</th>
<th>clean accuracy</th><th>8-bit robust accuracy</th>{% for title in card_titles %}<th class="text">{{ title }}</th>{% endfor %}
<th>mean of scores</th><th class="text">report</th></tr></thead>
<tbody>
{% for row in rows %}<tr>
<td>{{ row.rank }}</td><td class="text">{{ row.model }}</td><td class="text">{{ row.defense }}</td>
<td{% if row.flags %} class="flagged" title="{% for flag in row.flags %}{{ flag.code }}: {{ flag.message }}{% if not loop.last %}&#10;{% endif %}{% endfor %}"{% endif %}>{{ row.robust }}{% if row.flags %} <span class="flag">{{ flag_sign }} {% for flag in row.flags %}{{ flag.code }}{% if not loop.last %}, {% endif %}{% endfor %}</span>{% endif %}</td>
<td>{{ row.clean }}</td><td>{{ row.robust_8bit }}</td>{% for value in row.card %}<td class="text">{{ value }}</td>{% endfor %}
<td>{{ row.mean }}</td><td class="text">{% if row.link %}<a href="{{ row.link }}">report</a>{% else %}—{% endif %}</td>
</tr>
{% endfor %}</tbody>
</table>
{% endfor %}{% if groups %}<h2>All probes: mean of scores (secondary)</h2>
{% endif %}"""


def _report_link(report: Any, out_path: Path | None) -> str | None:
    if isinstance(report, str) and report:
        return os.path.relpath(report, out_path.parent) if out_path is not None else report
    return None


def threat_html(table: pd.DataFrame, env: Environment, *, out_path: Path | None = None) -> str:
    """The threat-model sections of ``table`` as an HTML fragment (user text escaped); empty without them."""
    groups = []
    for name, part in _threat_groups(table):
        rows = [
            {
                "rank": int(r["rank"]), "model": str(r["model"]), "defense": str(r["defense"]) or DASH,
                "robust": format_score(r["robust_accuracy"]), "clean": format_score(r["clean_accuracy"]),
                "robust_8bit": format_score(r["robust_accuracy_8bit"]), "card": [_card_text(r[f]) for f in CARD_FIELDS],
                "mean": format_score(r["mean_score"]), "link": _report_link(r["report"], out_path), "flags": list(r["flags"] or []),
            }  # fmt: skip
            for _, r in part.iterrows()
        ]
        groups.append((name, rows))
    if not groups:
        return ""
    return env.from_string(_THREAT_HTML).render(groups=groups, card_titles=list(CARD_FIELDS.values()), flag_sign=FLAG_SIGN)


def _md_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def to_markdown(table: pd.DataFrame, probes: list[str]) -> str:
    """A GitHub-flavoured Markdown table (cells escaped for ``|``), after the threat-model tables if any."""
    header = ["rank", "model", "defense", "clean accuracy", *probes, "overall", "coverage"]
    lines = [threat_markdown(table)] if _threat_groups(table) else []
    lines += ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [str(r["rank"]), str(r["model"]), str(r["defense"]) or DASH, format_score(r["clean_accuracy"])]
        cells += [_flagged(format_score(r[p]), _cell_flags(r, p)) for p in probes]
        cells += [format_score(r["overall"]), f"{int(r['coverage'])}/{len(probes)}"]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    if any(r.get("flags") for _, r in table.iterrows()):
        lines += ["", f"{FLAG_SIGN} validity flag: the score may not measure robustness (see the audit's report)."]
    return "\n".join(lines) + "\n"


def _flagged(text: str, flags: list[dict[str, str]]) -> str:
    """A Markdown cell: the score, then the flag sign and codes of a flagged cell."""
    return f"{text} {FLAG_SIGN} {', '.join(f['code'] for f in flags)}" if flags else text


def render_leaderboard(table: pd.DataFrame, probes: list[str], *, out_path: Path | None = None, title: str = "robustcheck leaderboard") -> str:
    """One offline HTML file with sortable columns (a small inline script); user text is escaped."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True))
    rows = []
    for _, r in table.iterrows():
        link = _report_link(r["report"], out_path)
        rows.append(
            {
                "rank": int(r["rank"]),
                "model": str(r["model"]),
                "defense": str(r["defense"]) or DASH,
                "cells": [(format_score(r["clean_accuracy"]), r["clean_accuracy"], [])]
                + [(format_score(r[p]), r[p], _cell_flags(r, p)) for p in probes]
                + [(format_score(r["overall"]), r["overall"], [])],
                "coverage": f"{int(r['coverage'])}/{len(probes)}",
                "link": link,
            }
        )
    flagged = any(flags for row in rows for _, _, flags in row["cells"])
    page = env.get_template("leaderboard.html.j2").render(title=title, probes=probes, rows=rows, flagged=flagged, flag_sign=FLAG_SIGN)
    threats = threat_html(table, env, out_path=out_path)
    # the threat-model tables go first, under the page title (the title is escaped text: its "</h1>" is the first)
    return page.replace("</h1>", "</h1>\n" + threats, 1) if threats else page


def write_leaderboard(table: pd.DataFrame, probes: list[str], out: str | Path, *, markdown: bool = False) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = to_markdown(table, probes) if markdown else render_leaderboard(table, probes, out_path=out)
    out.write_text(text, encoding="utf-8")
    return out
