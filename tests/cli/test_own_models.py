"""One's own model, the three documented ways (README "Your own model"), each audited by the CLI on a
CIFAR-shaped CNN with a Linear head (3x32x32 -> conv -> flatten -> Linear) and a small 3x32x32 npz:

1. ``mymodel:build`` from the current folder without PYTHONPATH (a subprocess whose sys.path lacks the
   current folder, as the installed ``robustcheck`` script's does);
2. ``path/to/file.py:build`` (the file imports a sibling module);
3. a saved model: TorchScript, and a pickled whole module (``torch.save(model)``) only with ``--trust-pickle``.

A factory that raises exits 2 with one line naming it and its exception.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SUBPROCESS_ENV, CliResult, assert_one_line_error, robustcheck_command

pytestmark = pytest.mark.usefixtures("single_thread")

LAYERS_SOURCE = '''
import torch
from torch import nn


class CifarNet(nn.Module):
    """3x32x32 -> conv -> flatten -> Linear: takes 32x32 images only."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.head = nn.Linear(width * 16 * 16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))
'''
FACTORY_SOURCE = '''
import torch

from cifar_layers import CifarNet  # a sibling module: found because the file's folder is importable


def build(width: int = 8):
    torch.manual_seed(0)
    return CifarNet(width).eval()


def broken():
    raise RuntimeError("no weights at /nowhere/cifar.pt")
