"""The self-contained, offline HTML audit report.

:func:`render_report` turns the content of ``results.json`` (plus optional example images) into one
HTML file: inline CSS, inline SVG charts (:mod:`robustcheck.reports.plots`) and images embedded as
``data:`` URIs, with no script and no external resource. The page is rendered by Jinja2 with
autoescaping on, so every user-controlled string (model names, parameters, captions, messages) is
escaped; only the SVG produced by our own plotting code is inserted verbatim.

This module does not import torch: artifacts are used through their ``title``, ``captions`` and
``png_images()`` only.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from robustcheck.reports.formatting import (
    DASH,
    as_255ths,
    format_epsilon,
    format_score,
    format_value,
    is_number,
)
from robustcheck.reports.plots import heat_map, line_chart

if TYPE_CHECKING:
    from robustcheck.api import Artifact

__all__ = ["render_report", "write_report"]

TEMPLATES = Path(__file__).parent / "templates"
#: Images are scaled up by an integer factor until their longer side reaches this many pixels.
MIN_IMAGE_DISPLAY = 96
MAX_IMAGE_DISPLAY = 256
NOTE_CHARS = 48  # error messages longer than this are cut in summary cells
SCALE_STEPS = 10  # neutral colour scale buckets (scale-0 ... scale-10)

RowKey = tuple[str, str | None]


# --------------------------------------------------------------------------- view model


@dataclass
class FlagView:
    """A validity flag of a run (``run["flags"]`` in results.json): its code and one-line message."""

    code: str
    message: str


@dataclass
class Cell:
    """One summary-table cell: the text shown, its CSS class, an optional note and tooltip, and the
    validity flags of the run(s) it shows (marked next to the score)."""

    text: str
    css: str
    note: str = ""
    tooltip: str = ""
    flags: list[FlagView] = field(default_factory=list)


@dataclass
class SummaryRow:
    model: str
    defense: str
    clean_accuracy: str
    cells: list[Cell]


@dataclass
class RunRow:
    """One row of a probe section's run table."""

    model: str
    defense: str
    data: str
    params: list[tuple[str, str]]
    samples: str
    score: Cell
    threshold: str
    status: str
    message: str
    seconds: str
    metrics: list[str]
    test: str = ""  # the pytest test that ran it (session reports)


@dataclass
class Image:
    uri: str
    caption: str
    width: int | None
    height: int | None


@dataclass
class Figure:
    title: str
    run_label: str
    images: list[Image]


@dataclass
class ExampleGroup:
    """The example figures of one run, shown as one collapsible ``<details>`` (``open``: unfolded)."""

    run_label: str
    figures: list[Figure]
    open: bool = False

    @property
    def summary(self) -> str:
        n = len(self.figures)
        return f"{n} example{'s' if n != 1 else ''}"


@dataclass
class CurvePoints:
    """A curve whose runs each have a single point, shown as numbers instead of a plot."""

    title: str
    x_label: str
    y_label: str
    rows: list[tuple[str, str, str]]  # (run label, x, y)


@dataclass
class TableView:
    """A probe's table (``ProbeResult.tables``) ready to render: every cell already a string."""

    title: str
    run_label: str
    note: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class TableGroup:
    """The tables of one title across a probe's runs, shown side by side; notes said once."""

    title: str
    notes: list[str]
    tables: list[TableView]


@dataclass
class DefenseRow:
    """One line of the defense evaluation: a (model, defense, attack, epsilon) with both threat models."""

    model: str
    defense: str
    probe: str
    epsilon: str
    undefended: str
    clean: str
    non_adaptive: str
    adaptive: str


@dataclass
class ProbeSection:
    anchor: str
    name: str
    score_doc: str
    metric_names: list[str]
    runs: list[RunRow]
    show_tests: bool = False  # a pytest session's report: a column names each run's test
    charts: list[Markup] = field(default_factory=list)
    #: single-point curves, as numbers
    points: list[CurvePoints] = field(default_factory=list)
    tables: list[TableGroup] = field(default_factory=list)
    examples: list[ExampleGroup] = field(default_factory=list)
    #: (run label, flag) for every flagged run of the section, explained below its run table
    flags: list[tuple[str, FlagView]] = field(default_factory=list)


# --------------------------------------------------------------------------- formatting helpers


