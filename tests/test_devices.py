"""Device choice (robustcheck.devices): names checked without torch, resolved where runs execute, recorded.

Everything here runs on the CPU; the GPU test runs where CUDA is present and is skipped elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_one_line_error

from robustcheck.devices import check_device_name, describe_device, resolve_device
from robustcheck.errors import UsageError
from robustcheck.models.loading import load_model
from robustcheck.run.runner import Runner, RunSpec

pytestmark = pytest.mark.usefixtures("single_thread")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names(name: str) -> None:
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "", "cpu:0 "])
def test_bad_device_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="device must be one of auto, cpu, cuda, cuda:N, mps"):
        check_device_name(name)


def test_auto_and_cpu_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in {expected, "mps"}
    assert describe_device(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match=r"device 'cuda:1' asked for, but .*; use --device cpu or auto"):
        resolve_device("cuda:1")


def test_the_run_records_the_device_it_used() -> None:
    outcome = Runner().execute(RunSpec(model="digits-mlp", probe="fgsm", samples=8, device="cpu"))
    assert outcome.result.status == "ok"
    assert outcome.to_json()["device"] == "cpu"


def test_the_device_is_not_part_of_the_run_id() -> None:
    assert RunSpec(model="m", probe="fgsm", device="cpu").run_id == RunSpec(model="m", probe="fgsm").run_id


def test_without_a_device_in_memory_models_stay_where_they_are() -> None:
    model = load_model("digits-mlp")
    runner = Runner()
    runner.add_model("mine", model)
    outcome = runner.execute(RunSpec(model="mine", data="digits", probe="fgsm", samples=8))
    assert outcome.device == "cpu" and next(model.parameters()).device.type == "cpu"


def test_cli_device_in_results_and_refusals(cli: Any, workdir: Path) -> None:
    done = cli("audit", "--probe", "fgsm", "--defense", "none", "--samples", "8", "--device", "cpu", "--quiet", "--out", "out")
    assert done.code == 0, done.err
    results = json.loads(Path("out/results.json").read_text())
    assert results["environment"]["device"] == "cpu"
    assert [run["device"] for run in results["runs"]] == ["cpu"]
    bad = cli("audit", "--probe", "fgsm", "--device", "gpu", "--quiet", "--out", "bad")
    assert bad.code == 2
    assert_one_line_error(bad.err, "device must be one of")
    assert not Path("bad").exists()


def test_toml_device_key(cli: Any, workdir: Path) -> None:
    Path("audit.toml").write_text('device = "cpu"\nsamples = 8\nprobes = [{ name = "fgsm" }]\ndefenses = ["none"]\n')
    done = cli("audit", "--config", "audit.toml", "--quiet", "--out", "out")
    assert done.code == 0, done.err
    assert json.loads(Path("out/results.json").read_text())["runs"][0]["device"] == "cpu"


@CUDA
def test_cuda_runs_on_the_gpu_and_says_so() -> None:
    outcome = Runner().execute(RunSpec(model="digits-cnn", probe="pgd-linf:steps=5", samples=16, device="cuda"))
    assert outcome.result.status == "ok", outcome.result.message
    assert outcome.device.startswith("cuda:0")
    on_cpu = Runner().execute(RunSpec(model="digits-cnn", probe="pgd-linf:steps=5", samples=16, device="cpu"))
    assert outcome.result.metrics["clean_accuracy"] == on_cpu.result.metrics["clean_accuracy"]
