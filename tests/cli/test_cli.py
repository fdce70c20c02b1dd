"""End-to-end tests of the ``robustcheck`` command line on the built-in digits-cnn.

Audits use 8-16 samples and one fast probe, so each one takes about a second in-process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import (
    SUBPROCESS_ENV,
    assert_one_line_error,
    comparable_runs,
    robustcheck_command,
    run_subprocess,
    stored_runs,
    wait_for_stored_runs,
)

import robustcheck

pytestmark = pytest.mark.usefixtures("workdir", "single_thread")

XSS = "<script>alert(1)</script>"
FAST = ("--samples", "16", "--probe", "fgsm", "--defense", "none", "--quiet")
ENVIRONMENT_KEYS = {"python", "torch", "foolbox", "z3", "platform", "device"}
RUN_KEYS = {"model", "defense", "probe", "params", "data", "samples", "score", "metrics", "status", "seconds", "seed"}


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def _script() -> list[str]:
    script = Path(sys.executable).with_name("robustcheck")
    return [str(script)] if script.is_file() else robustcheck_command()


# --------------------------------------------------------------------------------------------- happy path


def test_audit_writes_results_records_and_report(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("audit", "--samples", "16", "--probe", "fgsm", "--defense", "none", "--defense", "bit-depth", "--out", out)
    assert result.code == 0, result.err
    assert result.err == f"robustcheck: ok: 2 runs, no threshold set; report: {out / 'report.html'}\n"  # the verdict only
    assert "digits-cnn" in result.out and "report.html" in result.out  # the summary table

    results = _results(out)
    assert {"robustcheck_version", "created", "seed", "environment", "runs"} <= set(results)
    assert results["seed"] == 0 and results["robustcheck_version"] == robustcheck.__version__
    assert dt.datetime.fromisoformat(results["created"]).tzinfo is not None
    assert set(results["environment"]) >= ENVIRONMENT_KEYS
    assert all(isinstance(results["environment"][k], str) and results["environment"][k] for k in ENVIRONMENT_KEYS)
    runs = results["runs"]
    assert [(r["model"], r["defense"], r["probe"]) for r in runs] == [("digits-cnn", None, "fgsm"), ("digits-cnn", "bit-depth", "fgsm")]
    for run in runs:
        assert RUN_KEYS <= set(run)
        assert run["status"] == "ok" and run["samples"] == 16 and run["seed"] == 0
        assert run["data"] == "digits-rgb32"
        assert isinstance(run["params"], dict)
        assert 0.0 <= run["score"] <= 1.0
        metrics = run["metrics"]
        assert 0.5 < metrics["clean_accuracy"] <= 1.0
        robust = metrics["robust_accuracy"]
        assert robust and all(isinstance(k, str) and float(k) >= 0 for k in robust)
        assert all(0.0 <= v <= 1.0 for v in robust.values())
        assert robust["0"] == pytest.approx(metrics["clean_accuracy"])
        assert metrics["auc"] == pytest.approx(run["score"])

    records = pd.read_csv(out / "records.csv")
    assert len(records) == 32  # one row per sample and run
    assert {"run_id", "model", "defense", "probe", "index", "label", "prediction", "correct"} <= set(records.columns)
    assert sorted(records["index"].unique()) == list(range(16))
    assert (out / "runs.sqlite").is_file()

    report = (out / "report.html").read_text()
    assert "digits-cnn" in report and "fgsm" in report and "bit-depth" in report


def test_audit_as_a_script(tmp_path: Path) -> None:
    out = tmp_path / "script-out"
    result = run_subprocess([*_script(), "audit", "--samples", "8", "--probe", "fgsm", "--defense", "none", "--quiet", "--out", out])
    assert result.code == 0, result.err
    assert result.err == f"robustcheck: ok: 1 run, no threshold set; report: {out / 'report.html'}\n"
    runs = _results(out)["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "ok" and runs[0]["samples"] == 8
    assert len(pd.read_csv(out / "records.csv")) == 8
    assert "digits-cnn" in (out / "report.html").read_text()


def test_list(cli: Any) -> None:
    result = cli("list")
    assert result.code == 0, result.err
    for name in ("fgsm", "pgd-linf", "digits-cnn", "digits-rgb32", "bit-depth", "median-filter"):
        assert name in result.out
    probes = cli("list", "probe")
    assert probes.code == 0 and "fgsm" in probes.out
    titles = [line.strip() for line in probes.out.splitlines() if line.strip() in ("models", "data sources", "probes", "defenses")]
    assert titles == ["probes"]  # only the probes table
    assert "default budget: 300 s (three searches of 200 generations" in " ".join(probes.out.split())  # fooling's


@pytest.mark.parametrize(
    "argv", [["list", "probez"], ["audit", "--samples", "many"], ["audit", "--no-such-option"]], ids=["kind", "type", "option"]
)
def test_command_line_syntax_errors_exit_2(cli: Any, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert_one_line_error(result.err)


# --------------------------------------------------------------------------------------------- exit codes


def test_fail_under_exits_1(cli: Any, tmp_path: Path) -> None:
    result = cli("audit", *FAST, "--fail-under", "0.99", "--out", tmp_path / "o")
    assert result.code == 1
    (line,) = result.err.splitlines()  # the verdict, also under --quiet
    assert line.startswith("robustcheck: FAIL: 1 of 1 runs under their threshold (fgsm on digits-cnn: 0.")
    assert line.endswith(f" < 0.990); report: {tmp_path / 'o' / 'report.html'}")
    assert _results(tmp_path / "o")["runs"][0]["score"] < 0.99
    assert cli("audit", *FAST, "--fail-under", "0.01", "--out", tmp_path / "o2").code == 0


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    x = np.random.default_rng(0).uniform(size=(8, 3, 32, 32)).astype(np.float32)
    x[3, 1, 4, 4] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(8) % 10)
    html = tmp_path / "weights.pt"
    html.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n")
    x[3, 1, 4, 4] = 0.9
    x[0] = 0.2  # the first image lies within bounds (0, 0.5), the others do not
    np.savez(tmp_path / "bright.npz", x=x, y=np.arange(8) % 10)
    return {"nan": tmp_path / "nan.npz", "html": html, "missing": tmp_path / "missing.npz", "bright": tmp_path / "bright.npz"}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "digits-cn"], ["unknown model 'digits-cn'", "did you mean 'digits-cnn'"]),
        (["--probe", "fgsmm"], ["unknown probe 'fgsmm'", "did you mean 'fgsm'"]),
        (["--probe", "fgsm:stepz=3"], ["'stepz'", "fgsm"]),
        (["--probe", "fgsm:epsilons=[0,x]"], ["epsilons"]),
        (["--defense", "bit-depht"], ["did you mean 'bit-depth'"]),
        (["--data", "{missing}"], ["missing.npz"]),
        (["--model", "digits-cnn", "--data", "digits"], ["(3, 32, 32)", "(1, 8, 8)"]),
        (["--data", "{nan}"], ["NaN"]),
        (["--model", "digits-cnn:bounds=[0,0.5]", "--data", "{bright}"], ["outside the model bounds"]),
        (["--model", "digits-cnn:weights={html}"], ["HTML page"]),
        (["--model", "{html}"], ["HTML page"]),
        (["--model", "rc_helpers:boom_model"], ["kaboom"]),
        (["--model", "rc_helpers:no_such_factory"], ["no_such_factory"]),
        (["--samples", "0"], ["samples"]),
    ],
    ids=[
        "unknown-model", "unknown-probe", "bad-probe-param", "bad-param-value", "unknown-defense", "missing-data",
        "data-shape", "nan-data", "data-out-of-bounds", "html-weights", "html-model-file", "forward-raises", "missing-factory", "zero-samples",
    ],
)  # fmt: skip
def test_usage_and_input_errors_exit_2(
    cli: Any, helpers: Any, tmp_path: Path, bad_inputs: dict[str, Path], args: list[str], needles: list[str]
) -> None:
    args = [a.format(**{k: str(v) for k, v in bad_inputs.items()}) for a in args]
    defaults = {"--samples": "16", "--probe": "fgsm", "--defense": "none"}
    for option, value in defaults.items():
        if option not in args:
            args += [option, value]
    out = tmp_path / "out"
    result = cli("audit", *args, "--quiet", "--out", out)
    assert result.code == 2
    assert_one_line_error(result.err, *needles)
    assert not (out / "results.json").exists()
    assert stored_runs(out / "runs.sqlite") == {}


def test_probe_that_raises_keeps_finished_runs(cli: Any, helpers: Any, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = cli("audit", *FAST, "--probe", "explode", "--out", out)
    assert result.code == 2
    # the multi-line exception message is folded into one line, then the verdict names the run and the report
    error, verdict = result.err.splitlines()
    assert_one_line_error(error, "explode", "RuntimeError", "boom in the middle of a run")
    assert verdict == f"robustcheck: error: 1 of 2 runs raised (explode on digits-cnn); report: {out / 'report.html'}"

    stored = list(stored_runs(out / "runs.sqlite").values())
    assert [(r["probe"], r["status"]) for r in stored] == [("fgsm", "ok"), ("explode", "error")]
    runs = _results(out)["runs"]
    assert [(r["probe"], r["status"]) for r in runs] == [("fgsm", "ok"), ("explode", "error")]
    assert runs[0]["score"] is not None and runs[1]["score"] is None


def test_timeout_exits_3(cli: Any, helpers: Any, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = cli("audit", "--samples", "8", "--defense", "none", "--probe", "sleepy:sleep=0.3", "--budget", "0.05", "--quiet", "--out", out)
    assert result.code == 3, result.err
    assert "Traceback" not in result.err
    assert result.err.startswith("robustcheck: inconclusive: 1 of 1 runs timed out (sleepy on digits-cnn)")
    (run,) = _results(out)["runs"]
    assert run["status"] == "timeout" and run["score"] is None
    assert "budget" in run["message"]
    # the same probe within its budget is fine
    assert cli("audit", "--samples", "8", "--defense", "none", "--probe", "sleepy:sleep=0.0", "--quiet", "--out", out).code == 0


@pytest.mark.parametrize(("probe", "needle"), [("needs-relu", "Linear/Conv2d/ReLU"), ("needs-captioner", "captioner")])
def test_requirement_mismatch_fails_before_any_run(cli: Any, helpers: Any, tmp_path: Path, probe: str, needle: str) -> None:
    out = tmp_path / "o"
    result = cli("audit", "--samples", "8", "--defense", "none", "--probe", "fgsm", "--probe", probe, "--quiet", "--out", out)
    assert result.code == 2
    assert_one_line_error(result.err, probe, "digits-cnn", needle)
    assert stored_runs(out / "runs.sqlite") == {}  # not even the fgsm run that comes first
    assert not (out / "results.json").exists()


def test_interrupt_prints_resume_hint(cli: Any, helpers: Any, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = cli("audit", *FAST, "--probe", "interrupt", "--out", out)
    assert result.code == 130
    assert "--resume" in result.err and str(out) in result.err and "Traceback" not in result.err
    assert [r["probe"] for r in stored_runs(out / "runs.sqlite").values()] == ["fgsm"]
    assert not (out / "results.json").exists()


# --------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)], ids=["SIGINT", "SIGKILL"])
def test_resume_after_kill_matches_uninterrupted_audit(
    cli: Any, helpers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    gate = tmp_path / "gate-open"
    audit = [
        "audit", "--samples", "16", "--defense", "none", "--seed", "3",
        "--probe", "pgd-linf:steps=3,epsilons=[0,0.03]", "--probe", f"gate:path={gate}", "--probe", "fgsm",
    ]  # fmt: skip
    out = tmp_path / "interrupted"
    # the gate probe blocks until its file exists: the audit is killed after exactly one stored run
    proc = subprocess.Popen(
        [sys.executable, helpers.__file__, *audit, "--quiet", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **SUBPROCESS_ENV},
    )
    try:
        first = wait_for_stored_runs(out / "runs.sqlite", 1, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert [r["probe"] for r in first.values()] == ["pgd-linf"]
    assert not (out / "results.json").exists()

    gate.touch()
    resumed = cli(*audit, "--out", out, "--resume")  # not quiet: the summary marks reused runs
    assert resumed.code == 0, resumed.err
    assert "ok (saved)" in resumed.out
    after = stored_runs(out / "runs.sqlite")
    (pgd_id,) = first
    assert after[pgd_id]["finished"] == first[pgd_id]["finished"]  # not recomputed
    assert len(after) == 3

    fresh = tmp_path / "fresh"
    assert cli(*audit, "--quiet", "--out", fresh).code == 0
    resumed_results, fresh_results = _results(out), _results(fresh)
    assert comparable_runs(resumed_results) == comparable_runs(fresh_results)
    assert resumed_results["runs"][0]["seconds"] == first[pgd_id]["seconds"]  # the stored run, as it was
    pd.testing.assert_frame_equal(pd.read_csv(out / "records.csv"), pd.read_csv(fresh / "records.csv"))
    assert (out / "records.csv").read_text() == (fresh / "records.csv").read_text()


def test_without_resume_everything_is_recomputed(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert cli("audit", *FAST, "--out", out).code == 0
    (first,) = stored_runs(out / "runs.sqlite").values()
    again = cli("audit", *FAST[:-1], "--out", out, "--resume")
    assert again.code == 0 and "ok (saved)" in again.out
    assert cli("audit", *FAST, "--out", out).code == 0
    (second,) = stored_runs(out / "runs.sqlite").values()
    assert second["finished"] != first["finished"]


# --------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_scores_and_records(cli: Any, helpers: Any, tmp_path: Path) -> None:
    pgd = "pgd-linf:steps=3,epsilons=[0,0.03]"  # random start: depends on the seed
    audit = ("audit", "--samples", "16", "--defense", "none", "--probe", pgd, "--probe", "sleepy:sleep=0.0", "--quiet")
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert cli(*audit, "--seed", seed, "--out", tmp_path / name).code == 0
    a, b, c = (_results(tmp_path / n) for n in "abc")
    assert comparable_runs(a) == comparable_runs(b)
    assert (tmp_path / "a" / "records.csv").read_text() == (tmp_path / "b" / "records.csv").read_text()
    assert [r["seed"] for r in c["runs"]] == [8, 8] and c["seed"] == 8
    # the seeded random column of the test probe does change with the seed
    noise = [pd.read_csv(tmp_path / n / "records.csv").query("probe == 'sleepy'")["noise"].tolist() for n in "ac"]
    assert noise[0] != noise[1]


# --------------------------------------------------------------------------------------------- report escaping


def test_hostile_model_name_is_escaped_in_report(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text(
        'samples = 8\ndefenses = ["none"]\nprobes = ["fgsm"]\n'
        f'models = [{{ source = "digits-cnn", name = "{XSS}" }}]\n'
    )
    out = tmp_path / "o"
    result = cli("audit", "--config", config, "--out", out)  # not quiet: the progress bar and table show the name
    assert result.code == 0, result.err
    assert _results(out)["runs"][0]["model"] == XSS
    report = (out / "report.html").read_text()
    assert "<script>alert" not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report


def test_hostile_name_from_the_command_line(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = cli("audit", "--samples", "8", "--probe", "fgsm", "--defense", "none", "--model", f"digits-cnn:name={XSS}", "--out", out)
    assert result.code == 0, result.err
    assert "<script>alert" not in (out / "report.html").read_text()


def test_model_name_with_rich_markup_is_shown_verbatim(cli: Any, tmp_path: Path) -> None:
    # rich reads "[...]" as markup: an unmatched closing tag used to crash the progress bar (exit 1)
    out = tmp_path / "o"
    result = cli("audit", "--samples", "8", "--probe", "fgsm", "--defense", "none", "--model", "digits-cnn:name=[/x]", "--out", out)
    assert result.code == 0, result.err
    assert "[/x]" in result.out


# --------------------------------------------------------------------------------------------- config


def test_config_file(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text(
        "\n".join(
            [
                "seed = 5",
                "samples = 8",
                'out = "from-config"',
                'models = ["digits-cnn"]',
                'defenses = ["none", "bit-depth:bits=4"]',
                "[[probes]]",
                'name = "fgsm"',
                "params = { epsilons = [0, 0.03] }",
                "fail_under = 0.0",
            ]
        )
    )
    result = cli("audit", "--config", config, "--quiet")
    assert result.code == 0, result.err
    results = _results(tmp_path / "from-config")
    assert results["seed"] == 5
    assert [(r["defense"], r["samples"], r["seed"]) for r in results["runs"]] == [(None, 8, 5), ("bit-depth:bits=4", 8, 5)]
    assert results["runs"][0]["params"] == {"epsilons": [0, 0.03]}
    assert set(results["runs"][0]["metrics"]["robust_accuracy"]) == {"0", "0.03"}
    # command-line options override the file
    override = cli("audit", "--config", config, "--quiet", "--samples", "4", "--defense", "none", "--out", tmp_path / "o")
    assert override.code == 0, override.err
    assert [r["samples"] for r in _results(tmp_path / "o")["runs"]] == [4]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("sampels = 8\n", ["'sampels'", "did you mean 'samples'"]),
        ('[[probes]]\nname = "fgsm"\nfail_undr = 0.5\n', ["'fail_undr'", "probes[0]"]),
        ('models = [{ source = "digits-cnn", bonds = [0, 1] }]\n', ["'bonds'", "models[0]"]),
        ("samples = \n", ["not valid TOML"]),
        ('seed = "x"\n', ["'seed' must be an integer"]),
        ("seed = 1.5\n", ["'seed' must be an integer"]),
        ("out = 5\n", ["'out' must be a string"]),
        ("data = 5\n", ["'data' must be a string"]),
        ("defenses = [5]\n", ["defenses[0]"]),
    ],
    ids=["top-level", "probe-table", "model-table", "syntax", "seed-str", "seed-float", "out", "data", "defense-type"],
)
def test_config_errors_exit_2(cli: Any, tmp_path: Path, text: str, needles: list[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = cli("audit", "--config", config, "--quiet", "--out", tmp_path / "o")
    assert result.code == 2
    assert_one_line_error(result.err, "bad.toml", *needles)


@pytest.mark.parametrize(
    ("text", "needle"),
    [('defenses = ["bit-depht"]\n', "did you mean 'bit-depth'"), ('probes = ["fgsm:stepz=1"]\n', "'stepz'")],
    ids=["defense-name", "probe-param"],
)
def test_config_plugin_errors_exit_2(cli: Any, tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("samples = 8\n" + text)
    result = cli("audit", "--config", config, "--quiet", "--out", tmp_path / "o")
    assert result.code == 2
    assert_one_line_error(result.err, needle)


# --------------------------------------------------------------------------------------------- samples, shapes, labels

#: A CIFAR-shaped CNN with a fixed-size Linear head that declares neither input shape nor labels, as users write them.
NETS_SOURCE = '''
import torch
from torch import nn


def cifar_net():
    """Untrained but deterministic: seeded weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 10)).eval()
