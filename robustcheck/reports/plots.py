"""Small, dependency-free SVG line charts for the HTML report.

The output is an inline ``<svg>`` element meant to be embedded in an HTML5 page (it carries no
``xmlns`` attribute, so the report contains no URL at all). Every piece of text that reaches the
SVG (title, axis labels, series names) is escaped here, which is why the report template may mark
the result of :func:`line_chart` as safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["heat_map", "line_chart", "nice_ticks", "PALETTE"]

#: Series colours (colour-blind friendly ordering of the "tab10" palette).
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
#: Dash patterns, cycled once the palette is exhausted so that series stay distinguishable.
DASHES = ("", "6 3", "2 3", "8 3 2 3")

FONT_SIZE = 11
TITLE_SIZE = 13
CHAR_WIDTH = 6.4  # rough width of one character at FONT_SIZE, for legend layout
LEGEND_ROW = 16
LEGEND_SWATCH = 18
MAX_LEGEND_CHARS = 40
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 28, 30, 42  # right: room for "16/255"
MIN_PLOT_HEIGHT = 60


Point = tuple[float, float]


@dataclass(frozen=True)
class _Frame:
    """The plot area in pixels and the data ranges it shows."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def px(self, x: float) -> float:
        lo, hi = self.x_range
        return self.left + (x - lo) / (hi - lo) * self.width

    def py(self, y: float) -> float:
        lo, hi = self.y_range
        return self.bottom - (y - lo) / (hi - lo) * self.height


def _esc(text: object) -> str:
    """Escape ``text`` for use in SVG/HTML content and attribute values."""
    return escape(str(text), quote=True)


def _num(value: float) -> str:
    """A compact pixel coordinate."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def format_tick(value: float) -> str:
    """Format a tick value without floating point noise (``0.30000000000000004`` -> ``0.3``)."""
    rounded = round(value, 10)
    if rounded == 0:
        rounded = 0.0  # avoid "-0"
    return f"{rounded:g}"


def _nice_step(span: float, target: int) -> float:
    """A step of the form 1, 2, 2.5 or 5 times a power of ten giving about ``target`` intervals."""
    raw = span / max(target, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if multiple * magnitude >= raw * (1 - 1e-9):
            return multiple * magnitude
    return 10.0 * magnitude  # pragma: no cover - the loop always returns


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (both ends inclusive when they fall on a tick)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [i * step for i in range(first, last + 1)]


def _pad_degenerate(lo: float, hi: float) -> tuple[float, float]:
    """Widen a zero-width range around its value."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.5 if lo != 0 else 0.5
    return lo - pad, hi + pad


def _x_range(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 1.0
    return _pad_degenerate(min(xs), max(xs))


def _y_range(ys: Sequence[float]) -> tuple[float, float]:
    """``[0, 1]`` when every value lies in it, otherwise the data range rounded out to nice ticks."""
    if not ys or all(0.0 <= y <= 1.0 for y in ys):
        return 0.0, 1.0
    lo, hi = _pad_degenerate(min(ys), max(ys))
    step = _nice_step(hi - lo, 5)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _clean(points: Sequence[Point]) -> list[Point]:
    """Finite points sorted by x."""
    cleaned = []
    for x, y in points:
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y):
            cleaned.append((x, y))
    return sorted(cleaned)


def _short(name: str) -> str:
    return name if len(name) <= MAX_LEGEND_CHARS else name[: MAX_LEGEND_CHARS - 1] + "\u2026"


def _legend_layout(names: Sequence[str], width: float) -> list[tuple[float, int]]:
    """``(x offset, row)`` of each legend entry, wrapping within ``width``."""
    layout, x, row = [], 0.0, 0
    for name in names:
        entry = LEGEND_SWATCH + 6 + len(_short(name)) * CHAR_WIDTH + 14
        if x > 0 and x + entry > width:
            x, row = 0.0, row + 1
        layout.append((x, row))
        x += entry
    return layout


