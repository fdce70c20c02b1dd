"""Tests of the offline HTML report (robustcheck.reports.html) and its SVG charts (reports.plots)."""

from __future__ import annotations

import base64
import copy
import html as html_module
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustcheck.api import Artifact
from robustcheck.reports.formatting import format_epsilon
from robustcheck.reports.html import as_curve, png_size, render_report, write_report
from robustcheck.reports.plots import line_chart, nice_ticks

XSS = "<script>alert(1)</script>"
DOC_PGD = "Fraction of samples still classified correctly under the strongest epsilon, averaged."
DOC_FGSM = "Area under the robust accuracy curve, normalised to [0, 1]."


def _run(run_id: str, model: str, defense: str | None, probe: str, score: float | None, **extra: Any) -> dict:
    robust = extra.pop("robust", {"0.0": 0.97, "0.01": 0.9, "0.05": 0.3})
    run = {
        "run_id": run_id,
        "model": model,
        "defense": defense,
        "probe": probe,
        "params": {"epsilons": [0.0, 0.01, 0.05], "steps": 10},
        "data": "digits-rgb32",
        "samples": 100,
        "score": score,
        "metrics": {"clean_accuracy": 0.97, "robust_accuracy": robust, "auc": score, "attack": "linf"},
        "status": "ok",
        "message": "",
        "seconds": 3.2,
        "seed": 0,
        "score_doc": DOC_PGD if probe == "pgd-linf" else DOC_FGSM,
    }
    run.update(extra)
    return run


@pytest.fixture
def results() -> dict:
    """Two models (one also with a defense), two probes, one timeout, one error, one missing cell."""
    return {
        "robustcheck_version": "0.1.0",
        "created": "2026-11-25T12:00:00+00:00",
        "seed": 0,
        "environment": {
            "python": "3.11.7",
            "torch": "2.3.0",
            "foolbox": "3.3.4",
            "z3": "4.12",
            "platform": "linux",
            "device": "cpu",
        },
        "runs": [
            _run("r1", "digits-cnn", None, "pgd-linf", 0.42),
            _run("r2", "digits-cnn", None, "fgsm", 0.61),
            _run(
                "r3",
                "digits-cnn",
                "bit-depth",
                "pgd-linf",
                0.55,
                status="timeout",
                message="time budget spent",
            ),
            _run(
                "r4",
                "digits-cnn",
                "bit-depth",
                "fgsm",
                None,
                status="error",
                message="gradients are none",
                metrics={},
            ),
            _run(
                "r5",
                "digits-mlp",
                None,
                "pgd-linf",
                0.2,
                metrics={"clean_accuracy": 0.93, "robust_accuracy": {"0.0": 0.93, "0.05": 0.1}},
            ),
            # digits-mlp has no fgsm run: a missing cell.
        ],
    }


@pytest.fixture
def artifacts() -> dict[str, list[Artifact]]:
    rng = np.random.default_rng(0)
    clean, adversarial = rng.random((3, 8, 8)), rng.random((1, 8, 8))
    return {
        "r1": [
            Artifact(
                "clean vs adversarial", [clean, adversarial], ["clean: 3 (0.98)", "adversarial: 8 (0.71)"]
            )
        ],
        "r5": [Artifact("worst case", [rng.random((3, 32, 32))], ["label 1"])],
    }


