"""A third-party plugin package, installed with pip, is found through its entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import robustcheck_command, run_subprocess

DIST = "robustcheck-always-robust"

PYPROJECT = f"""
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{DIST}"
version = "0.0.1"
description = "A test plugin for robustcheck"

[project.entry-points."robustcheck.probes"]
always-robust = "rc_always_robust:AlwaysRobust"

[project.entry-points."robustcheck.defenses"]
pass-through = "rc_always_robust:PassThrough"

[tool.setuptools]
py-modules = ["rc_always_robust"]
"""

MODULE = '''
"""A probe that finds every sample robust, and a defense that changes nothing."""

import pandas as pd
from torch import nn

from robustcheck.api import Defense, Probe, ProbeResult


class AlwaysRobust(Probe):
    """Declares every sample robust (plugin test)."""

    score_doc = "Always 1."

    def run(self, model, data, context):
        prediction = model.predict(data.x).argmax(1)
        records = pd.DataFrame({"index": range(len(data)), "label": data.y.tolist(), "prediction": prediction.tolist()})
        context.advance(len(data))
        return ProbeResult(1.0, {"clean_accuracy": float((prediction == data.y).float().mean())}, records)


class PassThrough(Defense):
    """Passes images through unchanged (plugin test)."""

    def transform(self, model):
        return nn.Identity()
'''


def test_installed_plugin_package(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (package / "rc_always_robust.py").write_text(MODULE)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", "--target", str(site), str(package)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert install.returncode == 0, install.stderr
    assert list(site.glob("robustcheck_always_robust-0.0.1.dist-info"))

    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path}
    listing = run_subprocess([*robustcheck_command(), "list", "probe"], env=env)
    assert listing.code == 0, listing.err
    (line,) = [line for line in listing.out.splitlines() if "always-robust" in line]
    assert DIST in line and "Declares every sample robust" in line
    assert "fgsm" in listing.out  # the built-ins are still there

    out = tmp_path / "out"
    audit = run_subprocess(
        [*robustcheck_command(), "audit", "--probe", "always-robust", "--defense", "none", "--defense", "pass-through",
         "--samples", "8", "--quiet", "--out", str(out)],
        env=env,
    )  # fmt: skip
    assert audit.code == 0, audit.err
    assert audit.err.startswith("robustcheck: ok: 2 runs"), audit.err
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["probe"], r["defense"], r["score"], r["status"], r["samples"]) for r in runs] == [
        ("always-robust", None, 1.0, "ok", 8),
        ("always-robust", "pass-through", 1.0, "ok", 8),
    ]
    assert runs[0]["score_doc"] == "Always 1."
    # this interpreter, without the extra path, does not see the plugin
    from robustcheck import registry

    assert "always-robust" not in registry.names("probe")
