"""Tests of the pytest plugin (robustcheck.pytest_plugin), run on inner pytest sessions via pytester.

Inner sessions run in-process (fast: torch is imported once); torch, foolbox and the report code are
imported before the first one, because pytester drops modules first imported by an inner run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points

import pandas as pd
import pytest

from robustcheck.pytest_plugin import worst_samples

pytest_plugins = ["pytester"]

#: Once the ``pytest11`` entry point is installed, ``-p MODULE`` would register the plugin twice.
ENTRY_POINT = any(ep.name == "robustcheck" for ep in entry_points(group="pytest11"))
PLUGIN = ("-p", "robustcheck") if ENTRY_POINT else ("-p", "robustcheck.pytest_plugin")
#: The plugin module is imported by this file, so pytest cannot rewrite it: silence that notice.
QUIET = ("-W", "ignore::pytest.PytestAssertRewriteWarning")

HEADER = """
import pytest
from robustcheck import load_data, load_model
"""

PASSING = """
def test_passes(robustcheck):
    result = robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.0, samples=16)
    assert 0.0 <= result.score <= 1.0
"""

FAILING = """
def test_named(robustcheck):
    robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.99, samples=16, epsilons=[0, 0.1])

def test_objects(robustcheck):
    data = load_data("digits").head(16)
    robustcheck.assert_robust(load_model("digits-mlp"), data, probe="fgsm", min_score=0.99, epsilons=[0, 0.1])
"""


@pytest.fixture(autouse=True)
def no_plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions load only the plugins named with ``-p`` (re-importing others costs seconds)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Import everything an inner run needs (torch, foolbox, z3, report) with one tiny run."""
    from robustcheck.reports.html import write_report
    from robustcheck.run.runner import Runner, RunSpec

    runner = Runner(None, quiet=True)
    outcome = runner.execute(RunSpec("digits-mlp", "fgsm", samples=4))
    write_report(tmp_path_factory.mktemp("warm") / "r.html", runner.results([outcome], 0))


def run_inner(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=HEADER + textwrap.dedent(source))
    return pytester.runpytest(*PLUGIN, *QUIET, "-p", "no:cacheprovider", *args)


def failure_text(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines)


# --------------------------------------------------------------------------- import cost