'''
AUDIT = ("--samples", "20", "--probe", "fgsm", "--defense", "none")


def _write_model(folder: Path, module: str = "mymodel") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cifar_layers.py").write_text(LAYERS_SOURCE)
    path = folder / f"{module}.py"
    path.write_text(FACTORY_SOURCE)
    return path


def _npz(path: Path, n: int = 40) -> Path:
    """``n`` random 32x32 RGB images (HWC uint8), labels cycling through 10 classes."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % 10)
    return path


def _statuses(out: Path) -> list[str]:
    return [run["status"] for run in json.loads((out / "results.json").read_text())["runs"]]


@pytest.fixture
def fresh_imports() -> Any:
    """Forget the modules a test imports from its temporary folder (``mymodel``, ``cifar_layers``)."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name in ("mymodel", "cifar_layers") or name.startswith("_robustcheck_model_"):
            sys.modules.pop(name, None)


def _run_in(cwd: Path, *args: str | Path) -> CliResult:
    """``robustcheck ARGS`` in ``cwd`` as the installed script runs it: the current folder is not on sys.path
    (``python -P``) and PYTHONPATH is unset."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-P", *robustcheck_command()[1:], *map(str, args)]
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**env, **SUBPROCESS_ENV}, timeout=300)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_module_factory_from_the_current_folder_without_pythonpath(tmp_path: Path) -> None:
    _write_model(tmp_path)
    _npz(tmp_path / "cifar.npz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-P", "-c", "import mymodel"], cwd=tmp_path, capture_output=True, env=env)
    assert probe.returncode != 0, "the current folder must not be importable by itself for this test to mean anything"
    result = _run_in(tmp_path, "audit", "--model", "mymodel:build", "--data", "cifar.npz", *AUDIT, "--out", "out", "--quiet")
    assert result.code == 0, result.err
    assert _statuses(tmp_path / "out") == ["ok"]
    failed = _run_in(tmp_path, "audit", "--model", "mymodel:broken", "--data", "cifar.npz", *AUDIT, "--out", "out2", "--quiet")
    assert failed.code == 2, failed.err
    assert_one_line_error(failed.err, "'mymodel:broken'", "RuntimeError: no weights at /nowhere/cifar.pt")


def test_python_file_factory(cli: Any, workdir: Path, fresh_imports: None) -> None:
    _write_model(workdir / "models", "cifar_model")
    _npz(workdir / "cifar.npz")
    result = cli("audit", "--model", "models/cifar_model.py:build", "--data", "cifar.npz", *AUDIT, "--out", "out", "--quiet")
    assert result.code == 0, result.err
    assert _statuses(workdir / "out") == ["ok"]
    runs = json.loads((workdir / "out" / "results.json").read_text())["runs"]
    assert runs[0]["model"] == "models/cifar_model.py:build"
    wide = cli("audit", "--model", "models/cifar_model.py:build:width=4", "--data", "cifar.npz", *AUDIT, "--out", "wide", "--quiet")
    assert wide.code == 0, wide.err


def test_factory_that_raises_exits_2_naming_it(cli: Any, workdir: Path, fresh_imports: None) -> None:
    _write_model(workdir / "models", "cifar_model")
    _npz(workdir / "cifar.npz")
    result = cli("audit", "--model", "models/cifar_model.py:broken", "--data", "cifar.npz", *AUDIT, "--out", "out", "--quiet")
    assert result.code == 2, result.err
    assert_one_line_error(result.err, "model factory 'models/cifar_model.py:broken' raised RuntimeError: no weights at /nowhere/cifar.pt")
    missing = cli("audit", "--model", "models/nope.py:build", "--data", "cifar.npz", *AUDIT, "--out", "out", "--quiet")
    assert missing.code == 2
    assert_one_line_error(missing.err, "'models/nope.py'", "does not exist")


def _save_pickled(folder: Path) -> Path:
    """``torch.save(model)`` of a CifarNet whose class lives in ``folder/cifar_layers.py``, as a user's script does."""
    _write_model(folder)
    sys.path.insert(0, str(folder))
    try:
        import cifar_layers

        torch.manual_seed(0)
        path = folder / "cifar-net.pth"
        torch.save(cifar_layers.CifarNet().eval(), path)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("cifar_layers", None)
    return path


def test_saved_models_torchscript_and_pickle_with_trust(cli: Any, workdir: Path, fresh_imports: None) -> None:
    _npz(workdir / "cifar.npz")
    path = _save_pickled(workdir / "saved")
    refused = cli("audit", "--model", "saved/cifar-net.pth", "--data", "cifar.npz", *AUDIT, "--out", "out", "--quiet")
    assert refused.code == 2, refused.err
    assert_one_line_error(refused.err, "'saved/cifar-net.pth' is a pickled module", "runs code", "--trust-pickle")
    assert not (workdir / "out" / "results.json").exists()
    trusted = cli("audit", "--model", "saved/cifar-net.pth", "--trust-pickle", "--data", "cifar.npz", *AUDIT, "--out", "out", "--quiet")
    assert trusted.code == 0, trusted.err
    assert _statuses(workdir / "out") == ["ok"]
    # TorchScript needs no opt-in: it runs no Python code from the file
    module = torch.load(path, weights_only=False)
    with warnings.catch_warnings():  # torch >= 2.10 deprecates creating TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(module, torch.rand(1, 3, 32, 32)).save(str(workdir / "cifar-net.ts"))
    scripted = cli("audit", "--model", "cifar-net.ts", "--data", "cifar.npz", *AUDIT, "--out", "ts", "--quiet")
    assert scripted.code == 0, scripted.err
    assert _statuses(workdir / "ts") == ["ok"]


def test_trust_pickle_in_a_config_model_table(cli: Any, workdir: Path, fresh_imports: None) -> None:
    _npz(workdir / "cifar.npz")
    _save_pickled(workdir / "saved")
    config = workdir / "audit.toml"
    config.write_text(
        'samples = 20\ndefenses = ["none"]\nprobes = ["fgsm"]\ndata = "cifar.npz"\nout = "out"\n'
        'models = [{ source = "saved/cifar-net.pth", trust_pickle = true, name = "pickled" }]\n'
    )
    result = cli("audit", "--config", config, "--quiet")
    assert result.code == 0, result.err
    runs = json.loads((workdir / "out" / "results.json").read_text())["runs"]
    assert [(r["model"], r["status"]) for r in runs] == [("pickled", "ok")]
    config.write_text(config.read_text().replace("trust_pickle = true", "trust_pickle = false"))
    refused = cli("audit", "--config", config, "--quiet", "--out", "out2")
    assert refused.code == 2
    assert_one_line_error(refused.err, "--trust-pickle")