def _style(index: int) -> tuple[str, str]:
    """Colour and dash pattern of the ``index``-th series."""
    colour = PALETTE[index % len(PALETTE)]
    dash = DASHES[(index // len(PALETTE)) % len(DASHES)]
    return colour, dash


def _dash_attr(dash: str) -> str:
    return f' stroke-dasharray="{dash}"' if dash else ""


def _grid_and_ticks(
    frame: _Frame, x_ticks: Sequence[float] | None = None, x_format: Callable[[float], str] = format_tick
) -> list[str]:
    """Grid lines, tick marks and tick labels of both axes (``x_ticks``/``x_format``: the x axis's own)."""
    parts = []
    for y in nice_ticks(*frame.y_range):
        py = _num(frame.py(y))
        parts.append(
            f'<line class="grid" x1="{_num(frame.left)}" y1="{py}" x2="{_num(frame.right)}" y2="{py}" stroke="#e3e3e3"/>'
        )
        parts.append(
            f'<text x="{_num(frame.left - 6)}" y="{py}" text-anchor="end" dominant-baseline="middle" '
            f'font-size="{FONT_SIZE}" fill="#444">{_esc(format_tick(y))}</text>'
        )
    lo, hi = frame.x_range
    for x in nice_ticks(lo, hi) if x_ticks is None else [t for t in x_ticks if lo - 1e-12 <= t <= hi + 1e-12]:
        px = _num(frame.px(x))
        parts.append(
            f'<line class="tick" x1="{px}" y1="{_num(frame.bottom)}" x2="{px}" y2="{_num(frame.bottom + 4)}" stroke="#444"/>'
        )
        parts.append(
            f'<text x="{px}" y="{_num(frame.bottom + 16)}" text-anchor="middle" '
            f'font-size="{FONT_SIZE}" fill="#444">{_esc(x_format(x))}</text>'
        )
    return parts


def _axes(frame: _Frame, x_label: str, y_label: str) -> list[str]:
    """Axis lines and axis labels."""
    mid_x, mid_y = _num(frame.left + frame.width / 2), _num(frame.top + frame.height / 2)
    return [
        f'<line x1="{_num(frame.left)}" y1="{_num(frame.bottom)}" x2="{_num(frame.right)}" y2="{_num(frame.bottom)}" stroke="#444"/>',
        f'<line x1="{_num(frame.left)}" y1="{_num(frame.top)}" x2="{_num(frame.left)}" y2="{_num(frame.bottom)}" stroke="#444"/>',
        f'<text class="x-label" x="{mid_x}" y="{_num(frame.bottom + 34)}" text-anchor="middle" '
        f'font-size="{FONT_SIZE}" fill="#222">{_esc(x_label)}</text>',
        f'<text class="y-label" x="14" y="{mid_y}" text-anchor="middle" font-size="{FONT_SIZE}" fill="#222" '
        f'transform="rotate(-90 14 {mid_y})">{_esc(y_label)}</text>',
    ]


def _series(
    frame: _Frame,
    index: int,
    name: str,
    points: Sequence[Point],
    x_format: Callable[[float], str] = format_tick,
) -> str:
    """One ``<g class="series">``: a polyline (two or more points) and a marker per point."""
    colour, dash = _style(index)
    parts = [f'<g class="series" data-series="{index}"><title>{_esc(name)}</title>']
    if len(points) >= 2:
        coords = " ".join(f"{_num(frame.px(x))},{_num(frame.py(y))}" for x, y in points)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"{_dash_attr(dash)}/>'
        )
    for x, y in points:
        parts.append(
            f'<circle cx="{_num(frame.px(x))}" cy="{_num(frame.py(y))}" r="3" fill="{colour}">'
            f"<title>{_esc(name)}: ({_esc(x_format(x))}, {_esc(format_tick(y))})</title></circle>"
        )
    parts.append("</g>")
    return "".join(parts)


def _legend(names: Sequence[str], left: float, top: float, width: float) -> list[str]:
    parts = ['<g class="legend">']
    for index, (name, (dx, row)) in enumerate(zip(names, _legend_layout(names, width), strict=True)):
        colour, dash = _style(index)
        x, y = left + dx, top + row * LEGEND_ROW
        parts.append(
            f'<line x1="{_num(x)}" y1="{_num(y)}" x2="{_num(x + LEGEND_SWATCH)}" y2="{_num(y)}" '
            f'stroke="{colour}" stroke-width="2"{_dash_attr(dash)}/>'
            f'<text x="{_num(x + LEGEND_SWATCH + 6)}" y="{_num(y)}" dominant-baseline="middle" '
            f'font-size="{FONT_SIZE}" fill="#222"><title>{_esc(name)}</title>{_esc(_short(name))}</text>'
        )
    parts.append("</g>")
    return parts


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 480,
    height: int = 300,
    x_format: Callable[[float], str] | None = None,
    x_ticks: Sequence[float] | None = None,
) -> str:
    """Draw ``series`` (name -> ``(x, y)`` points) as an inline SVG line chart.

    Points are sorted by x and non-finite ones dropped; a series with a single point is drawn as
    a marker. The y axis spans ``[0, 1]`` when all values lie in that interval, otherwise the data
    range rounded out to tick values. With no data at all, empty axes and a "no data" note are
    drawn. ``height`` grows when the legend needs more rows than fit. ``x_format`` writes the x
    values (tick labels, point tooltips; e.g. epsilons as ``8/255``) and ``x_ticks`` replaces the
    round x ticks (those inside the x range are drawn).

    Returns:
        An ``<svg>`` element as a string; all text in it is escaped.
    """
    names = [str(name) for name in series]
    cleaned = [_clean(points) for points in series.values()]
    xs = [x for points in cleaned for x, _ in points]
    ys = [y for points in cleaned for _, y in points]

    plot_width = max(width - MARGIN_LEFT - MARGIN_RIGHT, 40)
    legend_rows = (_legend_layout(names, plot_width)[-1][1] + 1) if names else 0
    legend_height = legend_rows * LEGEND_ROW + (6 if legend_rows else 0)
    plot_height = max(height - MARGIN_TOP - MARGIN_BOTTOM - legend_height, MIN_PLOT_HEIGHT)
    total_height = MARGIN_TOP + plot_height + MARGIN_BOTTOM + legend_height
    frame = _Frame(MARGIN_LEFT, MARGIN_TOP, plot_width, plot_height, _x_range(xs), _y_range(ys))

    parts = [
        f'<svg class="chart" width="{width}" height="{total_height}" viewBox="0 0 {width} {total_height}" '
        f'role="img" aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{total_height}" fill="#fff"/>',
        f'<text class="chart-title" x="{_num(width / 2)}" y="18" text-anchor="middle" font-size="{TITLE_SIZE}" '
        f'font-weight="600" fill="#222">{_esc(title)}</text>',
    ]
    x_format = x_format or format_tick
    parts += _grid_and_ticks(frame, x_ticks, x_format)
    parts += _axes(frame, x_label, y_label)
    if not xs:
        parts.append(
            f'<text class="no-data" x="{_num(frame.left + frame.width / 2)}" y="{_num(frame.top + frame.height / 2)}" '
            f'text-anchor="middle" font-size="{FONT_SIZE}" fill="#777">no data</text>'
        )
    parts += [
        _series(frame, i, name, points, x_format)
        for i, (name, points) in enumerate(zip(names, cleaned, strict=True))
        if points
    ]
    if names:
        parts += _legend(names, frame.left, frame.bottom + MARGIN_BOTTOM + 4, plot_width)
    parts.append("</svg>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- heat maps

#: Colour stops of :func:`heat_map` from the low to the high end of its range (viridis, colour-blind safe).
HEAT_STOPS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
HEAT_CELL_WIDTH, HEAT_CELL_HEIGHT = 52, 22
HEAT_LEGEND_WIDTH = 160


def _heat_colour(value: float, low: float, high: float) -> str:
    """The colour of ``value`` on :data:`HEAT_STOPS` between ``low`` and ``high`` (clipped)."""
    t = 0.0 if high <= low else min(max((value - low) / (high - low), 0.0), 1.0)
    position = t * (len(HEAT_STOPS) - 1)
    i = min(int(position), len(HEAT_STOPS) - 2)
    frac = position - i
    a, b = HEAT_STOPS[i], HEAT_STOPS[i + 1]
    channels = [round(int(a[k : k + 2], 16) * (1 - frac) + int(b[k : k + 2], 16) * frac) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in channels)


def _text_colour(fill: str) -> str:
    """Black or white, whichever reads better on ``fill``."""
    r, g, b = (int(fill[k : k + 2], 16) for k in (1, 3, 5))
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def heat_map(
    rows: Mapping[str, Mapping[str, float | None]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    value_label: str = "value",
    value_range: tuple[float, float] = (0.0, 1.0),
) -> str:
    """Draw a table of numbers (row name -> column name -> value) as an inline SVG heat map.

    Columns are the union of the rows' keys in first-seen order (numerically sorted when every key is a
    number, e.g. severities). Each cell is coloured on a viridis scale over ``value_range`` and carries its
    value as text and tooltip; missing or non-finite values are drawn as empty grey cells. A colour bar
    names ``value_label``. All text is escaped, like :func:`line_chart`'s.
    """
    columns: list[str] = []
    for values in rows.values():
        columns += [str(k) for k in values if str(k) not in columns]
    try:
        columns.sort(key=float)
    except ValueError:
        pass
    names = [str(n) for n in rows]
    low, high = value_range
    label_width = max([len(_short(n)) for n in names] + [len(y_label)]) * CHAR_WIDTH + 16
    left, top = label_width, MARGIN_TOP + 30  # room for the title, the x label and the column names
    width = int(left + max(len(columns), 1) * HEAT_CELL_WIDTH + MARGIN_RIGHT)
    width = max(width, int(left + HEAT_LEGEND_WIDTH + MARGIN_RIGHT))
    width = max(width, int(len(title) * TITLE_SIZE * 0.6 + 16))  # the title is never clipped
    grid_bottom = top + len(names) * HEAT_CELL_HEIGHT
    height = int(grid_bottom + 64)
    parts = [
        f'<svg class="chart heat-map" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text class="chart-title" x="{_num(width / 2)}" y="18" text-anchor="middle" font-size="{TITLE_SIZE}" '
        f'font-weight="600" fill="#222">{_esc(title)}</text>',
        f'<text class="x-label" x="{_num(left + len(columns) * HEAT_CELL_WIDTH / 2)}" y="{_num(top - 22)}" '
        f'text-anchor="middle" font-size="{FONT_SIZE}" fill="#222">{_esc(x_label)}</text>',
        f'<text class="y-label" x="8" y="{_num(top - 6)}" font-size="{FONT_SIZE}" fill="#222">{_esc(y_label)}</text>',
    ]
    for j, column in enumerate(columns):
        parts.append(
            f'<text x="{_num(left + (j + 0.5) * HEAT_CELL_WIDTH)}" y="{_num(top - 6)}" text-anchor="middle" '
            f'font-size="{FONT_SIZE}" fill="#444">{_esc(column)}</text>'
        )
    for i, (name, values) in enumerate(zip(names, rows.values(), strict=True)):
        y = top + i * HEAT_CELL_HEIGHT
        parts.append(
            f'<text x="{_num(left - 6)}" y="{_num(y + HEAT_CELL_HEIGHT / 2)}" text-anchor="end" dominant-baseline="middle" '
            f'font-size="{FONT_SIZE}" fill="#222"><title>{_esc(name)}</title>{_esc(_short(name))}</text>'
        )
        by_column = {str(k): v for k, v in values.items()}
        for j, column in enumerate(columns):
            x = left + j * HEAT_CELL_WIDTH
            value = by_column.get(column)
            number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
            known = math.isfinite(number)
            fill = _heat_colour(number, low, high) if known else "#eeeeee"
            text = format_tick(round(number, 2)) if known else ""
            parts.append(
                f'<g class="cell"><title>{_esc(name)}, {_esc(x_label)} {_esc(column)}: {_esc(text or "no value")}</title>'
                f'<rect x="{_num(x)}" y="{_num(y)}" width="{HEAT_CELL_WIDTH - 1}" height="{HEAT_CELL_HEIGHT - 1}" fill="{fill}"/>'
                + (
                    f'<text x="{_num(x + HEAT_CELL_WIDTH / 2)}" y="{_num(y + HEAT_CELL_HEIGHT / 2)}" text-anchor="middle" '
                    f'dominant-baseline="middle" font-size="{FONT_SIZE}" fill="{_text_colour(fill)}">{_esc(text)}</text>'
                    if known
                    else ""
                )
                + "</g>"
            )
    bar_top = grid_bottom + 18
    steps = 20
    for k in range(steps):
        value = low + (high - low) * (k + 0.5) / steps
        parts.append(
            f'<rect x="{_num(left + k * HEAT_LEGEND_WIDTH / steps)}" y="{_num(bar_top)}" '
            f'width="{_num(HEAT_LEGEND_WIDTH / steps + 0.5)}" height="10" fill="{_heat_colour(value, low, high)}"/>'
        )
    parts += [
        f'<text x="{_num(left)}" y="{_num(bar_top + 24)}" font-size="{FONT_SIZE}" fill="#444">{_esc(format_tick(low))}</text>',
        f'<text x="{_num(left + HEAT_LEGEND_WIDTH)}" y="{_num(bar_top + 24)}" text-anchor="end" font-size="{FONT_SIZE}" '
        f'fill="#444">{_esc(format_tick(high))}</text>',
        f'<text x="{_num(left + HEAT_LEGEND_WIDTH / 2)}" y="{_num(bar_top + 24)}" text-anchor="middle" '
        f'font-size="{FONT_SIZE}" fill="#222">{_esc(value_label)}</text>',
        "</svg>",
    ]
    return "\n".join(parts)