class _TableParser(HTMLParser):
    """Collects the rows of the first ``<table class="summary">`` as (class, text) cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._cell_class = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and "summary" in (attributes.get("class") or "").split():
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell, self._cell_class = [], attributes.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif self._in_table and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell_class, " ".join("".join(self._cell).split())))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def summary_rows(html: str) -> list[list[tuple[str, str]]]:
    parser = _TableParser()
    parser.feed(html)
    return parser.rows


def _svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


# --------------------------------------------------------------------------- report


def test_self_contained(results: dict, artifacts: dict) -> None:
    html = render_report(results, artifacts, fail_under=0.5)
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert html.count("<html") == 1 and html.rstrip().endswith("</html>")
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    assert "<link" not in html and "@import" not in html and "url(" not in html
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,")


def test_header(results: dict) -> None:
    html = render_report(results, fail_under=0.5, title="My audit")
    assert "<title>My audit</title>" in html and "<h1>My audit</h1>" in html
    for text in ("2026-11-25T12:00:00+00:00", "0.1.0", "runs <strong>5</strong>", "seed <strong>0</strong>"):
        assert text in html
    assert "Pass threshold" in html and "0.500" in html
    assert "Pass threshold" not in render_report(results)


def test_summary_table_cells(results: dict) -> None:
    rows = summary_rows(render_report(results, fail_under=0.5))
    header = [text for _, text in rows[0]]
    assert header == ["model", "defense", "clean accuracy", "pgd-linf", "fgsm"]
    body = {(row[0][1], row[1][1]): row[2:] for row in rows[1:]}
    assert list(body) == [("digits-cnn", "—"), ("digits-cnn", "bit-depth"), ("digits-mlp", "—")]

    clean, pgd, fgsm = body[("digits-cnn", "—")]
    assert clean[1] == "0.970"
    assert pgd == ("score fail", "0.420") and fgsm == ("score pass", "0.610")

    _, pgd, fgsm = body[("digits-cnn", "bit-depth")]
    assert pgd[0] == "score timeout" and pgd[1].startswith("0.550") and "timeout" in pgd[1]
    assert fgsm[0] == "score error" and "error" in fgsm[1] and "gradients are none" in fgsm[1]

    clean, pgd, fgsm = body[("digits-mlp", "—")]
    assert clean[1] == "0.930" and pgd == ("score fail", "0.200")
    assert fgsm == ("score missing", "—")


def test_error_message_in_title_attribute(results: dict) -> None:
    html = render_report(results)
    assert 'title="gradients are none"' in html
    assert 'title="time budget spent"' in html


def test_neutral_scale_without_threshold(results: dict) -> None:
    rows = summary_rows(render_report(results))
    classes = {cls for row in rows[1:] for cls, _ in row}
    assert not {"score pass", "score fail"} & classes
    assert "score scale-4" in classes  # 0.42 -> bucket 4
    assert "score scale-6" in classes  # 0.61 -> bucket 6


def test_threshold_boundary_passes(results: dict) -> None:
    rows = summary_rows(render_report(results, fail_under=0.42))
    assert rows[1][3] == ("score pass", "0.420")


def test_no_clean_accuracy_column_without_metric(results: dict) -> None:
    for run in results["runs"]:
        run["metrics"].pop("clean_accuracy", None)
    header = [text for _, text in summary_rows(render_report(results))[0]]
    assert "clean accuracy" not in header


def test_probe_sections(results: dict) -> None:
    html = render_report(results)
    assert html.count('<section class="probe"') == 2
    assert DOC_PGD in html and "Area under the robust accuracy curve, normalised to [0, 1]." in html
    assert "steps=10" in html and "epsilons=[0, 0.01, 0.05]" in html  # epsilons as epsilons (format_epsilon)
    assert "3.2 s" in html and ">linf<" in html  # seconds and a string metric


def test_robust_accuracy_chart(results: dict) -> None:
    html = render_report(results)
    svgs = _svgs(html)
    titles = [re.search(r"<title>(.*?)</title>", svg).group(1) for svg in svgs]
    assert titles == ["pgd-linf: robust accuracy", "fgsm: robust accuracy"]
    pgd, fgsm = svgs
    assert pgd.count('<g class="series"') == 3  # digits-cnn, digits-cnn + bit-depth, digits-mlp
    assert fgsm.count('<g class="series"') == 1  # the errored run has no curve
    assert "digits-cnn + bit-depth" in pgd and "epsilon" in pgd


def test_artifacts_embedded_as_png(results: dict, artifacts: dict) -> None:
    html = render_report(results, artifacts)
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 3
    sizes = [png_size(base64.b64decode(uri)) for uri in uris]
    assert sizes == [(8, 8), (8, 8), (32, 32)]
    assert 'width="96" height="96"' in html  # 8x8 scaled up 12x, 32x32 scaled 3x
    assert "image-rendering: pixelated" in html
    assert "clean: 3 (0.98)" in html and "adversarial: 8 (0.71)" in html and "worst case" in html


def test_artifact_accepts_png_bytes_and_orphans(results: dict, artifacts: dict) -> None:
    png = artifacts["r1"][0].png_images()[0]
    extra = {"unknown-run": [Artifact("orphan", [png], ["raw bytes"])]}
    html = render_report(results, {**artifacts, **extra})
    assert "Other examples" in html and "raw bytes" in html


def test_user_strings_are_escaped(results: dict) -> None:
    evil = copy.deepcopy(results)
    evil["runs"][0]["model"] = XSS
    evil["runs"][0]["params"]["steps"] = XSS
    evil["runs"][0]["params"][XSS] = 1
    evil["runs"][0]["metrics"]["attack"] = XSS
    evil["runs"][3]["message"] = XSS
    evil["runs"][1]["probe"] = XSS
    evil["runs"][1]["score_doc"] = XSS
    evil["environment"]["device"] = XSS
    evil["created"] = XSS
    image = np.zeros((1, 8, 8))
    artifacts = {"r1": [Artifact(XSS, [image], [XSS])], XSS: [Artifact(XSS, [image], [XSS])]}
    html = render_report(evil, artifacts, title=XSS)

    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    pgd_svg = _svgs(html)[0]
    assert "&lt;script&gt;" in pgd_svg  # the model name as a legend entry, escaped inside the SVG


def test_quotes_escaped_in_attributes(results: dict) -> None:
    results["runs"][3]["message"] = 'x" onmouseover="alert(1)'
    html = render_report(results)
    assert 'onmouseover="alert' not in html
    assert "&#34;" in html or "&quot;" in html


def test_empty_runs() -> None:
    html = render_report({"runs": []})
    assert "No runs in these results." in html and "runs <strong>0</strong>" in html
    html = render_report(
        {"robustcheck_version": "0.1.0", "created": "now", "seed": 1, "environment": {}, "runs": []}, {}
    )
    assert "<svg" not in html and "No environment recorded." in html


def test_environment_table(results: dict) -> None:
    html = render_report(results)
    assert '<table class="environment">' in html
    for key, value in results["environment"].items():
        assert f'<th scope="row">{key}</th><td class="mono">{value}</td>' in html


def test_multiple_runs_per_cell_show_minimum(results: dict) -> None:
    results["runs"].append(_run("r6", "digits-cnn", None, "pgd-linf", 0.3, params={"epsilons": [0.1]}))
    rows = summary_rows(render_report(results, fail_under=0.5))
    cls, text = rows[1][3]
    assert cls == "score fail" and text.startswith("0.300") and "min of 2 runs" in text
    pgd_svg = _svgs(render_report(results))[0]
    assert "digits-cnn (r1)" in pgd_svg and "digits-cnn (r6)" in pgd_svg


def test_write_report(tmp_path: Path, results: dict) -> None:
    path = write_report(tmp_path / "nested" / "report.html", results, fail_under=0.5)
    assert path.is_file()
    assert path.read_text(encoding="utf-8") == render_report(results, fail_under=0.5)


def test_as_curve() -> None:
    assert as_curve({"0.05": 0.3, "0.0": 0.9}) == [(0.0, 0.9), (0.05, 0.3)]
    assert as_curve({"a": 1}) is None
    assert as_curve({"0.1": "x"}) is None
    assert as_curve({"0.1": True}) is None
    assert as_curve({}) is None and as_curve([1, 2]) is None and as_curve(0.5) is None


# --------------------------------------------------------------------------- line_chart


def _chart(series: dict, **kwargs: Any) -> str:
    return line_chart(series, title=kwargs.pop("title", "t"), x_label="x", y_label="y", **kwargs)


def test_line_chart_basic() -> None:
    svg = _chart({"a": [(0, 1.0), (0.5, 0.5), (1, 0.0)], "b": [(0, 0.9), (1, 0.1)]}, width=400, height=250)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'width="400"' in svg and 'height="250"' in svg
    assert svg.count('<g class="series"') == 2 and svg.count("<polyline") == 2
    assert svg.count("<circle") == 5
    assert '<g class="legend">' in svg
    # y spans [0, 1] with round ticks
    for tick in (">0<", ">0.2<", ">1<"):
        assert tick in svg


def test_line_chart_escapes_text() -> None:
    svg = line_chart({XSS: [(0, 0.5), (1, 0.2)]}, title=XSS, x_label='"&', y_label="<y>")
    assert "<script" not in svg
    assert "&lt;script&gt;" in svg and "&quot;&amp;" in svg and "&lt;y&gt;" in svg


def test_line_chart_single_point() -> None:
    svg = _chart({"only": [(0.03, 0.5)]})
    assert svg.count("<circle") == 1 and "<polyline" not in svg
    assert not re.search(r"\b(nan|inf)\b", svg, flags=re.I)


def test_line_chart_empty() -> None:
    for series in ({}, {"a": []}, {"a": [(float("nan"), 1.0)]}):
        svg = _chart(series)
        assert "no data" in svg and "<circle" not in svg
        assert not re.search(r"\bnan\b", svg, flags=re.I)


def test_line_chart_drops_non_finite_and_sorts() -> None:
    svg = _chart({"a": [(1, 0.2), (float("inf"), 0.1), (0, 0.8), (0.5, float("nan"))]})
    assert svg.count("<circle") == 2
    points = re.search(r'<polyline points="([^"]*)"', svg).group(1).split()
    xs = [float(p.split(",")[0]) for p in points]
    assert xs == sorted(xs)


def test_line_chart_y_range_outside_unit_interval() -> None:
    svg = _chart({"a": [(0, 2.0), (1, 7.5)]})
    assert ">8<" in svg and ">2<" in svg
    svg = _chart({"a": [(0, 5.0), (1, 5.0)]})  # flat line, outside [0, 1]
    assert "<polyline" in svg and not re.search(r"\bnan\b", svg, flags=re.I)


def test_line_chart_many_series_wrap_legend() -> None:
    series = {f"model-{i} + defense-{i}": [(0, i / 20), (1, i / 30)] for i in range(14)}
    svg = _chart(series)
    assert svg.count('<g class="series"') == 14
    assert 'stroke-dasharray="6 3"' in svg  # colours repeat with another dash pattern
    height = int(re.search(r'height="(\d+)"', svg).group(1))
    assert height >= 300


def test_nice_ticks() -> None:
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0, 0.05) == pytest.approx([0, 0.01, 0.02, 0.03, 0.04, 0.05])
    assert nice_ticks(3, 3) == [3]
    assert nice_ticks(float("nan"), 1) == []


# --------------------------------------------------------------------------- probe tables, defense evaluation


def test_probe_tables_rendered_and_escaped(results: dict) -> None:
    import pandas as pd

    from robustcheck.api import Table

    table = Table(f"transfer {XSS}", pd.DataFrame({"class": [XSS, "one"], "confidence": [np.float32(0.5), None]}), note="a note")
    doc = table.to_json()
    assert doc["rows"] == [[XSS, 0.5], ["one", None]]  # numpy scalars become plain JSON numbers
    assert Table.from_json(doc).to_json() == doc  # round trip (how a resumed run gets its tables back)
    results["runs"][0]["tables"] = [doc]
    html = render_report(results)
    assert XSS not in html and "transfer &lt;script&gt;" in html
    assert "<th scope=\"col\">confidence</th>" in html and "a note" in html and "<td>0.5</td>" in html


def _defended(run_id: str, defense: str | None, adaptive: bool | None, robust: dict) -> dict:
    run = _run(run_id, "net", defense, "pgd-linf", 0.5, robust=robust)
    run["metrics"]["adaptive"] = adaptive
    if adaptive is not None:
        run["params"] = {**run["params"], "adaptive": adaptive}
    return run


def _defense_rows(html: str) -> list[list[str]]:
    section = html.split('id="defense-evaluation"', 1)[1].split("</section>", 1)[0]
    body = section.split("<tbody>", 1)[1]
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row.replace("<strong>", "").replace("</strong>", "")) for row in body.split("</tr>")[:-1]]


def test_defense_evaluation_pairs_adaptive_and_non_adaptive(results: dict) -> None:
    results["runs"] = [
        _defended("a", None, None, {"0": 0.9, "0.01": 0.5}),
        _defended("b", "jpeg", False, {"0": 0.88, "0.01": 0.8}),
        _defended("c", "jpeg", True, {"0": 0.88, "0.01": 0.1}),
        _defended("d", "raw", False, {"0": 0.85, "0.01": 0.7}),  # adaptive run missing
    ]
    rows = _defense_rows(render_report(results))
    assert rows == [
        ["net", "jpeg", "pgd-linf", "0.01", "0.500", "0.970", "0.800", "0.100"],
        ["net", "raw", "pgd-linf", "0.01", "0.500", "0.970", "0.700", "not run"],
    ]


def test_no_defense_evaluation_without_non_adaptive_runs(results: dict) -> None:
    assert 'id="defense-evaluation"' not in render_report(results)


# --------------------------------------------------------------------------- validity flags


def test_flags_next_to_the_score_and_explained_in_the_probe_section(results: dict) -> None:
    flag = {"code": "chance-accuracy", "message": f"clean accuracy 0.100 is at chance {XSS}"}
    results["runs"][0]["flags"] = [flag]  # r1: digits-cnn, pgd-linf
    results["runs"][4]["flags"] = []  # r5: an empty list, as every run written now has
    html = render_report(results)
    # next to the score: in the summary cell and in the probe's run table, the message as tooltip
    rows = summary_rows(html)
    body = {(row[0][1], row[1][1]): row[2:] for row in rows[1:]}
    assert body[("digits-cnn", "—")][1][1] == "0.420⚑ chance-accuracy"  # the flag is a block below the score
    assert body[("digits-mlp", "—")][1][1] == "0.200"  # other runs stay unmarked
    assert html.count('<small class="flag" title="chance-accuracy: clean accuracy 0.100 is at chance &lt;script&gt;') == 2
    # explained in the pgd-linf section only, escaped
    pgd = html.split('id="probe-0"', 1)[1].split("</section>", 1)[0]
    fgsm = html.split('id="probe-1"', 1)[1].split("</section>", 1)[0]
    assert "<h3>Validity flags</h3>" in pgd and "Validity flags" not in fgsm
    assert "<strong>digits-cnn</strong>: <code>chance-accuracy</code> &mdash; clean accuracy 0.100 is at chance &lt;script&gt;" in pgd
    assert XSS not in html
    assert "flagged <strong>1</strong>" in html and "validity flag" in html


def test_no_flag_marks_without_flags(results: dict) -> None:
    html = render_report(results)  # runs written before flags existed have no "flags" key
    assert 'class="flag"' not in html and "Validity flags" not in html and "flagged <strong>" not in html
    assert "validity flag" not in html


# --------------------------------------------------------------------------- issue 16: layout and numbers


def test_format_epsilon() -> None:
    assert format_epsilon(8 / 255) == "8/255" and format_epsilon(1 / 255) == "1/255"
    assert format_epsilon("0.0313725") == "8/255"  # robust_accuracy keys: 6 significant digits, within 1e-6
    assert format_epsilon(0.0313725 + 2e-6) == "0.03137"  # not within 1e-6 of a k/255
    assert format_epsilon(0) == "0" and format_epsilon("0.0") == "0"
    assert format_epsilon(1.0) == "1" and format_epsilon(2) == "2"  # whole numbers (L2 radii) stay plain
    assert format_epsilon(0.25) == "0.25" and format_epsilon(0.03) == "0.03"
    assert format_epsilon([0.0, 2 / 255, 0.5]) == "[0, 2/255, 0.5]"
    assert format_epsilon(None) == "\u2014" and format_epsilon(float("nan")) == "\u2014"
    assert format_epsilon("not a number") == "not a number"


def _linf_results(results: dict) -> dict:
    eps = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
    for run in results["runs"]:
        run["params"]["epsilons"] = eps
        if run["metrics"].get("robust_accuracy"):
            run["metrics"]["robust_accuracy"] = {f"{e:.6g}": 0.9 - i * 0.1 for i, e in enumerate(eps)}
            run["metrics"]["median_min_epsilon"] = 4 / 255
    return results


def test_epsilons_print_as_k_over_255_everywhere(results: dict) -> None:
    html = render_report(_linf_results(results))
    assert "0.0313725" not in html and "0.03137" not in html and "0.0157" not in html
    assert "epsilons=[0, 1/255, 2/255, 4/255, 8/255, 16/255]" in html  # run table parameters
    assert '<td class="num">4/255</td>' in html  # median_min_epsilon in the run table
    svg = _svgs(html)[0]
    ticks = re.findall(r'<text x="[^"]*" y="[^"]*" text-anchor="middle" font-size="11" fill="#444">([^<]*)</text>', svg)
    assert ticks == ["0", "4/255", "8/255", "12/255", "16/255"]
    assert ": (8/255, " in svg  # point tooltips
    assert '<text class="x-label"' in svg and ">epsilon</text>" in svg


def test_epsilon_in_defense_table_probe_tables_and_captions(results: dict) -> None:
    results["runs"] = [
        _defended("a", None, None, {"0": 0.9, "0.0313725": 0.5}),
        _defended("b", "jpeg", False, {"0": 0.88, "0.0313725": 0.8}),
        _defended("c", "jpeg", True, {"0": 0.88, "0.0313725": 0.1}),
    ]
    results["runs"][0]["tables"] = [{"title": "per sample", "columns": ["index", "epsilon"], "rows": [[3, 0.0313725], [4, None]]}]
    png = Artifact("t", [np.zeros((1, 8, 8))], ["x"]).png_images()[0]
    artifacts = {"a": [Artifact("sample 0", [png, png], ["clean: 3", "eps 0.0627451: 5 (0.61)"])]}
    html = render_report(results, artifacts)
    assert _defense_rows(html)[0][3] == "8/255"
    assert "<td>3</td><td>8/255</td>" in html and "<td>4</td><td>\u2014</td>" in html
    assert "eps 16/255: 5 (0.61)" in html


def test_x_axes_named_after_the_parameter(results: dict) -> None:
    run = results["runs"][0]
    run["probe"] = "translation"
    run["metrics"] = {
        "consistency_by_shift": {"1": 0.9, "2": 0.8},
        "tradeoff/accuracy": {"1": 0.9, "3": 0.8},
        "gain_by_window_size": {"1": 0.1, "3": 0.2},
        "other": {"2": 0.1, "3": 0.2},
    }
    run["params"] = {"widths": [2, 3]}
    labels = re.findall(r'<text class="x-label"[^>]*>([^<]*)</text>', render_report(results))
    assert labels[:4] == ["shift (px)", "crop window K (px)", "window size", "widths"]
    assert "value" not in labels


def test_single_point_curve_shown_as_numbers(results: dict) -> None:
    for run in results["runs"]:
        run["metrics"]["consistency_by_shift"] = {"1": 0.87}
    html = render_report(results)
    titles = [re.search(r"<title>(.*?)</title>", svg).group(1) for svg in _svgs(html)]
    assert not any("consistency by shift" in t for t in titles)  # not drawn
    assert "pgd-linf: consistency by shift" in html and '<table class="points">' in html
    points = html.split('<table class="points">', 1)[1].split("</table>", 1)[0]
    assert "<th scope=\"col\">shift (px)</th>" in points
    assert '<tr><th scope="row">digits-cnn</th><td class="num">1</td><td class="num">0.87</td></tr>' in points
    # a curve with several points stays a chart
    assert any(t == "pgd-linf: robust accuracy" for t in titles)


def test_example_cards_collapsed_per_run(results: dict, artifacts: dict) -> None:
    artifacts["r3"] = [Artifact("a", [np.zeros((1, 8, 8))], ["x"]), Artifact("b", [np.zeros((1, 8, 8))], ["y"])]
    html = render_report(results, artifacts)
    pgd = html.split('id="probe-0"', 1)[1].split("</section>", 1)[0]
    groups = re.findall(r"<details class=\"examples\"( open)?>\s*<summary>(.*?)</summary>(.*?)</details>", pgd, flags=re.S)
    assert len(groups) == 3  # r1, r3, r5: one per run with examples
    assert all(not is_open for is_open, _, _ in groups)  # folded by default
    summaries = [" ".join(re.sub(r"<[^>]+>", "", s).replace("&middot;", "\u00b7").split()) for _, s, _ in groups]
    assert summaries == ["digits-cnn \u00b7 1 example", "digits-cnn + bit-depth \u00b7 2 examples", "digits-mlp \u00b7 1 example"]
    assert [body.count("<figure") for _, _, body in groups] == [1, 2, 1]


def test_tables_of_one_title_side_by_side_and_scrolling(results: dict) -> None:
    table = {"title": "per shift", "note": "same note", "columns": ["shift", "rate"], "rows": [[1, 0.5]]}
    results["runs"][0]["tables"] = [table]
    results["runs"][2]["tables"] = [table]
    html = render_report(results)
    assert html.count("<h3>per shift</h3>") == 1 and html.count("same note") == 1
    assert html.count('<table class="probe-table">') == 2 and '<div class="table-group">' in html
    assert ".table-wrap {" in html and "overflow-x: auto" in html
    for table_tag in re.findall(r'<table class="(?:summary|runs|probe-table|points|defense-eval)"', html):
        assert html.split(table_tag, 1)[0].rstrip().endswith('<div class="table-wrap">')


def _banner(html: str) -> str:
    block = html.split('<div class="verdict', 1)[1].split('role="status">', 1)[1].split("</div>\n  </div>", 1)[0]
    return html_module.unescape(" ".join(re.sub(r"<[^>]+>", " ", block).split()))


def test_verdict_banner(results: dict) -> None:
    # thresholds: r1 0.42, r2 0.61, r3 0.55 (timeout), r4 error, r5 0.2
    html = render_report(results, fail_under=0.5)
    assert '<div class="verdict error"' in html  # a run raised
    banner = _banner(html)
    assert banner.startswith("error") and "Pass threshold: a score \u2265 0.500 passes; 2 of 5 runs pass." in banner
    assert "2 of 5 runs under their threshold (pgd-linf on digits-mlp: 0.200 < 0.500, pgd-linf on digits-cnn: 0.420 < 0.500)" in banner
    assert "1 of 5 runs raised (fgsm on digits-cnn + bit-depth)" in banner and "1 of 5 runs timed out" in banner
    assert "No run flagged." in banner

    ok = [r for r in results["runs"] if r["status"] == "ok"]
    assert _banner(render_report({**results, "runs": ok}, fail_under=0.5)).startswith("FAIL")
    assert _banner(render_report({**results, "runs": ok}, fail_under=0.1)).startswith("PASS")
    timed_out = ok + [results["runs"][2]]
    assert _banner(render_report({**results, "runs": timed_out}, fail_under=0.1)).startswith("inconclusive")
    assert _banner(render_report({**results, "runs": ok})).startswith("no threshold 3 runs; no threshold set")

    per_probe = [{**r, "threshold": 0.3 if r["probe"] == "fgsm" else 0.1} for r in ok]
    banner = _banner(render_report({**results, "runs": per_probe}))  # results.json thresholds, per probe
    assert banner.startswith("PASS") and "per probe: " in banner and "fgsm \u2265 0.300" in banner
    assert _banner(render_report({**results, "runs": [{**r, "threshold": 0.99} for r in ok]})).startswith("FAIL")

    ok[0]["flags"] = [{"code": "zero-gradients", "message": "m"}]
    banner = _banner(render_report({**results, "runs": ok}, fail_under=0.1))
    assert "1 of 3 runs flagged: pgd-linf on digits-cnn: zero-gradients" in banner


def _chromium_page_metrics(path: Path) -> dict[str, Any]:
    """The rendered page's height, width and elements sticking out of the 1400 px viewport outside
    any scrolling box, measured by headless Chromium (a script appended to a copy of the page)."""
    probe = """<script>
