"""Tests of the offline HTML report (robustcheck.reports.html) and its SVG charts (reports.plots)."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robustcheck.api import Artifact
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
    assert "steps=10" in html and "epsilons=[0.0, 0.01, 0.05]" in html
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
