"""How many CPU threads torch may use: the CPUs really available, and a default fit for shared machines.

torch's default (one intra-op thread per core, OpenMP threads that spin while they wait) is fast on an
idle machine and very slow on a busy one: with one other process doing 2-thread torch work on 2 cores,
a small audit took more than 80 s instead of 5.5 s, as the threads of each parallel region wait for one
another while the competitor holds the cores. ``benchmarks/bench_contention.py`` measures this.

* :func:`available_cpus`: the CPUs this process may run on (affinity mask and cgroup CPU quota).
* :func:`prefer_passive_waiting`: ``OMP_WAIT_POLICY=PASSIVE`` (unless set), so idle OpenMP threads sleep
  instead of spinning on cores other processes need. OpenMP reads it once, when torch loads it: the
  command line calls this before torch is imported (``robustcheck/cli/__init__.py``), the pytest plugin in
  ``pytest_configure``; later calls have no effect on a running process.
* :func:`configure_threads`: sets torch's intra-op threads, to ``n`` or to :func:`default_threads`.

Results do not depend on the thread count (checked: the audit scores are the same with 1 and 2 threads).
This module imports nothing heavy at module level; torch is imported inside :func:`configure_threads`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: at most this many threads by default: on small models a third thread gains little and costs much
#: under contention; pass ``--threads N`` (``threads = N``) for more.
DEFAULT_MAX_THREADS = 2


def available_cpus(cgroup_root: str | Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (at least 1).

    The quota is read from cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"200000 100000"``) or cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none), under ``cgroup_root`` (a parameter
    for tests); a quota of 1.5 CPUs counts as 2.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _cgroup_quota(root: Path) -> int | None:
    """The cgroup CPU quota in whole CPUs (rounded up), or ``None`` where there is none."""
    for folder in _cgroup_folders(root, v2=True):  # cgroup v2
        text = _read(folder / "cpu.max")
        if text is not None:
            parts = text.split()
            if len(parts) >= 2 and parts[0] != "max":
                return _cpus(parts[0], parts[1])
            if parts:
                return None
    for folder in _cgroup_folders(root, v2=False):  # cgroup v1
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _cpus(quota, period)
    return None


def _cgroup_folders(root: Path, *, v2: bool) -> list[Path]:
    """Where the quota of this process's cgroup may be: its own folder (from /proc/self/cgroup), the root."""
    folders = []
    own = _own_cgroup(v2=v2)
    if v2:
        if own:
            folders.append(root / own)
        folders.append(root)
    else:
        for controller in ("cpu", "cpu,cpuacct"):
            if own:
                folders.append(root / controller / own)
            folders.append(root / controller)
        folders.append(root)  # a root that is the cpu controller's folder itself
    return folders


def _own_cgroup(*, v2: bool) -> str:
    """This process's cgroup path relative to its hierarchy ("" where unknown or the root)."""
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if (v2 and hierarchy == "0" and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
            return path.strip().lstrip("/")
    return ""


def _cpus(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def default_threads(current: int | None = None) -> int:
    """The thread count used when none is given: fit for a shared machine.

    ``min(available CPUs, 2, current)`` (``current``: what the process already allows, torch's count,
    which follows ``OMP_NUM_THREADS`` or an earlier ``torch.set_num_threads``), and 1 where the machine
    is heavily oversubscribed: other work keeping at least twice the available CPUs busy (:func:`busy_cpus`).

    Why, measured on 2 cores with ``benchmarks/bench_contention.py`` (pgd-linf audit, 100 samples):
    what makes torch slow beside a competitor is spinning OpenMP threads, not their number. Beside one
    2-thread competitor, torch's default took 116 s (7.3 s alone), 2 passive threads 13.7 s (8.2 s
    alone), 1 thread 17.7 s (9.5 s alone): 2 passive threads were faster quiet and contended. Only with
    the machine loaded to 7 by other test suites was 1 thread ahead (18.8 s vs 23.2 s), hence the cap.
    """
    cpus = available_cpus()
    n = min(cpus, DEFAULT_MAX_THREADS)
    if current is not None:
        n = min(n, current)
    if busy_cpus() >= 2 * cpus:
        n = 1
    return max(1, n)


def busy_cpus(samples: int = 5, interval_s: float = 0.01) -> float:
    """CPUs other work keeps busy: the larger of the 1-minute load average and the mean number of other
    threads runnable now (``/proc/loadavg``'s running count over ``samples`` reads, less this thread).

    Both count the whole machine (a container sees its host's load): on a shared host that errs towards
    fewer threads, which costs little.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Unix
        load = 0.0
    running = []
    for i in range(samples):
        text = _read(Path("/proc/loadavg"))
        if text is None:
            break
        try:
            running.append(int(text.split()[3].split("/")[0]) - 1)  # "0.52 0.40 0.33 3/412 1234"
        except (IndexError, ValueError):
            break
        if i + 1 < samples:
            time.sleep(interval_s)
    now = sum(running) / len(running) if running else 0.0
    return max(load, now, 0.0)


def prefer_passive_waiting() -> None:
    """Make idle OpenMP threads sleep rather than spin (only before torch loads OpenMP; a set value wins)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (``None``: :func:`default_threads`); return the count set.

    The inter-op pool is sized likewise where torch still allows it (only before any parallel work).
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    import torch

    threads = n if n is not None else default_threads(torch.get_num_threads())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.get_num_interop_threads() > threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # parallel work has started, or it was set before: keep it
            pass
    return threads