addEventListener('load', () => {
  const w = document.documentElement.clientWidth, out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (!r.width && !r.height) continue;
    let p = el.parentElement, scrolls = false;
    for (; p && p !== document.body; p = p.parentElement) {
      const s = getComputedStyle(p).overflowX;
      if (s === 'auto' || s === 'scroll') { scrolls = true; break; }
    }
    if (!scrolls && r.right > w + 0.5) out.push(el.tagName + '.' + el.className);
  }
  const pre = document.createElement('pre');
  pre.id = 'page-metrics';
  pre.textContent = JSON.stringify({height: document.documentElement.scrollHeight,
    width: document.documentElement.scrollWidth, viewport: w, clipped: out});
  document.body.appendChild(pre);
});
</script>"""
    page = path.with_name("measured.html")
    page.write_text(path.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    chromium = shutil.which("chromium")
    assert chromium is not None
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    ).stdout  # fmt: skip
    found = re.search(r'<pre id="page-metrics">(.*?)</pre>', dom, flags=re.S)
    assert found, f"no measurement in Chromium's output: {dom[-500:]}"
    import html as html_module
    import json

    return json.loads(html_module.unescape(found.group(1)))


def _default_audit_like(results: dict) -> tuple[dict, dict]:
    """The shape of the default audit: one model, three defenses, five probes, four example figures
    per run, two per-run tables for translation; epsilons as in the built-in attacks."""
    linf = {f"{e:.6g}": 0.95 - 0.15 * i for i, e in enumerate([0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255])}
    l2 = {"0": 0.95, "0.25": 0.9, "0.5": 0.78, "1": 0.49, "2": 0.09}
    metric_extras = {"clean_accuracy": 0.95, "auc": 0.5, "attack_success_rate": 0.9, "median_min_epsilon": 8 / 255,
                     "norm": "linf", "foolbox_disagreements": 0, "samples": 100, "zero_gradient_fraction": 0.0}  # fmt: skip
    shift_table = {"title": "Prediction changes per shift", "note": "a note " * 30, "columns": ["shift", "dy", "dx", "size", "change_rate", "mean_tv"],
                   "rows": [["realistic", 0, 1, 1, 0.03, 0.058]] * 4}  # fmt: skip
    trade_table = {"title": "Crop-selection trade-off", "note": "a note " * 30,
                   "columns": ["defense", "window", "shifts", "accuracy", "fooling_rate", "consistency", "accuracy_drop", "fooling_reduction"],
                   "rows": [["crop-selection", 3, "realistic", 0.96, 0.19, 0.81, -0.01, 0.6842]] * 4}  # fmt: skip
    runs, artifacts = [], {}
    rng = np.random.default_rng(0)
    for probe in ("deepfool", "fgsm", "pgd-l2", "pgd-linf", "translation"):
        for defense in (None, "bit-depth", "median-filter"):
            run_id = f"{probe}-{defense}"
            if probe == "translation":
                metrics = {"consistency": 0.87, "fooling_rate": 0.13, "centre_accuracy": 0.95,
                           "consistency_by_shift": {"1": 0.87}, "tradeoff/fooling_rate": {"1": 0.13, "3": 0.19, "5": 0.22, "9": 0.37},
                           "tradeoff/accuracy": {"1": 0.95, "3": 0.96, "5": 0.9, "9": 0.78}}  # fmt: skip
                tables = [shift_table, trade_table]
            else:
                metrics = {**metric_extras, "robust_accuracy": l2 if probe in ("deepfool", "pgd-l2") else linf}
                tables = []
            runs.append(_run(run_id, "digits-cnn", defense, probe, 0.5, metrics=metrics, params={}, tables=tables))
            artifacts[run_id] = [
                Artifact(f"sample {i} (label 2)", [rng.random((3, 32, 32)) for _ in range(3)], ["clean: 2 (1.00)", "eps 0.0313725: 0 (0.50)", "perturbation x6.52"])
                for i in range(4)
            ]  # fmt: skip
    return {**results, "runs": runs}, artifacts


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_default_audit_page_height_in_chromium(tmp_path: Path, results: dict) -> None:
    """Issue 16: the default audit's page is under 6,000 px tall at 1400 px wide (17,000 px before)
    and nothing sticks out of the page outside a scrolling box."""
    doc, artifacts = _default_audit_like(results)
    path = write_report(tmp_path / "report.html", doc, artifacts, fail_under=0.3)
    metrics = _chromium_page_metrics(path)
    assert metrics["height"] < 6000, metrics
    assert metrics["width"] <= metrics["viewport"], metrics  # no horizontal page scroll
    assert metrics["clipped"] == [], metrics
