"""The installed wheel carries what the package reads at run time: templates and zoo weights."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("robustcheck_harness-*.whl"))


def test_wheel_ships_templates_weights_and_entry_points(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "robustcheck/reports/templates/report.html.j2",
        "robustcheck/reports/templates/leaderboard.html.j2",
        "robustcheck/zoo/digits-cnn.pt",
        "robustcheck/zoo/digits-mlp.pt",
        "robustcheck/zoo/digits-mlp-robust.pt",
        "robustcheck/py.typed",
    ):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for group in ("[robustcheck.models]", "[robustcheck.probes]", "[robustcheck.defenses]", "[robustcheck.data]", "[pytest11]"):
        assert group in text


def test_report_renders_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True, capture_output=True)
    script = (
        "import robustcheck.reports.html as h, sys; "
        "assert h.__file__.startswith(sys.argv[1]), h.__file__; "
        "print(len(h.render_report({'robustcheck_version': '0', 'created': '', 'seed': 0, 'environment': {}, 'runs': []})))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(site)], env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 500
