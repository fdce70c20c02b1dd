"""Leaderboards across models, defenses and runs: HTML (one offline file) and Markdown.

One row per model and defended variant; one column per probe (with its parameters when a probe ran
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
import os
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from robustcheck.reports.formatting import DASH, format_score

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


def build_leaderboard(frame: pd.DataFrame, *, all_runs: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Rank the runs in ``frame`` (see :func:`robustcheck.run.history.runs_frame`); return (table, probe columns)."""
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


def _md_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def to_markdown(table: pd.DataFrame, probes: list[str]) -> str:
    """A GitHub-flavoured Markdown table (cells escaped for ``|``)."""
    header = ["rank", "model", "defense", "clean accuracy", *probes, "overall", "coverage"]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
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
        report = r["report"]
        link = None
        if isinstance(report, str) and report:
            link = os.path.relpath(report, out_path.parent) if out_path is not None else report
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
    return env.get_template("leaderboard.html.j2").render(title=title, probes=probes, rows=rows, flagged=flagged, flag_sign=FLAG_SIGN)


def write_leaderboard(table: pd.DataFrame, probes: list[str], out: str | Path, *, markdown: bool = False) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = to_markdown(table, probes) if markdown else render_leaderboard(table, probes, out_path=out)
    out.write_text(text, encoding="utf-8")
    return out