def test_import_does_not_load_heavy_modules() -> None:
    code = (
        "import sys, robustcheck.pytest_plugin\n"
        "heavy = [m for m in ('torch', 'foolbox', 'pandas', 'numpy', 'robustcheck.run.runner', 'robustcheck.probes') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- fixture


def test_passing_check(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, PASSING)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*robustcheck*", "1 robustness run(s), seed 0", "PASS  test_inner.py::* on digits-mlp  score * (min_score *)"])


def test_failing_check_explains_itself(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, FAILING, "--robustcheck-seed=7")
    result.assert_outcomes(failed=2)
    text = failure_text(result)
    assert "robustness check failed: fgsm on digits-mlp: score" in text
    assert "is below min_score 0.9900" in text
    assert "params:     epsilons=[0,0.1]" in text
    assert "threshold: min_score 0.9900" in text
    assert "seed:       7" in text
    result.stdout.fnmatch_lines(["*worst samples (of 16; correctly classified but fooled first):*", "*index*label*prediction*adv_prediction*min_epsilon*"])
    command = "robustcheck audit --model digits-mlp --data digits --probe 'fgsm:epsilons=[0,0.1]' --seed 7 --samples 16 --defense none"
    assert f"reproduce:  {command}" in text
    # in-memory objects: the test itself reproduces the run
    result.stdout.fnmatch_lines(["*reproduce:  python -m pytest *test_inner.py::test_objects --robustcheck-seed=7"])
    # the session summary lists every run with its test, threshold and verdict
    result.stdout.fnmatch_lines(["2 robustness run(s), seed 7", "FAIL  test_inner.py::* fgsm on digits-mlp  score * (min_score 0.990): score * is below min_score 0.9900*"])


def test_inconclusive_run_fails(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, PASSING, "--robustcheck-budget=0.000001")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*inconclusive: status timeout*"])


def test_run_returns_result_and_names_objects(pytester: pytest.Pytester) -> None:
    source = """
    def test_run(robustcheck):
        data = load_data("digits").head(8)
        first = robustcheck.run(load_model("digits-mlp"), data, "fgsm:epsilons=[0,0.1]")
        second = robustcheck.run(load_model("digits-mlp"), data, "fgsm", epsilons=[0, 0.1])
        assert first.score == second.score and len(first.records) == 8
        assert [o.spec.model for o in robustcheck.outcomes] == ["digits-mlp", "digits-mlp#2"]
        assert robustcheck.outcomes[0].spec.probe.params == {"epsilons": [0, 0.1]}
    """
    run_inner(pytester, source).assert_outcomes(passed=1)


SORTED = """
import torch
from torch import nn

from robustcheck.data.dataset import ImageDataset


def sorted_data():
    x = torch.rand(500, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return ImageDataset(x, torch.arange(10).repeat_interleave(50), [f"c{k}" for k in range(10)], name="sorted")


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
"""


def test_samples_are_class_stratified_and_all_means_all(pytester: pytest.Pytester) -> None:
    source = """
    def test_samples(robustcheck):
        data = sorted_data()
        result = robustcheck.run(net(), data, "fgsm:epsilons=[0,0.01]", samples=100)
        assert result.records["label"].value_counts().to_dict() == dict.fromkeys(range(10), 10)
        outcome = robustcheck.outcomes[-1]
        assert len(set(outcome.indices)) == 100 and outcome.to_json()["indices"] == outcome.indices
        assert outcome.labels == [f"c{k}" for k in range(10)]  # the data's class names: the model has none
        again = robustcheck.run(net(), data, "fgsm:epsilons=[0,0.01]", samples=100)
        assert robustcheck.outcomes[-1].indices == outcome.indices
        for everything in (None, "all"):
            assert len(robustcheck.run(net(), data, "fgsm:epsilons=[0,0.01]", samples=everything).records) == 500
        assert len(robustcheck.run("digits-mlp", "digits", "fgsm:epsilons=[0,0.01]", samples=None).records) == 450
    """
    run_inner(pytester, textwrap.dedent(SORTED) + textwrap.dedent(source)).assert_outcomes(passed=1)


def test_input_shape_of_the_fixture(pytester: pytest.Pytester) -> None:
    source = """
    def test_shape(robustcheck):
        robustcheck.run(net(), sorted_data(), "fgsm:epsilons=[0,0.01]", samples=10, input_shape=(3, 8, 8))
        assert robustcheck.outcomes[-1].spec.model_options == {"input_shape": [3, 8, 8]}
        with pytest.raises(Exception, match=r"expects images of shape \\(3, 4, 4\\)"):
            robustcheck.run(net(), sorted_data(), "fgsm", samples=10, input_shape=(3, 4, 4))
        with pytest.raises(Exception, match="input_shape must be"):
            robustcheck.run(net(), sorted_data(), "fgsm", samples=10, input_shape=(8, 8))
    """
    run_inner(pytester, textwrap.dedent(SORTED) + textwrap.dedent(source)).assert_outcomes(passed=1)


# --------------------------------------------------------------------------- session outputs


def test_html_report_written(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, PASSING + FAILING, "--robustcheck-report=out/report.html")
    result.assert_outcomes(passed=1, failed=2)
    html = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") or "<html" in html[:500]
    assert "fgsm" in html and "digits-mlp" in html
    # the session report names each run's test and threshold, and judges each run by its own min_score
    assert "<code>test_inner.py::test_passes</code>" in html and "\u2265 0.990" in html
    assert '<div class="verdict fail"' in html
    result.stdout.fnmatch_lines(["report: *report.html"])


def test_json_written(pytester: pytest.Pytester) -> None:
    run_inner(pytester, PASSING + FAILING, "--robustcheck-json=results.json", "--robustcheck-seed=3")
    results = json.loads((pytester.path / "results.json").read_text())
    assert results["seed"] == 3 and "environment" in results
    runs = results["runs"]
    assert [r["test"] for r in runs] == ["test_inner.py::test_passes", "test_inner.py::test_named", "test_inner.py::test_objects"]
    assert {r["probe"] for r in runs} == {"fgsm"}
    assert all(r["status"] == "ok" and r["seed"] == 3 and r["samples"] == 16 for r in runs)
    assert runs[1]["params"] == {"epsilons": [0, 0.1]}


def test_scores_in_junit_xml(pytester: pytest.Pytester) -> None:
    """In a fresh pytest process with ``-W error`` (importing foolbox must not trip its scipy warning)."""
    pytester.makepyfile(test_inner=HEADER + PASSING)
    result = pytester.runpytest_subprocess(*PLUGIN, "-W", "error", "-p", "no:cacheprovider", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    properties = ET.parse(pytester.path / "junit.xml").getroot().findall(".//testcase/properties/property")
    scores = {p.get("name"): float(p.get("value") or "nan") for p in properties}
    assert list(scores) == ["robustcheck:fgsm"]
    assert 0.0 <= scores["robustcheck:fgsm"] <= 1.0


def test_xdist_workers_hand_their_runs_to_one_report_json_and_baseline(pytester: pytest.Pytester) -> None:
    """Under ``-n 2`` the controller writes the outputs of both workers' runs (workers start their own
    Python, so this takes a few seconds)."""
    pytest.importorskip("xdist")
    source = """
    def test_one(robustcheck):
        robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.0, samples=8, epsilons=[0, 0.1])

    def test_two(robustcheck):
        robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.0, samples=8, epsilons=[0, 0.2])
        robustcheck.run("digits-mlp", "digits", "deepfool", samples=8)  # run() records no baseline score
    """
    args = ("-p", "xdist", "-n", "2", "--robustcheck-json=r.json", "--robustcheck-report=r.html")
    result = run_inner(pytester, source, *args, "--robustcheck-baseline=b.json", "--robustcheck-update-baseline")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*3 robustness run(s), seed 0*", "*report: *r.html*", "*baseline updated: *b.json (2 scores recorded)*"])
    runs = json.loads((pytester.path / "r.json").read_text())["runs"]
    assert [(r["test"], r["probe"]) for r in runs] == [
        ("test_inner.py::test_one", "fgsm"), ("test_inner.py::test_two", "fgsm"), ("test_inner.py::test_two", "deepfool")
    ]
    assert all(r["status"] == "ok" for r in runs)
    html = (pytester.path / "r.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") > 0 and "deepfool" in html
    scores = json.loads((pytester.path / "b.json").read_text())["scores"]
    assert {test: set(entry) for test, entry in scores.items()} == {"test_inner.py::test_one": {"fgsm"}, "test_inner.py::test_two": {"fgsm"}}
    # the same scores come out of a single process
    single = run_inner(pytester, source, "--robustcheck-json=s.json")
    single.assert_outcomes(passed=2)
    assert [r["score"] for r in json.loads((pytester.path / "s.json").read_text())["runs"]] == [r["score"] for r in runs]


# --------------------------------------------------------------------------- baseline


def test_baseline_regression_detected(pytester: pytest.Pytester) -> None:
    source = """
    def test_fgsm(robustcheck):
        robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.0, samples=16, epsilons=[0, 0.1])
    """
    result = run_inner(pytester, source, "--robustcheck-baseline=baseline.json", "--robustcheck-update-baseline")
    result.assert_outcomes(passed=1)
    path = pytester.path / "baseline.json"
    baseline = json.loads(path.read_text())
    score = baseline["scores"]["test_inner.py::test_fgsm"]["fgsm"]
    assert 0.0 <= score <= 0.9

    baseline["scores"]["test_inner.py::test_fgsm"]["fgsm"] = score + 0.1
    path.write_text(json.dumps(baseline))
    result = run_inner(pytester, source, "--robustcheck-baseline=baseline.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*dropped more than 0.02 below its baseline {score + 0.1:.4f} (recorded for 'fgsm' in *baseline.json)*"])

    result = run_inner(pytester, source, "--robustcheck-baseline=baseline.json", "--robustcheck-tolerance=0.2")
    result.assert_outcomes(passed=1)


def test_bad_baseline_options_are_usage_errors(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, PASSING, "--robustcheck-update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--robustcheck-update-baseline needs --robustcheck-baseline=PATH*"])
    (pytester.path / "baseline.json").write_text('{"scores": {"test_inner.py::test_passes": {"fgsm": "high"}}}')
    result = run_inner(pytester, PASSING, "--robustcheck-baseline=baseline.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline.json' has no 'scores' mapping of test -> probe -> score*"])