'''
SORTED_CLASSES = [f"class-{k}" for k in range(10)]
TINY_FGSM = "fgsm:epsilons=[0,0.01]"


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``rc_nets:cifar_net``, importable."""
    folder = tmp_path / "nets"
    folder.mkdir()
    (folder / "rc_nets.py").write_text(NETS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("rc_nets", None)
    return "rc_nets:cifar_net"


@pytest.fixture
def sorted_npz(tmp_path: Path) -> Path:
    """10 classes x 50 CIFAR-shaped uint8 images (N, H, W, C), sorted by class, with a ``classes`` key."""
    rng = np.random.default_rng(0)
    path = tmp_path / "sorted.npz"
    np.savez(path, x=rng.integers(0, 256, size=(500, 32, 32, 3), dtype=np.uint8), y=np.repeat(np.arange(10), 50), classes=SORTED_CLASSES)
    return path


def _sorted_audit(cli: Any, nets: str, data: Path, out: Path, *args: str) -> dict[str, Any]:
    result = cli("audit", "--model", nets, "--data", data, "--probe", TINY_FGSM, "--defense", "none", "--quiet", "--out", out, *args)
    assert result.code == 0, result.err
    return _results(out)


def test_samples_are_class_stratified_and_their_indices_recorded(cli: Any, nets: str, sorted_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    results = _sorted_audit(cli, nets, sorted_npz, out, "--samples", "100")
    (run,) = results["runs"]
    records = pd.read_csv(out / "records.csv")
    counts = records["label"].value_counts()
    assert len(counts) == 10 and all(9 <= c <= 11 for c in counts), counts.to_dict()
    assert len(run["indices"]) == 100 and len(set(run["indices"])) == 100
    assert records["dataset_index"].tolist() == [run["indices"][i] for i in records["index"]]
    assert (records["label"] == records["dataset_index"] // 50).all()  # the label stored at that index of the npz
    # same seed, same samples; another seed, other samples
    assert _sorted_audit(cli, nets, sorted_npz, tmp_path / "again", "--samples", "100")["runs"][0]["indices"] == run["indices"]
    assert _sorted_audit(cli, nets, sorted_npz, tmp_path / "seed1", "--samples", "100", "--seed", "1")["runs"][0]["indices"] != run["indices"]


def test_samples_all(cli: Any, nets: str, sorted_npz: Path, tmp_path: Path) -> None:
    (run,) = _sorted_audit(cli, nets, sorted_npz, tmp_path / "o", "--samples", "all")["runs"]
    assert run["samples"] == 500 and sorted(run["indices"]) == list(range(500))
    assert len(pd.read_csv(tmp_path / "o" / "records.csv")) == 500


def test_duplicated_defense_runs_once(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = cli("audit", "--samples", "8", "--probe", "fgsm", "--probe", "fgsm", "--defense", "none", "--defense", "none", "--quiet", "--out", out)
    assert result.code == 0, result.err
    assert [(r["defense"], r["probe"]) for r in _results(out)["runs"]] == [(None, "fgsm")]
    assert len(pd.read_csv(out / "records.csv")) == 8


def test_labels_come_from_the_data_when_the_model_has_none(cli: Any, nets: str, sorted_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    (run,) = _sorted_audit(cli, nets, sorted_npz, out, "--samples", "20")["runs"]
    assert run["labels"] == SORTED_CLASSES
    records = pd.read_csv(out / "records.csv")
    assert records["label_name"].tolist() == [SORTED_CLASSES[k] for k in records["label"]]


@pytest.fixture
def sees_model() -> Any:
    """A probe ``sees-model`` whose metrics show the model's declared ``input_shape``."""
    from robustcheck import registry
    from robustcheck.api import Probe, ProbeResult

    @registry.register("probe", "sees-model")
    class SeesModel(Probe):
        """Reports the model's declared input shape."""

        score_doc = "1 always."

        def run(self, model: Any, data: Any, context: Any) -> ProbeResult:
            return ProbeResult(1.0, {"input_shape": list(model.input_shape) if model.input_shape else None})

    yield "sees-model"
    registry.unregister("probe", "sees-model")


def test_input_shape_from_the_data_or_the_command_line(cli: Any, nets: str, sorted_npz: Path, sees_model: str, tmp_path: Path) -> None:
    audit = ("audit", "--model", nets, "--data", sorted_npz, "--probe", sees_model, "--defense", "none", "--samples", "10", "--quiet")
    assert cli(*audit, "--out", tmp_path / "a").code == 0
    assert _results(tmp_path / "a")["runs"][0]["metrics"]["input_shape"] == [3, 32, 32]  # the factory declares none
    assert cli(*audit, "--input-shape", "3,32,32", "--out", tmp_path / "b").code == 0
    assert _results(tmp_path / "b")["runs"][0]["metrics"]["input_shape"] == [3, 32, 32]
    wrong = cli(*audit, "--input-shape", "3,16,16", "--out", tmp_path / "c")
    assert wrong.code == 2
    assert_one_line_error(wrong.err, "(3, 16, 16)", "(3, 32, 32)")
    for bad in ("3,32", "3,x,32", "0,32,32"):
        syntax = cli(*audit, "--input-shape", bad, "--out", tmp_path / "d")
        assert syntax.code == 2
        assert_one_line_error(syntax.err, "--input-shape")


@pytest.mark.slow
def test_hundred_samples_of_the_class_sorted_shared_cifar_npz_cover_every_class(cli: Any, nets: str, tmp_path: Path) -> None:
    from helpers import SHARED_DATA

    npz = SHARED_DATA / "cifar10-test-jpeg.npz"
    if not npz.exists():
        pytest.skip(f"shared CIFAR-10 data not found at {npz}")
    with np.load(npz) as content:
        y = content["y"]
    assert (np.diff(y.astype(int)) >= 0).all()  # the file is sorted by class: first-N sampling sees airplanes only
    out = tmp_path / "o"
    (run,) = _sorted_audit(cli, nets, npz, out, "--samples", "100")["runs"]
    records = pd.read_csv(out / "records.csv")
    counts = records["label"].value_counts().sort_index()
    assert counts.index.tolist() == list(range(10)) and all(9 <= c <= 11 for c in counts), counts.to_dict()
    assert (records["label"].to_numpy() == y[records["dataset_index"].to_numpy()]).all()
    assert run["labels"][0] == "airplane" and len(set(run["indices"])) == 100
