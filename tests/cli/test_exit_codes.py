"""Exit codes, verdicts and help of the ``robustcheck`` command line (issue 16).

0 ok, 1 only "a score under a threshold", 2 usage or input error (bad ``--out``, a factory that raised, ...),
3 inconclusive, 4 internal error (one line; ``--debug`` shows the traceback). The verdict is the last line on
stderr, also under ``--quiet``, with the report's path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CONSTANT_MODEL_SOURCE,
    assert_one_line_error,
    robustcheck_command,
    run_subprocess,
    stored_runs,
)

pytestmark = pytest.mark.usefixtures("workdir", "single_thread")

FAST = ("--samples", "8", "--probe", "fgsm", "--defense", "none", "--quiet")

MODELS_SOURCE = CONSTANT_MODEL_SOURCE + '''

def broken():
    """A factory that raises, as one whose weights file is missing does."""
    raise ValueError("no weights in\\n./checkpoints")
'''


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Modules ``rc_exit_models`` (factories ``broken``, ``constant``) and ``rc_exit_import`` (raises on import), importable."""
    folder = tmp_path / "user-models"
    folder.mkdir()
    (folder / "rc_exit_models.py").write_text(MODELS_SOURCE)
    (folder / "rc_exit_import.py").write_text("raise ZeroDivisionError('division by zero at import')\n\ndef build():\n    pass\n")
    monkeypatch.syspath_prepend(str(folder))
    for name in ("rc_exit_models", "rc_exit_import"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return folder


@pytest.fixture
def no_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a run fails the test (the error must come before)."""
    from robustcheck.run.runner import Runner

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        pytest.fail("a run started")

    monkeypatch.setattr(Runner, "run", forbidden)
    monkeypatch.setattr(Runner, "execute", forbidden)


# --------------------------------------------------------------------------------------------- 1 vs 2 vs 4


def test_score_under_threshold_is_1_probe_error_is_2_internal_error_is_4(
    cli: Any, helpers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("audit", *FAST, "--fail-under", "0.99", "--out", tmp_path / "a").code == 1
    assert cli("audit", *FAST, "--probe", "explode", "--out", tmp_path / "b").code == 2

    from robustcheck.run.runner import Runner

    def bug(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("an unexpected\nbug")

    monkeypatch.setattr(Runner, "write_outputs", bug)
    result = cli("audit", *FAST, "--fail-under", "0.99", "--out", tmp_path / "c")
    assert result.code == 4
    (line,) = result.err.splitlines()
    assert line == "robustcheck: internal error: ValueError: an unexpected bug (rerun with --debug for the traceback)"

    debug = cli("audit", *FAST, "--out", tmp_path / "d", "--debug")
    assert debug.code == 4
    assert "Traceback (most recent call last)" in debug.err and "in bug" in debug.err
    assert debug.err.splitlines()[-1] == "robustcheck: internal error: ValueError: an unexpected bug"


def test_internal_error_before_any_run_is_4(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustcheck.run.runner import Runner

    def bug(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("missing")

    monkeypatch.setattr(Runner, "check", bug)
    result = cli("audit", *FAST, "--out", tmp_path / "o")
    assert result.code == 4
    assert result.err.startswith("robustcheck: internal error: KeyError: 'missing'") and "--debug" in result.err
    assert len(result.err.splitlines()) == 1


def test_debug_shows_the_traceback_of_a_usage_error_too(cli: Any, tmp_path: Path) -> None:
    result = cli("audit", *FAST, "--model", "digits-cn", "--out", tmp_path / "o", "--debug")
    assert result.code == 2
    assert "Traceback" in result.err
    assert result.err.splitlines()[-1].startswith("robustcheck: error: unknown model 'digits-cn'")
    assert cli("--debug", "list", "probe").code == 0  # before or after the subcommand


# --------------------------------------------------------------------------------------------- --out


@pytest.mark.parametrize("variant", ["file", "under-file", "results-db-under-file", "broken-link", "config-out-file"])
def test_bad_out_exits_2_before_any_run(cli: Any, tmp_path: Path, no_runs: None, variant: str) -> None:
    existing = tmp_path / "existing.txt"
    existing.write_text("not a folder")
    args: list[str | Path] = []
    if variant == "file":
        args, needles = ["--out", existing], [str(existing), "is an existing file, not a folder", "--out"]
    elif variant == "under-file":
        args, needles = ["--out", existing / "sub" / "dir"], [str(existing / "sub" / "dir"), f"under {str(existing)!r}", "a file"]
    elif variant == "results-db-under-file":
        db = existing / "results.db"
        args, needles = ["--out", tmp_path / "o", "--results-db", db], ["--results-db", str(db), "a file"]
    elif variant == "broken-link":
        link = tmp_path / "link"
        link.symlink_to(tmp_path / "nowhere")
        args, needles = ["--out", link], [str(link), "broken symbolic link"]
    else:
        config = tmp_path / "audit.toml"
        config.write_text(f"out = {str(existing)!r}\n")
        args, needles = ["--config", config], [str(existing), "not a folder"]
    result = cli("audit", *FAST, *args)
    assert result.code == 2
    assert_one_line_error(result.err, *needles)


def test_unwritable_out_exits_2(cli: Any, tmp_path: Path, no_runs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() == 0:  # root writes anywhere: simulate the refusal a read-only folder gives

            def refuse(*args: Any, **kwargs: Any) -> Any:
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
        result = cli("audit", *FAST, "--out", locked / "out")
    finally:
        locked.chmod(0o700)
    assert result.code == 2
    assert_one_line_error(result.err, str(locked / "out"), "cannot be written", f"no write access to {str(locked)!r}", "Permission denied")
    assert not (locked / "out").exists()


def test_out_that_is_an_existing_folder_is_fine(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    assert cli("audit", *FAST, "--out", out).code == 0
    assert (out / "results.json").is_file()


# --------------------------------------------------------------------------------------------- user code that raises


def test_factory_that_raises_exits_2_naming_it(cli: Any, user_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = cli("audit", *FAST, "--model", "rc_exit_models:broken", "--out", out)
    assert result.code == 2
    assert_one_line_error(result.err, "model factory 'rc_exit_models:broken' raised ValueError: no weights in ./checkpoints")
    assert stored_runs(out / "runs.sqlite") == {}

    imported = cli("audit", *FAST, "--model", "rc_exit_import:build", "--out", out)
    assert imported.code == 2
    assert_one_line_error(imported.err, "rc_exit_import:build", "ZeroDivisionError", "division by zero at import")


def test_factory_that_raises_exits_2_as_a_process(user_models: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(user_models), os.environ.get("PYTHONPATH", "")) if p)}
    result = run_subprocess([*robustcheck_command(), "audit", *FAST, "--model", "rc_exit_models:broken", "--out", tmp_path / "o"], env=env)
    assert result.code == 2
    assert_one_line_error(result.err, "model factory 'rc_exit_models:broken' raised ValueError")


# --------------------------------------------------------------------------------------------- verdicts


def test_quiet_prints_the_verdict_with_the_report_path_and_flags(cli: Any, user_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = cli("audit", "--model", "rc_exit_models:constant", "--probe", "fgsm", "--defense", "none", "--samples", "40", "--quiet", "--out", out)
    assert result.code == 0, result.err
    assert result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith("robustcheck: ok: 1 run, no threshold set; 1 flagged (fgsm on rc_exit_models:constant: ")
    assert "constant-prediction" in line
    assert line.endswith(f"; report: {out / 'report.html'}")


def test_summary_has_threshold_and_pass_fail_per_run(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text(
        'samples = 8\ndefenses = ["none", "bit-depth"]\nfail_under = 0.0\n'
        '[[probes]]\nname = "fgsm"\nfail_under = 0.99\n'
        '[[probes]]\nname = "translation"\nparams = { windows = [] }\n'
    )
    out = tmp_path / "o"
    result = cli("audit", "--config", config, "--out", out)
    assert result.code == 1, result.err
    header = next(line for line in result.out.splitlines() if "probe" in line and "score" in line)
    assert "threshold" in header and "verdict" in header
    rows = {(cells[1], cells[2]): cells for line in result.out.splitlines() if (cells := [c.strip() for c in line.split("│")[1:-1]]) and cells[0] == "digits-cnn"}
    assert set(rows) == {("—", "fgsm"), ("—", "translation"), ("bit-depth", "fgsm"), ("bit-depth", "translation")}
    columns = [c.strip() for c in header.split("┃")[1:-1]]
    threshold, verdict = columns.index("threshold"), columns.index("verdict")
    assert rows[("—", "fgsm")][threshold] == "0.990" and rows[("—", "fgsm")][verdict] == "FAIL"
    assert rows[("—", "translation")][threshold] == "0.000" and rows[("—", "translation")][verdict] == "pass"
    (line,) = result.err.splitlines()
    assert line.startswith("robustcheck: FAIL: 2 of 4 runs under their threshold (fgsm on digits-cnn: 0.")
    assert "fgsm on digits-cnn+bit-depth: 0." in line and line.endswith(f"; report: {out / 'report.html'}")


# --------------------------------------------------------------------------------------------- help and list


def test_audit_help_shows_examples_and_exit_codes(cli: Any) -> None:
    result = cli("audit", "--help")
    assert result.code == 0
    assert "examples:" in result.out and "robustcheck audit --config audit.toml --resume" in result.out
    exit_codes = result.out[result.out.index("exit codes:") :]
    for code, text in (("0", "ok"), ("1", "threshold"), ("2", "usage or input error"), ("3", "inconclusive"), ("4", "internal error")):
        assert any(line.split()[:1] == [code] and text in line for line in exit_codes.splitlines()), (code, exit_codes)
    assert "--debug" in result.out and "--quiet" in result.out
    assert "exit codes:" in cli("--help").out


def test_list_shows_plain_descriptions_under_kind_headings(cli: Any) -> None:
    result = cli("list")
    assert result.code == 0, result.err
    assert "``" not in result.out and ":class:" not in result.out and ":func:" not in result.out
    assert "bits per channel" in result.out  # bit-depth: "to ``bits`` bits per channel" in its docstring
    lines = [line.strip() for line in result.out.splitlines()]
    for heading in ("models", "data sources", "probes", "defenses", "verifiers"):
        assert heading in lines, heading
    assert "datas" not in lines


def test_plain_text_strips_rst_markup() -> None:
    from robustcheck.cli.main import plain_text

    text = "uses :class:`~robustcheck.api.Probe`, :func:`torch.load` and ``k=v`` (`default role`)"
    assert plain_text(text) == "uses Probe, torch.load and k=v (default role)"