def _format_seconds(value: Any) -> str:
    return f"{float(value):.1f} s" if is_number(value) else DASH


def _defense_label(defense: Any) -> str:
    return str(defense) if defense else DASH


def _run_label(run: Mapping[str, Any]) -> str:
    model, defense = str(run.get("model", "?")), run.get("defense")
    return f"{model} + {defense}" if defense else model


def _row_key(run: Mapping[str, Any]) -> RowKey:
    defense = run.get("defense")
    return str(run.get("model", "?")), (str(defense) if defense else None)


def _unique(values: Iterable[Any]) -> list[Any]:
    """Values in first-seen order, without duplicates."""
    return list(dict.fromkeys(values))


def _score_css(score: Any, status: str, fail_under: float | None) -> str:
    """CSS class of a score: by status, then pass/fail against the threshold, else a neutral scale."""
    if status in ("timeout", "error"):
        return status
    if not is_number(score) or not math.isfinite(score):
        return "missing"
    if fail_under is not None:
        return "pass" if score >= fail_under else "fail"
    bucket = round(min(max(float(score), 0.0), 1.0) * SCALE_STEPS)
    return f"scale-{bucket}"


def run_threshold(run: Mapping[str, Any], fail_under: float | None = None) -> float | None:
    """The score ``run`` must reach: its own ``threshold`` (results.json, per probe), else ``fail_under``."""
    threshold = run.get("threshold")
    return float(threshold) if is_number(threshold) else fail_under


def _score_cell(run: Mapping[str, Any], fail_under: float | None, *, notes: bool = True) -> Cell:
    """The score cell of one run; with ``notes``, the status (and error message) is added as small text.

    The full message is always available as the cell's tooltip.
    """
    status = str(run.get("status", "ok"))
    css = _score_css(run.get("score"), status, run_threshold(run, fail_under))
    message = str(run.get("message") or "")
    text = "error" if status == "error" else format_score(run.get("score"))
    note = ""
    if notes and status == "error":
        note = _truncate(message, NOTE_CHARS)
    elif notes and status != "ok":
        note = status
    return Cell(text, css, note=note, tooltip=message, flags=run_flags(run))


def run_flags(run: Mapping[str, Any]) -> list[FlagView]:
    """The validity flags of a results.json run (``[]`` for runs written before flags existed)."""
    flags = run.get("flags") or []
    return [FlagView(str(f.get("code", "?")), str(f.get("message") or "")) for f in flags if isinstance(f, Mapping)]


def _unique_flags(runs: Iterable[Mapping[str, Any]]) -> list[FlagView]:
    """The flags of ``runs``, one per code (the first run's message)."""
    seen: dict[str, FlagView] = {}
    for run in runs:
        for flag in run_flags(run):
            seen.setdefault(flag.code, flag)
    return list(seen.values())


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# --------------------------------------------------------------------------- summary table


