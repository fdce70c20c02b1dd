"""Helpers shared by the test modules (import them with ``from helpers import ...``; fixtures live in conftest.py).

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml's ``[tool.pytest.ini_options]``), so this
module is importable from every test folder.

Test probes and model factories live in a small module (``rc_helpers``, source ``HELPERS_SOURCE``) written into a
temporary folder: tests import it in-process (the ``helpers`` fixture, which registers its probes) and run it as a
script in subprocesses (``python rc_helpers.py audit ...`` is ``robustcheck audit ...`` with those probes).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Real data shared between projects (``../shared/data`` next to the repository); tests skip what is absent.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

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


@dataclass
class CliResult:
    code: int
    out: str
    err: str


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


# A module whose factory ``constant()`` builds a digits classifier that always predicts class 3 with
# zero input gradients (written to a temp folder by tests of validity flags and exit codes).
CONSTANT_MODEL_SOURCE = '''
import torch
from torch import nn

from robustcheck.data.builtin import DIGIT_CLASSES
from robustcheck.models.classifier import ImageClassifier


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 5)

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def constant():
    return ImageClassifier(Constant(), input_shape=(1, 8, 8), labels=DIGIT_CLASSES, name="constant", default_data="digits")
'''