# --------------------------------------------------------------------------- marker


def test_marker_on_test_returning_a_model(pytester: pytest.Pytester) -> None:
    source = """
    @pytest.mark.robustness(probe="fgsm", min_score=0.0, samples=16)
    def test_returns_model():
        return load_model("digits-mlp")

    @pytest.fixture
    def model():
        return load_model("digits-mlp")

    @pytest.mark.robustness(probe="fgsm", min_score=0.99, data="digits", samples=16)
    def test_model_fixture(model):
        assert model.name == "digits-mlp"

    @pytest.mark.robustness(probe="fgsm", min_score=0.0)
    def test_no_model():
        pass
    """
    result = run_inner(pytester, source, "-W", "error::pytest.PytestReturnNotNoneWarning", "--strict-markers")
    result.assert_outcomes(passed=1, failed=2, warnings=0)
    result.stdout.fnmatch_lines(
        [
            "*robustness check failed: fgsm on digits-mlp: score * is below min_score 0.9900*",
            "*test_no_model: @pytest.mark.robustness needs the test to return a model or to take a `model` fixture*",
        ]
    )


# --------------------------------------------------------------------------- validity flags

CONSTANT = """
import torch
from torch import nn

from robustcheck.models.classifier import ImageClassifier

CONSTANT_FLAGS = ["chance-accuracy", "constant-prediction", "zero-gradients"]


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 5)

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def constant():
    return ImageClassifier(Constant(), input_shape=(1, 8, 8), name="constant")
"""


