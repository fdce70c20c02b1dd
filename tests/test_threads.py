"""Tests of robustcheck.threads: available CPUs (affinity, cgroup quota), the default, torch's thread count,
and the ``--threads`` / ``threads =`` / ``--robustcheck-threads`` options."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from robustcheck import threads
from robustcheck.threads import available_cpus, configure_threads, default_threads

pytest_plugins = ["pytester"]


@pytest.fixture
def restore_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_available_cpus_follows_the_affinity_mask(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert available_cpus(tmp_path) == 1  # tmp_path: no cgroup files, no quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    assert available_cpus(tmp_path) == 4


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", 8)],
)
def test_available_cpus_follows_a_cgroup_v2_quota(
    eight_cpus: None, tmp_path: Path, cpu_max: str, expected: int
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert available_cpus(tmp_path) == expected


@pytest.mark.parametrize(("quota", "expected"), [("300000", 3), ("-1", 8)])
def test_available_cpus_follows_a_cgroup_v1_quota(
    eight_cpus: None, tmp_path: Path, quota: str, expected: int
) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == expected


def test_default_threads_is_small_and_one_on_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0.3)
    assert default_threads() == 2
    assert default_threads(current=1) == 1  # never more than the process already allows (OMP_NUM_THREADS)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 16.0)
    assert default_threads() == 1
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    # one 2-thread competitor on 2 cores: 2 passive threads (faster than 1, measured)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 2.0)
    assert default_threads() == 2
    monkeypatch.setattr(threads, "busy_cpus", lambda: 4.0)  # heavily oversubscribed
    assert default_threads() == 1
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0.0)
    assert default_threads() == 1


def test_busy_cpus_reads_load_and_running_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(threads, "_read", lambda path: "0.50 0.40 0.30 4/300 1234")
    assert threads.busy_cpus(samples=2, interval_s=0) == 3.0  # 4 running, this thread among them
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 1.0, 1.0))
    assert threads.busy_cpus(samples=2, interval_s=0) == 6.0


def test_configure_threads_sets_torch(restore_threads: None) -> None:
    import torch

    assert configure_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert 1 <= configure_threads(None) <= 2
    assert torch.get_num_threads() == configure_threads(None)
    with pytest.raises(ValueError, match="positive integer"):
        configure_threads(0)


def test_prefer_passive_waiting_keeps_a_value_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads.prefer_passive_waiting()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.prefer_passive_waiting()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_cli_threads_option(cli, workdir: Path, restore_threads: None) -> None:  # noqa: ANN001
    import torch

    result = cli(
        "audit", "--samples", "8", "--probe", "fgsm", "--defense", "none", "--quiet", "--threads", "1"
    )
    assert result.code == 0, result.err
    assert torch.get_num_threads() == 1
    result = cli(
        "audit", "--samples", "8", "--probe", "fgsm", "--defense", "none", "--quiet", "--threads", "0"
    )
    assert result.code == 2
    assert "threads" in result.err and "positive integer" in result.err
    assert "Traceback" not in result.err


def test_toml_threads_key(workdir: Path) -> None:
    from robustcheck.errors import UsageError
    from robustcheck.run.plan import AuditPlan

    (workdir / "audit.toml").write_text("threads = 1\n")
    assert AuditPlan.from_sources({}, workdir / "audit.toml").threads == 1
    assert AuditPlan.from_sources({}).threads is None
    assert (
        AuditPlan.from_sources({"threads": 2}, workdir / "audit.toml").threads == 2
    )  # the command line wins
    (workdir / "audit.toml").write_text("threads = 0\n")
    with pytest.raises(UsageError, match="threads"):
        AuditPlan.from_sources({}, workdir / "audit.toml")


def test_pytest_option_rejects_zero_threads(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    installed = any(ep.name == "robustcheck" for ep in entry_points(group="pytest11"))
    plugin = "robustcheck" if installed else "robustcheck.pytest_plugin"
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
    result = pytester.runpytest("-p", plugin, *quiet, "-p", "no:cacheprovider", "--robustcheck-threads", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--robustcheck-threads must be a positive integer, got 0*"])
