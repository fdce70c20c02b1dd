"""Shared fixtures for the runner, CLI and plugin tests.

Test probes and model factories live in a small module (``rc_helpers``) written into a temporary
folder: tests import it in-process (which registers its probes) and run it as a script in
subprocesses (``python rc_helpers.py audit ...`` is ``robustcheck audit ...`` with those probes).
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HELPERS_MODULE = "rc_helpers"
HELPER_PROBES = ("explode", "sleepy", "gate", "needs-relu", "needs-captioner", "interrupt", "numpy-metrics", "crash-once")

HELPERS_SOURCE = '''
"""Probes and model factories used by robustcheck's tests."""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcheck.api import Probe, ProbeResult, Table
from robustcheck.data.builtin import DIGIT_CLASSES
from robustcheck.models.classifier import ImageClassifier
from robustcheck.registry import register

class Accuracy(Probe):
    """Clean accuracy as score; records carry a seeded random number per sample."""

    score_doc = "Clean accuracy."

    def evaluate(self, model, data, context):
        prediction = model.predict(data.x).argmax(1)
        correct = prediction == data.y
        records = pd.DataFrame(
            {
                "index": range(len(data)),
                "label": data.y.tolist(),
                "prediction": prediction.tolist(),
                "correct": correct.tolist(),
                "noise": torch.rand(len(data)).tolist(),  # the runner seeds torch
            }
        )
        context.advance(len(data))
        accuracy = float(correct.float().mean())
        return ProbeResult(accuracy, {"clean_accuracy": accuracy, "robust_accuracy": {"0": accuracy}, "auc": accuracy}, records)

    def run(self, model, data, context):
        return self.evaluate(model, data, context)

    shardable = True

    def merge(self, parts, offsets):
        frames = [p.records.assign(index=p.records["index"] + offset) for p, offset in zip(parts, offsets)]
        records = pd.concat(frames, ignore_index=True)
        accuracy = float(records["correct"].mean())
        return ProbeResult(accuracy, {"clean_accuracy": accuracy, "robust_accuracy": {"0": accuracy}, "auc": accuracy}, records)


@register("probe", "explode")
class Explode(Probe):
    """Raises in the middle of its run."""

    score_doc = "None: it raises."

    def run(self, model, data, context):
        model.predict(data.x[:2])
        raise RuntimeError("boom in the middle\\nof a run")


@register("probe", "sleepy")
class Sleepy(Accuracy):
    """Sleeps, then checks its time budget."""

    defaults = {"sleep": 0.3}

    def run(self, model, data, context):
        time.sleep(self.params["sleep"])
        context.check_time()
        return self.evaluate(model, data, context)


@register("probe", "gate")
class Gate(Accuracy):
    """Waits until the file ``path`` exists: lets a test interrupt an audit at a known point."""

    defaults = {"path": ""}

    def run(self, model, data, context):
        while not Path(self.params["path"]).exists():
            time.sleep(0.02)
        return self.evaluate(model, data, context)


@register("probe", "needs-relu")
class NeedsRelu(Accuracy):
    """Needs a ReLU network."""

    requires = frozenset({"relu-network"})


@register("probe", "needs-captioner")
class NeedsCaptioner(Accuracy):
    """Needs a captioner."""

    requires = frozenset({"captioner"})


@register("probe", "interrupt")
class Interrupt(Probe):
    """Behaves as if the user pressed Ctrl-C during the run."""

    score_doc = "None: it is interrupted."

    def run(self, model, data, context):
        raise KeyboardInterrupt


@register("probe", "numpy-metrics")
class NumpyMetrics(Accuracy):
    """Returns numpy scalars and arrays in its metrics, as third-party probes often do."""

    def run(self, model, data, context):
        result = self.evaluate(model, data, context)
        correct = result.records["correct"].to_numpy()
        result.metrics.update(
            {"correct": correct.sum(), "all_correct": correct.all(), "mean": np.float32(correct.mean()), "flags": correct[:3]}
        )
        counts = pd.DataFrame({"label": np.arange(3), "correct": [np.int64(v) for v in correct[:3]]})
        result.tables.append(Table("first three", counts, note="numpy cells"))
        return result


@register("probe", "crash-once")
class CrashOnce(Accuracy):
    """Kills its own process the first time (marker file ``path`` absent), then runs normally."""

    defaults = {"path": ""}

    def run(self, model, data, context):
        marker = Path(self.params["path"])
        if not marker.exists():
            marker.write_text("crashed once")
            import os

            os._exit(1)  # a worker dying mid-task, as an OOM kill or a lost node would
        return self.evaluate(model, data, context)


class Kaboom(nn.Module):
    def forward(self, x):
        raise RuntimeError("kaboom")


def boom_model():
    """A model whose forward raises."""
    return ImageClassifier(Kaboom(), input_shape=(3, 32, 32), labels=DIGIT_CLASSES, name="boom", default_data="digits-rgb32")


