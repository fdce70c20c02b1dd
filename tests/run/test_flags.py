"""robustcheck.run.flags: validity flags per run, in results.json, the CLI summary and the HTML report.

Rules are tested on outcomes built directly (fast, exact); the models that should raise them
(constant, random, zero-gradient, the plain digits-cnn that should not) run real probes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from helpers import CONSTANT_MODEL_SOURCE
from torch import nn

from robustcheck.api import ProbeResult
from robustcheck.data.builtin import DIGIT_CLASSES
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.run.flags import FLAG_CODES, Flag, audit_flags, run_flags
from robustcheck.run.runner import Runner, RunOutcome, RunSpec


def outcome(
    score: float | None = 0.5,
    *,
    model: str = "m",
    probe: str = "fgsm",
    defense: str | None = None,
    metrics: dict[str, Any] | None = None,
    records: pd.DataFrame | None = None,
    status: str = "ok",
    message: str = "",
    samples: int | None = 100,
    params: dict[str, Any] | None = None,
) -> RunOutcome:
    spec = RunSpec(model, probe, params=params, defense=defense, samples=samples)
    result = ProbeResult(score, metrics or {}, records if records is not None else pd.DataFrame(), status=status, message=message)
    return RunOutcome(spec, result, "digits")


def sample_records(labels: list[int], predictions: list[int], **columns: list[Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": range(len(labels)),
            "label": labels,
            "prediction": predictions,
            "correct": [a == b for a, b in zip(labels, predictions, strict=True)],
            **columns,
        }
    )


def codes(flags: list[Flag]) -> list[str]:
    return [f.code for f in flags]


BALANCED = [i % 10 for i in range(100)]


# --------------------------------------------------------------------------- the rules, one run


def test_good_run_has_no_flags() -> None:
    records = sample_records(BALANCED, BALANCED, zero_gradient=[False] * 100)
    metrics = {"clean_accuracy": 1.0, "norm": "linf", "bounds": [0, 1], "robust_accuracy": {"0": 1.0, "0.1": 0.3, "0.5": 0.0}}
    assert run_flags(outcome(0.4, metrics=metrics, records=records)) == []


def test_chance_accuracy_with_a_binomial_margin() -> None:
    # 10 classes, 100 samples: chance 0.1, margin max(0.05, 2 * sqrt(0.09 / 100)) = 0.06
    assert codes(run_flags(outcome(metrics={"clean_accuracy": 0.16}, records=sample_records(BALANCED, BALANCED)))) == ["chance-accuracy"]
    assert run_flags(outcome(metrics={"clean_accuracy": 0.17}, records=sample_records(BALANCED, BALANCED))) == []
    # without a clean_accuracy metric: from the records; 20 samples widen the margin to 2 * sqrt(0.09 / 20)
    wrong = [(label + 1) % 10 for label in BALANCED[:20]]
    flags = run_flags(outcome(records=sample_records(BALANCED[:20], wrong), samples=20))
    assert codes(flags) == ["chance-accuracy"] and "margin 0.134 on 20 samples" in flags[0].message
    # the number of classes a probe declares wins over what the records show
    assert run_flags(outcome(metrics={"clean_accuracy": 0.3, "num_classes": 2}, records=sample_records(BALANCED, BALANCED)))[0].code == "chance-accuracy"


def test_constant_prediction() -> None:
    flags = run_flags(outcome(records=sample_records(BALANCED, [3] * 96 + [1, 2, 4, 5])))
    assert codes(flags) == ["chance-accuracy", "constant-prediction"]
    assert "class 3 for 96% of the 100 samples" in flags[1].message
    assert "constant-prediction" not in codes(run_flags(outcome(records=sample_records(BALANCED, [3] * 94 + [0, 1, 2, 4, 5, 6]))))
    # a correct model on one-class data predicts one class: that is one-class, not a constant model
    assert codes(run_flags(outcome(records=sample_records([3] * 100, [3] * 100)))) == ["one-class"]
    # too few samples to judge
    assert "constant-prediction" not in codes(run_flags(outcome(records=sample_records(BALANCED[:9], [3] * 9), samples=9)))


def test_no_convergence_only_where_epsilons_reach_half_the_range() -> None:
    curve = {"0": 0.9, "0.25": 0.5, "0.5": 0.2}
    flags = run_flags(outcome(metrics={"norm": "linf", "bounds": [0, 1], "robust_accuracy": curve}))
    assert codes(flags) == ["no-convergence"] and "still 0.200 at Linf epsilon 0.5" in flags[0].message
    assert run_flags(outcome(metrics={"norm": "linf", "bounds": [0, 1], "robust_accuracy": {**curve, "0.5": 0.05}})) == []
    assert run_flags(outcome(metrics={"norm": "linf", "bounds": [0, 2], "robust_accuracy": curve})) == []  # 0.5 < 1
    assert run_flags(outcome(metrics={"norm": "l2", "bounds": [0, 1], "robust_accuracy": curve})) == []
    assert run_flags(outcome(metrics={"norm": "linf", "robust_accuracy": curve})) == []  # bounds unknown


def test_zero_gradients() -> None:
    zero = [True] * 10 + [False] * 90
    flags = run_flags(outcome(records=sample_records(BALANCED, BALANCED, zero_gradient=zero)))
    assert codes(flags) == ["zero-gradients"] and "zero on 10% of 100 samples" in flags[0].message
    assert run_flags(outcome(records=sample_records(BALANCED, BALANCED, zero_gradient=zero[1:] + [False]))) == []


def test_partial_few_samples_and_one_class() -> None:
    flags = run_flags(outcome(0.7, status="timeout", message="time budget spent: 32 of\n100 samples attacked", records=sample_records(BALANCED[:32], BALANCED[:32])))
    assert codes(flags) == ["partial"] and flags[0].message.endswith("time budget spent: 32 of 100 samples attacked")
    assert codes(run_flags(outcome(None, status="timeout", message="time budget spent"))) == ["partial"]
    flags = run_flags(outcome(records=sample_records(BALANCED[:50], BALANCED[:50]), samples=80))
    assert codes(flags) == ["few-samples"] and "measured 50 samples of the 80 asked" in flags[0].message
    # a probe's own samples parameter caps what the run asked for
    assert run_flags(outcome(records=sample_records(BALANCED[:50], BALANCED[:50]), samples=80, params={"samples": 50})) == []
    assert run_flags(outcome(records=sample_records(BALANCED[:50], BALANCED[:50]), samples=None)) == []
    flags = run_flags(outcome(records=sample_records([0] * 100, list(range(10)) * 10)))
    assert "one-class" in codes(flags) and "all 100 samples have label 0" in flags[-1].message


def test_errors_and_records_that_are_not_per_sample_are_not_judged() -> None:
    assert run_flags(outcome(None, status="error", message="boom")) == []
    per_class = pd.DataFrame({"generator": ["direct"] * 3, "class": [0, 1, 2], "label": ["zero", "one", "two"]})
    assert run_flags(outcome(0.3, probe="fooling", records=per_class)) == []
    per_epsilon = pd.DataFrame({"index": [0, 0, 1, 1], "mode": ["exact"] * 4, "epsilon": [0, 0.1, 0, 0.1]})
    assert run_flags(outcome(0.3, probe="caption-pgd", records=per_epsilon)) == []


# --------------------------------------------------------------------------- across runs


def test_defense_worse_than_the_bare_model() -> None:
    runs = [
        outcome(0.6),
        outcome(0.45, defense="crop-selection"),
        outcome(0.595, defense="bit-depth"),  # within the tolerance
        outcome(0.3, defense="jpeg", params={"epsilons": [0, 0.1]}),  # other parameters: not comparable
        outcome(0.2, defense="median-filter", model="other"),  # other model
    ]
    flags = audit_flags(runs)
    assert [codes(f) for f in flags] == [[], ["defense-worse"], [], [], []]
    assert "defense crop-selection the score 0.450 is below the bare model's 0.600" in flags[1][0].message


def test_adaptive_weaker_than_non_adaptive() -> None:
    runs = [
        outcome(0.5, defense="jpeg", params={"adaptive": False}, metrics={"adaptive": False}),
        outcome(0.7, defense="jpeg", metrics={"adaptive": True}),
        outcome(0.2, defense="bit-depth", params={"adaptive": False}, metrics={"adaptive": False}),
        outcome(0.205, defense="bit-depth", metrics={"adaptive": True}),  # within the tolerance
    ]
    flags = audit_flags(runs)
    assert [codes(f) for f in flags] == [[], ["adaptive-weaker"], [], []]
    assert "adaptive attack scores 0.700, above the non-adaptive 0.500 on defense jpeg" in flags[1][0].message
    # only finished runs are compared
    runs[0] = outcome(0.5, defense="jpeg", params={"adaptive": False}, metrics={"adaptive": False}, status="timeout")
    assert codes(audit_flags(runs)[1]) == []


def test_every_code_is_documented_and_kebab_case() -> None:
    assert list(FLAG_CODES) == [
        "chance-accuracy", "constant-prediction", "no-convergence", "zero-gradients", "adaptive-weaker",
        "defense-worse", "partial", "few-samples", "one-class",
    ]  # fmt: skip
    assert all(code == code.lower() and " " not in code and doc for code, doc in FLAG_CODES.items())
    assert Flag("partial", "x").to_json() == {"code": "partial", "message": "x"}


# --------------------------------------------------------------------------- real models


class Constant(nn.Module):
    """Logits that ignore the input: class 3 always."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