def _pick_run(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The run shown for a summary cell: the lowest score among scored runs, else the first run."""
    scored = [r for r in runs if is_number(r.get("score")) and math.isfinite(r["score"])]
    return min(scored, key=lambda r: r["score"]) if scored else runs[0]


def _summary_cell(runs: Sequence[Mapping[str, Any]], fail_under: float | None) -> Cell:
    if not runs:
        return Cell(DASH, "missing")
    cell = _score_cell(_pick_run(runs), fail_under)
    cell.flags = _unique_flags(runs)  # every run of the cell: a flag on any of them casts doubt on the cell
    if len(runs) > 1:
        cell.note = (cell.note + " " if cell.note else "") + f"min of {len(runs)} runs"
    return cell


def _clean_accuracy(runs: Iterable[Mapping[str, Any]]) -> str:
    """The clean accuracy of a (model, defense) row; a range if runs disagree (e.g. other data)."""
    values = [float(v) for r in runs if is_number(v := (r.get("metrics") or {}).get("clean_accuracy"))]
    if not values:
        return DASH
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if hi - lo < 5e-4 else f"{lo:.3f}\u2013{hi:.3f}"


def build_summary(
    runs: Sequence[Mapping[str, Any]], probes: Sequence[str], fail_under: float | None
) -> list[SummaryRow]:
    """One row per (model, defense), one cell per probe."""
    rows = []
    for key in _unique(_row_key(r) for r in runs):
        row_runs = [r for r in runs if _row_key(r) == key]
        cells = [_summary_cell([r for r in row_runs if r.get("probe") == p], fail_under) for p in probes]
        rows.append(SummaryRow(key[0], _defense_label(key[1]), _clean_accuracy(row_runs), cells))
    return rows


# --------------------------------------------------------------------------- probe sections


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics shown as table columns: numbers, strings and booleans."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}


def as_curve(value: Any) -> list[tuple[float, float]] | None:
    """``[(x, y), ...]`` if ``value`` maps numeric strings to numbers (e.g. accuracy per epsilon)."""
    if not isinstance(value, Mapping) or not value:
        return None
    points = []
    for key, y in value.items():
        try:
            x = float(key)
        except (TypeError, ValueError):
            return None
        if not is_number(y):
            return None
        points.append((x, float(y)))
    return sorted(points)


def as_grid(value: Any) -> dict[str, dict[str, float | None]] | None:
    """``value`` if it maps names to curves (e.g. accuracy per corruption and severity), else ``None``."""
    if not isinstance(value, Mapping) or not value:
        return None
    rows = {}
    for name, row in value.items():
        if not isinstance(row, Mapping) or not row:
            return None
        cells = {str(k): v for k, v in row.items() if v is not None}
        if as_curve(cells) is None and cells:
            return None
        rows[str(name)] = dict(row)
    return rows


#: Axis names of the grid-shaped metrics of the built-in probes (columns, rows), by the metric's name.
GRID_LABELS = {"corruption_accuracy": ("severity", "corruption")}


def is_epsilon_name(name: str) -> bool:
    """Whether a parameter, metric or column named ``name`` holds epsilons (``eps``, ``epsilons``,
    ``median_min_epsilon``, ``smallest breaking epsilon``...)."""
    name = str(name).lower()
    return name.startswith("eps") or "epsilon" in name


def _format_named(name: str, value: Any) -> str:
    """``value`` formatted for display, as an epsilon when ``name`` says it is one."""
    return format_epsilon(value) if is_epsilon_name(name) and value is not None else format_value(value)


#: ``eps 0.0313725:`` in a probe's image caption (the number is rewritten as ``8/255``).
_CAPTION_EPSILON = re.compile(r"(?<![\w.])(eps(?:ilon)?[ =])(\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w.])")


def _caption(text: str) -> str:
    return _CAPTION_EPSILON.sub(lambda m: m.group(1) + format_epsilon(m.group(2)), text)


def _run_row(run: Mapping[str, Any], metric_names: Sequence[str], fail_under: float | None) -> RunRow:
    metrics = run.get("metrics") or {}
    params = run.get("params") or {}
    return RunRow(
        model=str(run.get("model", "?")),
        defense=_defense_label(run.get("defense")),
        data=str(run.get("data") or DASH),
        params=[(str(k), _format_named(str(k), v)) for k, v in params.items()],
        samples=format_value(run.get("samples")),
        score=_score_cell(run, fail_under, notes=False),  # the status column says it
        threshold=DASH if (threshold := run_threshold(run, fail_under)) is None else f"\u2265 {threshold:.3f}",
        test=str(run.get("test") or ""),
        status=str(run.get("status", "ok")),
        message=str(run.get("message") or ""),
        seconds=_format_seconds(run.get("seconds")),
        metrics=[_format_named(name, metrics.get(name)) for name in metric_names],
    )


def _series_labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Legend labels "model + defense", made unique with the run id when needed."""
    labels = [_run_label(r) for r in runs]
    return [
        f"{label} ({str(r.get('run_id', i))[:8]})" if labels.count(label) > 1 else label
        for i, (label, r) in enumerate(zip(labels, runs, strict=True))
    ]


def _metric_title(name: str) -> str:
    return name.replace("_", " ")


#: The x quantity of the curve-shaped metrics of the built-in probes, by the metric's last name part.
X_LABELS = {
    "robust_accuracy": "epsilon",
    "consistency_by_shift": "shift (px)",
    "tradeoff/fooling_rate": "crop window K (px)",
    "tradeoff/accuracy": "crop window K (px)",
}
EPSILON_TICK_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 255)  # in 1/255: ticks at 0, 4/255, 8/255, ...


