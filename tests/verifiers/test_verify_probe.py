"""The z3-safety probe, regions, VNN-LIB reading/writing and ``robustcheck verify`` (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA

from robustcheck.api import Table
from robustcheck.data.builtin import digits
from robustcheck.errors import InputError, UsageError
from robustcheck.models.classifier import as_classifier
from robustcheck.verifiers.engine import Engine, FloatModel, Options, verify_properties, violates
from robustcheck.verifiers.extraction import from_classifier, from_onnx
from robustcheck.verifiers.regions import linf_box, manipulation_region
from robustcheck.verifiers.vnnlib import (
    read_result,
    read_vnnlib,
    robustness_property,
    write_result,
    write_vnnlib,
)
from robustcheck.verifiers.z3_safety import Z3Safety, find_preimage
from robustcheck.zoo import digits_mlp

pytestmark = pytest.mark.usefixtures("single_thread")

VNNCOMP = SHARED_DATA / "vnncomp-test"


# --------------------------------------------------------------------------------------------- probe
def test_probe_metrics_records_tables_and_curve_on_digits_mlp() -> None:
    model, data = digits_mlp(), digits().head(6)
    result = Z3Safety(eps=0.05, epsilons=[0.01, 0.08], engine="milp", timeout=20)(model, data)
    m = result.metrics
    assert {"verified", "falsified", "unknown", "mean_seconds", "verified_curve"} <= set(m)
    assert m["verified"] + m["falsified"] + m["unknown"] + m["errors"] / max(
        1, m["samples"]
    ) == pytest.approx(1.0)
    assert result.score == pytest.approx(m["verified"])
    curve = m["verified_curve"]
    assert list(curve) == ["0.01", "0.05", "0.08"]
    assert curve["0.01"] >= curve["0.05"] >= curve["0.08"]  # proofs get harder as the ball grows
    assert curve["0.05"] == pytest.approx(m["verified"])
    assert len(result.records) == 6 and {"status", "stage", "seconds", "unstable_relus"} <= set(
        result.records.columns
    )
    assert set(result.records["status"]) <= {"safe", "unsafe", "unknown", "error", "misclassified"}
    assert all(isinstance(t, Table) for t in result.tables) and len(result.tables) == 2
    assert int(result.tables[1].frame.drop(columns="seconds").to_numpy().sum()) == int(
        result.records["correct"].sum()
    )
    unsafe = result.records[result.records["status"] == "unsafe"]
    assert len(result.artifacts) == min(len(unsafe), 4)
    for artifact in result.artifacts:
        assert len(artifact.images) == 3 and artifact.images[1].shape == (1, 8, 8)
    for _, row in unsafe.iterrows():  # counterexamples misclassify on the float32 model, within the ball
        assert row["cex_prediction"] != row["label"] and row["cex_linf"] <= 0.05 + 1e-7
    json.dumps(m)  # JSON-serialisable


def test_probe_parameters_are_validated() -> None:
    with pytest.raises(UsageError, match="engine"):
        Z3Safety(engine="cplex")
    with pytest.raises(UsageError, match="timeout"):
        Z3Safety(timeout=0)
    with pytest.raises(UsageError, match="epsilons"):
        Z3Safety(epsilons=[-1])
    with pytest.raises(UsageError, match="region"):
        Z3Safety(region="l2")


def test_probe_params_reach_the_engine_options() -> None:
    probe = Z3Safety(engine="milp", bounds="interval", timeout=7, branching=False, confirm_milp=True)
    options = probe.options(seed=5)
    assert (options.engine, options.bounds, options.timeout, options.seed) == ("milp", "interval", 7, 5)
    assert options.branching is False and options.confirm_milp is True
    assert Z3Safety().options(0).branching is True and Z3Safety().options(0).confirm_milp is False


def test_same_seed_same_verdicts() -> None:
    model, data = digits_mlp(), digits().head(4)
    first = Z3Safety(eps=0.08, engine="milp")(model, data, seed=3)
    second = Z3Safety(eps=0.08, engine="milp")(model, data, seed=3)
    assert first.records["status"].tolist() == second.records["status"].tolist()


# --------------------------------------------------------------------------------------------- regions
def test_linf_box_is_clipped_to_the_model_bounds() -> None:
    region = linf_box(np.array([0.0, 0.5, 1.0]), 0.1, (0.0, 1.0))
    np.testing.assert_allclose(region.lo, [0.0, 0.4, 0.9])
    np.testing.assert_allclose(region.hi, [0.1, 0.6, 1.0])


@pytest.mark.parametrize("selection", ["activation", "gradient"])
def test_manipulation_region_moves_only_the_selected_dimensions(selection: str) -> None:
    model, data = digits_mlp(), digits()
    net = from_classifier(model)
    x = data.x[0].reshape(-1).double().numpy()
    region = manipulation_region(
        net, x, int(data.y[0]), layer=0, dims=3, span=0.1, num_span=2, selection=selection, bounds=(0.0, 1.0)
    )
    moved = np.flatnonzero(region.hi > region.lo)
    assert set(moved) <= set(region.dims) and len(region.dims) == 3
    assert np.all(region.lo >= 0) and np.all(region.hi <= 1)
    assert region.grid is not None and len(region.grid) <= 5**3
    assert np.all(region.grid >= region.lo - 1e-12) and np.all(region.grid <= region.hi + 1e-12)
    if selection == "activation":  # the paper's heuristic: largest deviation from the layer mean
        deviation = np.abs(x - x.mean())
        assert deviation[region.dims].min() >= np.sort(deviation)[-3] - 1e-12


def test_manipulation_regions_at_input_and_hidden_layer_run_in_the_probe() -> None:
    model, data = digits_mlp(), digits().head(3)
    at_input = Z3Safety(region="manipulation", dims=4, span=0.2, num_span=2, engine="milp")(model, data)
    hidden = Z3Safety(region="manipulation", layer=1, dims=3, span=2.0, engine="milp", timeout=20)(
        model, data
    )
    for result in (at_input, hidden):
        assert set(result.records["status"]) <= {"safe", "unsafe", "unknown"}
    assert hidden.records["message"].str.contains("hidden layer 1").all()


def test_hidden_counterexamples_are_mapped_back_to_an_input() -> None:
    model, data = digits_mlp(), digits()
    net = from_classifier(model)
    x = data.x[1].reshape(-1).double().numpy()
    target = net.activations(x[None])[0][0]  # activations some input does produce: a preimage exists
    preimage = find_preimage(net, 1, target, "milp", (0.0, 1.0), 20)
    assert preimage is not None and np.all(preimage >= 0) and np.all(preimage <= 1)
    np.testing.assert_allclose(net.activations(preimage[None])[0][0], target, atol=1e-3)
    impossible = np.full_like(target, 1e4)  # far beyond what inputs in [0, 1] reach
    assert find_preimage(net, 1, impossible, "milp", (0.0, 1.0), 20) is None


# --------------------------------------------------------------------------------------------- VNN-LIB
def test_vnnlib_write_read_round_trip(tmp_path: Path) -> None:
    prop = robustness_property(np.array([0.0, 0.25]), np.array([0.5, 1.0]), 1, 3)
    path = write_vnnlib(tmp_path / "p.vnnlib", prop, comment="robustness of class 1")
    (back,) = read_vnnlib(path, 2, 3)
    np.testing.assert_array_equal(back.lo, prop.lo)
    np.testing.assert_array_equal(back.hi, prop.hi)
    assert len(back.disjuncts) == 2 and back.strict == prop.strict is True
    for (a, c), (b, d) in zip(back.disjuncts, prop.disjuncts, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, d)


def test_vnnlib_parser_handles_terms_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    text = """; comment
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (and (>= X_0 -1) (<= X_0 1)))
(assert (<= X_1 (/ 1 2)))
"""
    path = tmp_path / "bad.vnnlib"
    path.write_text(text)
    with pytest.raises(InputError, match="unsupported operator"):
        read_vnnlib(path)
    path.write_text(
        text.replace("(/ 1 2)", "0.5")
        + "(assert (>= X_1 -0.5))\n(assert (or (<= (+ Y_0 (* -2 Y_1)) 3) (>= Y_1 Y_0)))\n"
    )
    (prop,) = read_vnnlib(path, 2, 2)
    np.testing.assert_array_equal(prop.lo, [-1, -0.5])
    np.testing.assert_array_equal(prop.hi, [1, 0.5])
    rows = sorted([*map(float, a[0]), float(c[0]) + 0.0] for a, c in prop.disjuncts)
    assert rows == [[1.0, -2.0, 3.0], [1.0, -1.0, 0.0]]  # Y_1 >= Y_0 reads as Y_0 - Y_1 <= 0
    assert not prop.strict
    # a strict output comparison: solved as its closure, but a tie is no counterexample on the float model
    path.write_text(text.replace("(/ 1 2)", "0.5") + "(assert (>= X_1 -0.5))\n(assert (< Y_0 Y_1))\n")
    (strict,) = read_vnnlib(path, 2, 2)
    assert strict.strict and strict.disjuncts[0][0].tolist() == [[1.0, -1.0]]
    assert violates(strict, np.array([[0.4, 0.5], [0.5, 0.5]])).tolist() == [True, False]
    with pytest.raises(InputError, match="2 inputs"):
        read_vnnlib(path, 3, 2)
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1))\n")
    with pytest.raises(InputError, match="no lower or upper bound"):
        read_vnnlib(path)
    path.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)")
    with pytest.raises(InputError, match="unbalanced"):
        read_vnnlib(path)


def test_result_file_format(tmp_path: Path) -> None:
    path = write_result(tmp_path / "out.txt", "sat", np.array([0.5, -1.0]), np.array([2.0]))
    lines = path.read_text().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 0.5)") and lines[-1].endswith("(Y_0 2.0))")
    assert read_result(path) == ("sat", {"X_0": 0.5, "X_1": -1.0, "Y_0": 2.0})
    assert write_result(tmp_path / "u.txt", "unsat").read_text() == "unsat\n"
    with pytest.raises(ValueError):
        write_result(tmp_path / "x.txt", "sat")


@pytest.mark.slow
@pytest.mark.skipif(not VNNCOMP.is_dir(), reason="VNN-COMP test files are absent")
@pytest.mark.parametrize(
    ("onnx", "vnnlib", "expected"),
    [("test_nano", "test_nano", "unsat"), ("test_tiny", "test_tiny", "unsat"), ("test_small", "test_small", "unsat"),
     ("test_sat", "test_prop", "sat"), ("test_unsat", "test_prop", "unsat")],
)  # fmt: skip
@pytest.mark.parametrize("engine", ["z3", "milp"])
def test_vnncomp_test_benchmarks(onnx: str, vnnlib: str, expected: str, engine: str) -> None:
    net, module, shape = from_onnx(str(VNNCOMP / f"{onnx}.onnx"))
    props = read_vnnlib(VNNCOMP / f"{vnnlib}.vnnlib", net.num_inputs, net.num_outputs)
    verifier = Engine(
        net, FloatModel.from_module(module, shape), Options(engine=engine, timeout=60, semantics="real")
    )
    verdict, found, _ = verify_properties(verifier, props, 60)
    assert verdict == expected
    if verdict == "sat":
        y = (
            module(torch.as_tensor(found.counterexample, dtype=torch.float32).reshape(shape))
            .detach()
            .numpy()
            .reshape(-1)
        )
        spec, rhs = props[0].disjuncts[0]
        assert np.all(spec @ y <= rhs)
        assert np.all(found.counterexample >= props[0].lo) and np.all(found.counterexample <= props[0].hi)


# --------------------------------------------------------------------------------------------- CLI
def test_cli_verify_samples(cli: Any) -> None:
    result = cli(
        "verify",
        "--model",
        "digits-mlp",
        "--eps",
        "0.05",
        "--samples",
        "4",
        "--timeout",
        "20",
        "--engine",
        "milp",
    )
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("sample ") for line in lines[:4])
    assert "verified" in lines[-1]
    assert any(" safe " in line for line in lines[:4])


def test_cli_verify_own_model_file_takes_its_input_shape_from_the_data(cli: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "mine.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build() -> nn.Module:\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()\n"
    )
    monkeypatch.chdir(tmp_path)
    result = cli("verify", "--model", "./mine.py:build", "--data", "digits", "--eps", "0.01", "--samples", "5")
    assert result.code == 0, result.err
    assert result.out.strip().splitlines()[-1].startswith("verified ")


def test_probe_on_a_model_that_misclassifies_every_sample_scores_zero() -> None:
    always_zero = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        always_zero[1].weight.zero_()
        always_zero[1].bias.copy_(torch.eye(10)[0])
    data = digits()
    data = data.subset(torch.nonzero(data.y != 0).flatten()[:5])
    model = as_classifier(always_zero, input_shape=(1, 8, 8))
    result = Z3Safety(eps=0.01)(model, data, seed=0)
    assert result.score == 0.0 and result.metrics["clean_accuracy"] == 0.0
    assert (result.records["status"] == "misclassified").all()


def test_cli_verify_vnnlib_writes_a_result_file(cli: Any, tmp_path: Path) -> None:
    data = digits()
    x = data.x[0].reshape(-1).double().numpy()
    unsafe = write_vnnlib(
        tmp_path / "wide.vnnlib",
        robustness_property(np.clip(x - 0.3, 0, 1), np.clip(x + 0.3, 0, 1), int(data.y[0]), 10),
    )
    safe = write_vnnlib(
        tmp_path / "tight.vnnlib",
        robustness_property(np.clip(x - 0.005, 0, 1), np.clip(x + 0.005, 0, 1), int(data.y[0]), 10),
    )
    out = tmp_path / "result.txt"
    result = cli("verify", "--model", "digits-mlp", "--vnnlib", unsafe, "--timeout", "20", "--results", out)
    assert result.code == 0, result.err
    assert "result: sat" in result.out
    status, values = read_result(out)
    assert status == "sat" and len(values) == 64 + 10
    x_cex = np.array([values[f"X_{i}"] for i in range(64)], dtype=np.float32)
    logits = digits_mlp().predict(torch.as_tensor(x_cex).reshape(1, 1, 8, 8))[0]
    assert int(logits.argmax()) != int(data.y[0])
    result = cli("verify", "--model", "digits-mlp", "--vnnlib", safe, "--timeout", "20", "--results", out)
    assert result.code == 0 and "result: unsat" in result.out
    assert read_result(out)[0] == "unsat"


def test_cli_verify_usage_errors(cli: Any, tmp_path: Path) -> None:
    result = cli("verify", "--model", "digits-mlp", "--samples", "2")
    assert result.code == 2 and "--eps" in result.err
    result = cli("verify", "--model", "digits-cnn", "--eps", "0.01", "--samples", "1")
    assert result.code == 2 and "MaxPool2d" in result.err and len(result.err.strip().splitlines()) == 1