class Round(nn.Module):
    """Quantise the input: the gradient of ``round`` is zero everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def digits_model(module: nn.Module, name: str) -> ImageClassifier:
    return ImageClassifier(module, input_shape=(1, 8, 8), labels=DIGIT_CLASSES, name=name, default_data="digits")


@pytest.fixture(scope="module")
def runner(single_thread: None) -> Runner:
    runner = Runner(None, quiet=True)
    runner.add_model("constant", digits_model(Constant(), "constant"))
    torch.manual_seed(0)
    runner.add_model("random", digits_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), "random"))
    runner.add_model("rounded", digits_model(nn.Sequential(Round(), load_model("digits-mlp")), "rounded"))
    return runner


def flags_of(runner: Runner, *specs: RunSpec) -> list[list[str]]:
    results = runner.results([runner.execute(spec) for spec in specs], 0)
    return [[f["code"] for f in run["flags"]] for run in results["runs"]]


def test_constant_model_is_flagged(runner: Runner) -> None:
    [flags] = flags_of(runner, RunSpec("constant", "fgsm:epsilons=[0,0.1]", samples=100))
    assert {"chance-accuracy", "constant-prediction", "zero-gradients"} <= set(flags)


def test_constant_model_scoring_1_on_translation_is_flagged(single_thread: None) -> None:
    """Issue case 4: a constant model never changes its answer under shifts, so translation scores it 1.000."""
    runner = Runner(None, quiet=True)
    model = ImageClassifier(Constant(), input_shape=(3, 32, 32), labels=DIGIT_CLASSES, name="constant", default_data="digits-rgb32")
    runner.add_model("constant", model)
    [run] = runner.results([runner.execute(RunSpec("constant", "translation", samples=50))], 0)["runs"]
    assert run["score"] == 1.0
    assert [f["code"] for f in run["flags"]] == ["chance-accuracy", "constant-prediction"]


def test_random_model_is_at_chance(runner: Runner) -> None:
    [flags] = flags_of(runner, RunSpec("random", "fgsm:epsilons=[0,0.1]", samples=100))
    assert "chance-accuracy" in flags


def test_zero_gradient_model_is_flagged(runner: Runner) -> None:
    """round() hides the gradient: FGSM moves nothing, robust accuracy stays at clean accuracy even at eps 0.5."""
    outcome = runner.execute(RunSpec("rounded", "fgsm:epsilons=[0,0.1,0.5]", samples=50))
    assert outcome.result.metrics["zero_gradient_fraction"] == 1.0 and outcome.result.records["zero_gradient"].all()
    [flags] = flags_of(runner, RunSpec("rounded", "fgsm:epsilons=[0,0.1,0.5]", samples=50))
    assert flags == ["no-convergence", "zero-gradients"]


def test_plain_digits_cnn_has_no_flags(single_thread: None) -> None:
    runner = Runner(None, quiet=True)
    results = runner.results([runner.execute(RunSpec("digits-cnn", "pgd-linf:epsilons=[0,0.1,0.5],steps=5", samples=32))], 0)
    assert results["runs"][0]["status"] == "ok" and results["runs"][0]["flags"] == []


# --------------------------------------------------------------------------- results.json, CLI summary, report



@pytest.fixture
def flag_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module with a constant-output model factory, importable as ``rc_flag_models``."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "rc_flag_models.py").write_text(CONSTANT_MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    return "rc_flag_models:constant"


def test_flags_in_results_json_cli_summary_and_report(cli: Any, workdir: Path, flag_models: str, single_thread: None) -> None:
    out = workdir / "audit"
    argv = ["audit", "--model", flag_models, "--probe", "fgsm:epsilons=[0,0.1]", "--defense", "none", "--samples", "100", "--out", out]
    result = cli(*argv)
    assert result.code == 0, result.err
    [run] = json.loads((out / "results.json").read_text())["runs"]
    found = {f["code"]: f["message"] for f in run["flags"]}
    assert {"chance-accuracy", "constant-prediction"} <= set(found)
    assert all(isinstance(m, str) and m and "\n" not in m for m in found.values())
    # the CLI summary: a flags column and one line per flag
    header = next(line for line in result.out.splitlines() if "probe" in line and "score" in line)
    assert "flags" in header
    assert "constant-prediction" in result.out and f"constant-prediction: {found['constant-prediction']}" in result.out
    # the report: next to the score (summary and run table) and explained in the probe section
    html = (out / "report.html").read_text()
    assert html.count('class="flag" title="constant-prediction: ') == 2
    assert "<h3>Validity flags</h3>" in html and "<code>constant-prediction</code>" in html
    assert 'flagged <strong>1</strong>' in html
    # resumed runs are flagged the same way
    again = cli(*argv, "--resume")
    assert again.code == 0 and "(saved)" in again.out
    assert json.loads((out / "results.json").read_text())["runs"][0]["flags"] == run["flags"]


def test_unflagged_audit_has_empty_flag_lists(cli: Any, workdir: Path, single_thread: None) -> None:
    out = workdir / "clean"
    result = cli("audit", "--model", "digits-mlp", "--probe", "fgsm", "--defense", "none", "--samples", "32", "--out", out, "--quiet")
    assert result.code == 0, result.err
    assert [run["flags"] for run in json.loads((out / "results.json").read_text())["runs"]] == [[]]
    assert "Validity flags" not in (out / "report.html").read_text()


# --------------------------------------------------------------------------- on real data (slow)


@pytest.mark.slow
def test_flags_on_the_cifar_model(cifar_model: tuple[ImageClassifier, Any]) -> None:
    """On the shared CIFAR-10 model: a constant model is flagged, so is an adaptive FGSM through kornia's
    smooth-rounding JPEG that scores above the non-adaptive one; the plain model and the honest
    non-adaptive run are not. (A NaN model is an error, not a flag: see the model adapter's tests.)"""
    model, data = cifar_model
    runner = Runner(None, quiet=True)
    runner.add_model("cifar-cnn", model)
    runner.add_model("constant", ImageClassifier(Constant(), input_shape=(3, 32, 32), labels=model.labels, name="constant"))
    runner.add_data("cifar", data)
    jpeg = "jpeg:backward=codec"
    specs = [
        RunSpec("cifar-cnn", "fgsm", data="cifar", samples=100),
        RunSpec("cifar-cnn", "fgsm", data="cifar", samples=100, defense=jpeg, params={"adaptive": False}),
        RunSpec("cifar-cnn", "fgsm", data="cifar", samples=100, defense=jpeg),
        RunSpec("constant", "fgsm", data="cifar", samples=100),
    ]
    runs = runner.results([runner.execute(spec) for spec in specs], 0)["runs"]
    assert [run["status"] for run in runs] == ["ok"] * 4
    flags = [[f["code"] for f in run["flags"]] for run in runs]
    assert flags[0] == [] and flags[1] == []
    assert flags[2] == ["adaptive-weaker"], (runs[1]["score"], runs[2]["score"])
    assert {"chance-accuracy", "constant-prediction", "zero-gradients"} <= set(flags[3])