if __name__ == "__main__":
    from robustcheck.cli.main import main

    sys.exit(main(sys.argv[1:]))
'''


#: Subprocesses run torch on one thread, like the in-process tests (see ``single_thread``).
SUBPROCESS_ENV = {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run torch on one thread: the tiny test audits are faster so, above all on a busy machine
    (two threads on two shared cores thrash), and in-process and subprocess results stay comparable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary folder, with a wide terminal for rich tables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The ``rc_helpers`` module, importable (on sys.path) with its probes registered in-process."""
    from robustcheck import registry

    folder = tmp_path / "helpers"
    folder.mkdir()
    (folder / f"{HELPERS_MODULE}.py").write_text(HELPERS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(HELPERS_MODULE, None)
    module = importlib.import_module(HELPERS_MODULE)
    try:
        yield module
    finally:
        for name in HELPER_PROBES:
            registry.unregister("probe", name)
        sys.modules.pop(HELPERS_MODULE, None)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``robustcheck.cli.main.main`` in-process: ``cli("audit", "--quiet", ...)`` -> CliResult."""
    from robustcheck.cli.main import main

    def run(*argv: str | Path) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def robustcheck_command() -> list[str]:
    """``robustcheck`` as a module run by this interpreter."""
    return [sys.executable, "-m", "robustcheck.cli.main"]


def run_subprocess(args: Sequence[str | Path], *, env: dict[str, str] | None = None, timeout: float = 180) -> CliResult:
    full_env = {**os.environ, **SUBPROCESS_ENV, **(env or {})}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=full_env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(err: str, *needles: str) -> None:
    """stderr is exactly one line ``robustcheck: error: ...`` holding every needle, without a traceback."""
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("robustcheck: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def stored_runs(path: Path) -> dict[str, dict[str, Any]]:
    """``run_id -> {result..., "finished": ...}`` of a run store, read directly with sqlite3."""
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=30)
    try:
        rows = db.execute("SELECT run_id, result, finished FROM runs").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        db.close()
    return {run_id: {**json.loads(result), "finished": finished} for run_id, result, finished in rows}


def wait_for_stored_runs(path: Path, count: int, proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    """Poll the run store until it holds ``count`` runs (fail if ``proc`` ends first)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        runs = stored_runs(path)
        if len(runs) >= count:
            return runs
        if proc.poll() is not None:
            raise AssertionError(f"audit ended (exit {proc.returncode}) before {count} runs were stored: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError(f"no {count} runs stored in {path} within {timeout} s")


def comparable_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of a results.json without what may differ between equal audits (timings)."""
    return [{k: v for k, v in run.items() if k != "seconds"} for run in results["runs"]]


# --------------------------------------------------------------------------- CIFAR-10 model for slow tests

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10-test-jpeg.npz"
CIFAR_MODEL_VERSION = "v2"  # bump when the architecture or training recipe changes (invalidates the cache)


@pytest.fixture(scope="session")
def cifar_model(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """A small CIFAR-10 CNN trained here on 8,000 of the shared CIFAR-10 test images, and the other 2,000.

    Returns ``(ImageClassifier for 3x32x32 inputs in [0, 1], held-out ImageDataset)``; the held-out images
    cycle through the classes (0, 1, ..., 9, 0, 1, ...), so ``head(n)`` is class-balanced. The weights are cached
    in pytest's cache folder, so only the first slow run pays for training (about 2 minutes on 2 cores).
    Skips when ``../shared/data/cifar10-test-jpeg.npz`` is absent.
    """
    if not CIFAR_NPZ.exists():
        pytest.skip(f"CIFAR-10 data not found at {CIFAR_NPZ}")
    import numpy as np
    import torch

    from robustcheck.data.dataset import ImageDataset, hwc_uint8_to_tensor
    from robustcheck.models.classifier import ImageClassifier
    from robustcheck.zoo.cifar import CIFAR_MEAN, CIFAR_STD, cifar_cnn, held_out_split, train_cifar_cnn

    with np.load(CIFAR_NPZ) as npz:
        x, y, classes = hwc_uint8_to_tensor(npz["x"]), torch.from_numpy(npz["y"].astype(np.int64)), [str(c) for c in npz["classes"]]
    train, held_out = held_out_split(y)  # every fifth image (200 per class), classes interleaved
    weights = Path(request.config.cache.mkdir("robustcheck-cifar")) / f"cifar-cnn-{CIFAR_MODEL_VERSION}.pt"
    module = cifar_cnn()
    if weights.exists():
        module.load_state_dict(torch.load(weights, weights_only=True))
    else:
        module = train_cifar_cnn(x[train], y[train])
        torch.save(module.state_dict(), weights)
    model = ImageClassifier(
        module.eval(), bounds=(0.0, 1.0), mean=CIFAR_MEAN, std=CIFAR_STD, labels=classes, input_shape=(3, 32, 32), name="cifar-cnn"
    )
    return model, ImageDataset(x[held_out], y[held_out], classes, name="cifar10-test-jpeg:held-out")