def _x_label(metric: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """The x quantity of a curve, named after its parameter: a known metric's axis (``epsilon``,
    ``shift (px)``), ``<y>_by_<x>``'s ``x``, a list parameter of the runs whose values are the
    curve's keys, else ``epsilon`` when the runs have an epsilon parameter; ``parameter`` last."""
    for key in (metric, metric.rsplit("/", 1)[-1]):
        if key in X_LABELS:
            return X_LABELS[key]
    tail = metric.rsplit("/", 1)[-1]
    if "_by_" in tail:
        return _metric_title(tail.split("_by_", 1)[1])
    keys = {x for r in runs for x, _ in as_curve((r.get("metrics") or {}).get(metric)) or []}
    for r in runs:
        for name, value in (r.get("params") or {}).items():
            if isinstance(value, list) and value and all(is_number(v) for v in value) and keys <= {float(v) for v in value}:
                return "epsilon" if is_epsilon_name(name) else _metric_title(str(name))
    if any(is_epsilon_name(k) for r in runs for k in (r.get("params") or {})):
        return "epsilon"
    return "parameter"


def _epsilon_ticks(xs: Sequence[float]) -> list[float] | None:
    """Ticks at round multiples of 1/255 when every x is one (Linf epsilons), else ``None``."""
    steps = [as_255ths(x) for x in xs]
    if not xs or any(k is None for k in steps) or all(float(x).is_integer() for x in xs):
        return None
    lo, hi = min(steps), max(steps)  # type: ignore[type-var]
    if hi <= lo:
        return None
    step = next((s for s in EPSILON_TICK_STEPS if (hi - lo) / s <= 6), 255)
    return [k / 255 for k in range(math.ceil(lo / step) * step, hi + 1, step)]


def build_charts(probe: str, runs: Sequence[Mapping[str, Any]]) -> tuple[list[Markup], list[CurvePoints]]:
    """One SVG line chart per curve-shaped metric, one series per run carrying it; a metric whose
    curves all have a single point (e.g. one shift size) is given as numbers instead of a plot.
    Epsilon axes write their values as ``k/255`` where they are."""
    labels = _series_labels(runs)
    curve_names = _unique(
        name for r in runs for name, value in (r.get("metrics") or {}).items() if as_curve(value) is not None
    )
    charts, points = [], []
    for name in curve_names:
        series = {
            label: curve
            for label, r in zip(labels, runs, strict=True)
            if (curve := as_curve((r.get("metrics") or {}).get(name))) is not None
        }
        x_label = _x_label(name, runs)
        x_format = format_epsilon if x_label == "epsilon" else None
        title = f"{probe}: {_metric_title(name)}"
        if all(len(curve) <= 1 for curve in series.values()):
            fmt = x_format or format_value
            rows = [(label, fmt(x), format_value(y)) for label, curve in series.items() for x, y in curve]
            points.append(CurvePoints(title, x_label, _metric_title(name), rows))
            continue
        xs = [x for curve in series.values() for x, _ in curve]
        svg = line_chart(
            series,
            title=title,
            x_label=x_label,
            y_label=_metric_title(name),
            x_format=x_format,
            x_ticks=_epsilon_ticks(xs) if x_format else None,
        )
        charts.append(Markup(svg))  # our own plotting code escapes every string it embeds
    grid_names = _unique(
        name for r in runs for name, value in (r.get("metrics") or {}).items() if as_grid(value) is not None
    )
    for name in grid_names:  # one heat map per run: grids do not overlay
        x_label, y_label = GRID_LABELS.get(name, ("column", "row"))
        for label, r in zip(labels, runs, strict=True):
            grid = as_grid((r.get("metrics") or {}).get(name))
            if grid is not None:
                title = f"{probe}: {_metric_title(name)} ({label})"
                svg = heat_map(grid, title=title, x_label=x_label, y_label=y_label, value_label=_metric_title(name))
                charts.append(Markup(svg))  # escaped by the plotting code, like the line charts
    return charts, points


def png_size(png: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header, or ``None`` if ``png`` is not a PNG."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", png[16:24])


def _display_size(png: bytes) -> tuple[int | None, int | None]:
    """Display size: small images (e.g. 8x8) are scaled up by an integer factor so they stay crisp."""
    size = png_size(png)
    if size is None or min(size) <= 0:
        return None, None
    width, height = size
    longest = max(width, height)
    if longest > MAX_IMAGE_DISPLAY:
        return max(1, MAX_IMAGE_DISPLAY * width // longest), max(1, MAX_IMAGE_DISPLAY * height // longest)
    factor = max(1, math.ceil(MIN_IMAGE_DISPLAY / longest))
    return width * factor, height * factor


def _image(png: bytes, caption: str) -> Image:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    width, height = _display_size(png)
    return Image(uri, _caption(caption), width, height)


def build_figure(artifact: Artifact, run_label: str) -> Figure:
    """A figure row: the artifact's images as data URIs, with their captions."""
    pngs = artifact.png_images()
    captions = list(artifact.captions or [])[: len(pngs)]
    images = [_image(png, str(caption or "")) for png, caption in zip_longest(pngs, captions, fillvalue="")]
    return Figure(str(artifact.title), run_label, images)


def build_examples(
    runs: Sequence[Mapping[str, Any]], artifacts: Mapping[str, Sequence[Artifact]]
) -> list[ExampleGroup]:
    """One collapsible group of example figures per run that has any, folded: the runs of a probe
    tend to show near-identical examples, and unfolded they made most of the page's height."""
    groups = []
    for label, r in zip(_series_labels(runs), runs, strict=True):
        figures = [build_figure(a, _run_label(r)) for a in artifacts.get(str(r.get("run_id")), ())]
        if figures:
            groups.append(ExampleGroup(label, figures))
    return groups


def build_tables(runs: Sequence[Mapping[str, Any]]) -> list[TableView]:
    """The runs' own tables (``run["tables"]`` in results.json), cells formatted for display
    (epsilon columns as ``k/255``)."""
    views = []
    for r in runs:
        for table in r.get("tables") or []:
            columns = [str(c) for c in table.get("columns") or []]
            views.append(
                TableView(
                    title=str(table.get("title", "")),
                    run_label=_run_label(r),
                    note=str(table.get("note") or ""),
                    columns=columns,
                    rows=[
                        [_format_named(c, v) for c, v in zip_longest(columns, row, fillvalue="")][: len(row)]
                        for row in table.get("rows") or []
                    ],
                )
            )
    return views


def group_tables(tables: Sequence[TableView]) -> list[TableGroup]:
    """Tables of the same title (one per run) together, in first-seen order, each note said once."""
    groups: dict[str, TableGroup] = {}
    for table in tables:
        group = groups.setdefault(table.title, TableGroup(table.title, [], []))
        group.tables.append(table)
        if table.note and table.note not in group.notes:
            group.notes.append(table.note)
    return list(groups.values())


def build_section(
    index: int,
    probe: str,
    runs: Sequence[Mapping[str, Any]],
    artifacts: Mapping[str, Sequence[Artifact]],
    fail_under: float | None,
) -> ProbeSection:
    """Everything shown for one probe: definition, run table, charts and example images."""
    metric_names = _unique(k for r in runs for k in _scalar_metrics(r.get("metrics") or {}))
    score_doc = next((str(r["score_doc"]) for r in runs if r.get("score_doc")), "")
    charts, points = build_charts(probe, runs)
    return ProbeSection(
        anchor=f"probe-{index}",
        name=probe,
        score_doc=score_doc,
        metric_names=[_metric_title(m) for m in metric_names],
        runs=[_run_row(r, metric_names, fail_under) for r in runs],
        show_tests=any(r.get("test") for r in runs),
        charts=charts,
        points=points,
        tables=group_tables(build_tables(runs)),
        examples=build_examples(runs, artifacts),
        flags=[(label, flag) for label, r in zip(_series_labels(runs), runs, strict=True) for flag in run_flags(r)],
    )


def _orphan_figures(
    runs: Sequence[Mapping[str, Any]], artifacts: Mapping[str, Sequence[Artifact]]
) -> list[Figure]:
    """Artifacts whose run id matches no run (still shown, at the end)."""
    known = {str(r.get("run_id")) for r in runs}
    return [
        build_figure(a, f"run {run_id}")
        for run_id, items in artifacts.items()
        if run_id not in known
        for a in items
    ]


# --------------------------------------------------------------------------- defense evaluation


def _attack_key(run: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """What makes two runs the same attack: model, probe, data and params other than ``adaptive``."""
    params = {k: v for k, v in (run.get("params") or {}).items() if k != "adaptive"}
    return str(run.get("model")), str(run.get("probe")), str(run.get("data")), json.dumps(params, sort_keys=True, default=str)


def _accuracy_at(run: Mapping[str, Any] | None, eps: str) -> str:
    if run is None:
        return "not run"
    value = ((run.get("metrics") or {}).get("robust_accuracy") or {}).get(eps)
    return format_score(value) if run.get("status", "ok") == "ok" else f"{format_score(value)} ({run.get('status')})"


def build_defense_rows(runs: Sequence[Mapping[str, Any]]) -> list[DefenseRow]:
    """Robust accuracy of every defended attack run: non-adaptive and adaptive side by side.

    A defended run's ``metrics["adaptive"]`` says whether it attacked through the defense. Rows pair the
    two threat models of the same (model, defense, attack, params) and add the undefended model's
    accuracy under the same attack; a missing adaptive run is shown as "not run", so non-adaptive
    numbers never appear alone.
    """
    attacked = [r for r in runs if isinstance((r.get("metrics") or {}).get("robust_accuracy"), Mapping)]
    bare = {_attack_key(r): r for r in attacked if not r.get("defense")}
    groups: dict[tuple[Any, ...], dict[bool, Mapping[str, Any]]] = {}
    for r in attacked:
        adaptive = (r.get("metrics") or {}).get("adaptive")
        if r.get("defense") and isinstance(adaptive, bool):
            groups.setdefault((*_attack_key(r), str(r["defense"])), {})[adaptive] = r
    rows = []
    for key, pair in groups.items():
        if False not in pair:  # adaptive-only runs are already honest; the table is for the comparison
            continue
        reference = pair[False]
        clean = (reference.get("metrics") or {}).get("clean_accuracy")
        epsilons = sorted(reference["metrics"]["robust_accuracy"], key=float)
        for eps in epsilons:
            if float(eps) == 0.0:
                continue
            rows.append(
                DefenseRow(
                    model=key[0], defense=key[4], probe=key[1], epsilon=format_epsilon(eps),
                    undefended=_accuracy_at(bare.get(key[:4]), eps), clean=format_score(clean),
                    non_adaptive=_accuracy_at(pair[False], eps), adaptive=_accuracy_at(pair.get(True), eps),
                )
            )  # fmt: skip
    return rows


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@dataclass
class Verdict:
    """The banner at the top of the report: one word and its CSS class, then the counts behind it."""

    head: str
    css: str
    lines: list[str]
    n_flagged: int
    flagged: list[str]


#: How many runs the banner names per category before "and N more".
VERDICT_NAMES = 3


def _run_name(run: Mapping[str, Any]) -> str:
    """``pgd-linf on digits-cnn + bit-depth``."""
    return f"{run.get('probe', '?')} on {_run_label(run)}"


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:VERDICT_NAMES])
    return shown + (f", and {len(items) - VERDICT_NAMES} more" if len(items) > VERDICT_NAMES else "")


def build_verdict(runs: Sequence[Mapping[str, Any]], fail_under: float | None) -> Verdict:
    """The audit's verdict, as the CLI states it: runs that raised (error), a score under the threshold
    (FAIL; a score is judged whatever the run's status, as the CLI's exit code 1), runs that timed out
    (inconclusive), else PASS, or "no threshold" when ``fail_under`` is ``None``. The count of runs
    with validity flags is given beside it."""
    n = len(runs)
    errors = [_run_name(r) for r in runs if r.get("status") == "error"]
    timeouts = [_run_name(r) for r in runs if r.get("status") == "timeout"]
    scored = [r for r in runs if is_number(r.get("score")) and math.isfinite(r["score"])]
    judged = [(r, t) for r in scored if (t := run_threshold(r, fail_under)) is not None]
    under = [(r, t) for r, t in judged if r["score"] < t]
    thresholds = _unique(t for r in runs if (t := run_threshold(r, fail_under)) is not None)
    lines = []
    if thresholds:
        passed = len(judged) - len(under)
        if len(thresholds) == 1 and len(judged) == len(scored):
            rule = f"a score \u2265 {thresholds[0]:.3f} passes"
        else:  # per-probe thresholds: name each
            per_probe = _unique(f"{r.get('probe', '?')} \u2265 {t:.3f}" for r, t in judged)
            rule = "per probe: " + ", ".join(per_probe)
        lines.append(f"Pass threshold: {rule}; {passed} of {n} runs pass.")
    else:
        lines.append(f"{n} run{'s' if n != 1 else ''}; no threshold set (--fail-under): scores are shaded from 0 to 1.")
    if under:
        shown = [f"{_run_name(r)}: {format_score(r['score'])} < {t:.3f}" for r, t in sorted(under, key=lambda rt: rt[0]["score"])]
        lines.append(f"{len(under)} of {n} runs under their threshold ({_names(shown)}).")
    if errors:
        lines.append(f"{len(errors)} of {n} runs raised ({_names(errors)}).")
    if timeouts:
        lines.append(f"{len(timeouts)} of {n} runs timed out: their scores cover what finished ({_names(timeouts)}).")
    if errors:
        head, css = "error", "error"
    elif under:
        head, css = "FAIL", "fail"
    elif timeouts:
        head, css = "inconclusive", "timeout"
    elif not runs:
        head, css = "no runs", "neutral"
    elif not thresholds:
        head, css = "no threshold", "neutral"
    else:
        head, css = "PASS", "pass"
    flagged = [f"{_run_name(r)}: {', '.join(f.code for f in run_flags(r))}" for r in runs if run_flags(r)]
    return Verdict(head, css, lines, len(flagged), [_names(flagged)] if flagged else [])


def build_context(
    results: Mapping[str, Any],
    artifacts: Mapping[str, Sequence[Artifact]] | None,
    fail_under: float | None,
    title: str,
) -> dict[str, Any]:
    """The template context: plain strings and view-model objects, formatting already done."""
    runs: list[Mapping[str, Any]] = list(results.get("runs") or [])
    artifacts = artifacts or {}
    probes = _unique(str(r.get("probe", "?")) for r in runs)
    environment = results.get("environment") or {}
    return {
        "title": title,
        "created": str(results.get("created") or DASH),
        "seed": format_value(results.get("seed")),
        "version": str(results.get("robustcheck_version") or DASH),
        "n_runs": len(runs),
        "n_flagged": sum(1 for r in runs if run_flags(r)),
        "fail_under": None if fail_under is None else f"{fail_under:.3f}",
        "any_threshold": any(run_threshold(r, fail_under) is not None for r in runs),
        "verdict": build_verdict(runs, fail_under),
        "probes": probes,
        "show_clean": any(is_number((r.get("metrics") or {}).get("clean_accuracy")) for r in runs),
        "summary": build_summary(runs, probes, fail_under),
        "defense_rows": build_defense_rows(runs),
        "sections": [
            build_section(i, p, [r for r in runs if str(r.get("probe", "?")) == p], artifacts, fail_under)
            for i, p in enumerate(probes)
        ],
        "orphans": _orphan_figures(runs, artifacts),
        "environment": [(str(k), format_value(v)) for k, v in environment.items()],
        "scale_steps": SCALE_STEPS,
    }


def render_report(
    results: dict,
    artifacts: Mapping[str, Sequence[Artifact]] | None = None,
    *,
    fail_under: float | None = None,
    title: str = "robustcheck audit",
) -> str:
    """Render ``results`` (the content of ``results.json``) as one self-contained HTML page.

    Args:
        results: the results document (``runs`` may be empty).
        artifacts: run id -> example images shown in that run's probe section.
        fail_under: pass threshold; scores ``>= fail_under`` are marked as passing. Without it,
            scores are shaded on a neutral scale.
        title: page title and heading.
    """
    context = build_context(results, artifacts, fail_under, title)
    return _environment().get_template("report.html.j2").render(**context)


def write_report(
    path: str | Path,
    results: dict,
    artifacts: Mapping[str, Sequence[Artifact]] | None = None,
    *,
    fail_under: float | None = None,
    title: str = "robustcheck audit",
) -> Path:
    """Render the report and write it (UTF-8) to ``path``, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(results, artifacts, fail_under=fail_under, title=title), encoding="utf-8")
    return path