def test_flagged_result_fails_unless_its_flags_are_allowed(pytester: pytest.Pytester) -> None:
    source = CONSTANT + textwrap.dedent("""
    def test_flagged(robustcheck):
        robustcheck.assert_robust(constant(), load_data("digits").head(40), probe="fgsm", min_score=0.0, epsilons=[0, 0.1])

    def test_allowed(robustcheck):
        result = robustcheck.assert_robust(
            constant(), load_data("digits").head(40), probe="fgsm", min_score=0.0, epsilons=[0, 0.1], allow_flags=CONSTANT_FLAGS
        )
        assert result.status == "ok"

    def test_partly_allowed(robustcheck):
        robustcheck.assert_robust(
            constant(), load_data("digits").head(40), probe="fgsm", min_score=0.0, epsilons=[0, 0.1], allow_flags=["zero-gradients"]
        )

    def test_unknown_code(robustcheck):
        robustcheck.assert_robust(constant(), load_data("digits").head(40), probe="fgsm", min_score=0.0, allow_flags=["chance"])

    def test_good_model_passes(robustcheck):
        robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.0, samples=16)
    """)
    result = run_inner(pytester, source, "--robustcheck-json=out.json")
    result.assert_outcomes(passed=2, failed=3)
    text = failure_text(result)
    assert "robustness check failed: fgsm on constant: flagged chance-accuracy, constant-prediction, zero-gradients " \
        "(allow with allow_flags=['chance-accuracy', 'constant-prediction', 'zero-gradients'])" in text
    assert "flag:       constant-prediction: the model predicts class 3 for 100% of the 40 samples" in text
    assert "robustness check failed: fgsm on constant: flagged chance-accuracy, constant-prediction " \
        "(allow with allow_flags=['chance-accuracy', 'constant-prediction'])" in text
    assert "flag:       zero-gradients (allowed): " in text
    assert "allow_flags: unknown flag code 'chance'; the codes are chance-accuracy, constant-prediction" in text
    runs = json.loads((pytester.path / "out.json").read_text())["runs"]
    assert [[f["code"] for f in run["flags"]] for run in runs][-1] == []
    assert {f["code"] for f in runs[0]["flags"]} == {"chance-accuracy", "constant-prediction", "zero-gradients"}


def test_marker_allows_flags_by_code(pytester: pytest.Pytester) -> None:
    source = CONSTANT + textwrap.dedent("""
    @pytest.mark.robustness(probe="fgsm", min_score=0.0, data="digits", samples=40, epsilons=[0, 0.1], allow_flags=CONSTANT_FLAGS)
    def test_allowed():
        return constant()

    @pytest.mark.robustness(probe="fgsm", min_score=0.0, data="digits", samples=40, epsilons=[0, 0.1])
    def test_flagged():
        return constant()
    """)
    result = run_inner(pytester, source)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*robustness check failed: fgsm on constant: flagged chance-accuracy, constant-prediction, zero-gradients*"])


# --------------------------------------------------------------------------- disabled


def test_disabled_with_no_robustcheck(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")  # the entry point, once installed, is what gets disabled
    pytester.makepyfile(test_inner=HEADER + PASSING)
    # every other installed plugin loads; pytest-benchmark (where installed) refuses to run beside xdist
    result = pytester.runpytest("-p", "no:robustcheck", "-p", "no:cacheprovider", "-p", "no:benchmark")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'robustcheck' not found*"])
    assert "robustness(" not in "\n".join(pytester.runpytest("-p", "no:robustcheck", "--markers").outlines)


# --------------------------------------------------------------------------- worst samples


def test_worst_samples_puts_fooled_correct_samples_first() -> None:
    records = pd.DataFrame(
        {
            "index": [0, 1, 2, 3, 4],
            "label": [1, 2, 3, 4, 5],
            "prediction": [1, 0, 3, 4, 5],
            "correct": [True, False, True, True, True],
            "min_epsilon": [0.3, 0.0, None, 0.1, None],
            "adv_prediction": [7, 0, 3, 9, 5],
        }
    )
    assert worst_samples(records)["index"].tolist() == [3, 0, 1]
    assert worst_samples(records, limit=1)["index"].tolist() == [3]
    no_eps = records.drop(columns=["min_epsilon", "correct"])
    assert worst_samples(no_eps)["index"].tolist() == [0, 3, 1]
    assert worst_samples(pd.DataFrame({"index": [5, 6], "score": [0.1, 0.2]}))["index"].tolist() == [5, 6]
