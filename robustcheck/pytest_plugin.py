"""pytest plugin: robustness checks as ordinary test assertions.

Installed as the ``pytest11`` entry point ``robustcheck`` (disable with ``-p no:robustcheck``).
Importing this module is cheap: torch, foolbox, pandas and the probes are imported only when a
test uses the ``robustcheck`` fixture or the ``robustness`` marker.

Fixture (session-scoped)::

    def test_mlp_resists_fgsm(robustcheck):
        robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.8, samples=64)
        result = robustcheck.run(my_model, my_data, "pgd-linf", steps=10)   # -> ProbeResult

Marker, on a test that returns a model or takes a ``model`` fixture::

    @pytest.mark.robustness(probe="fgsm", min_score=0.8, samples=64, allow_flags=["few-samples"])
    def test_trained_model():
        return train_model()

A flagged run (validity flags, :mod:`robustcheck.run.flags`) fails the check unless ``allow_flags``
names each of its codes; the failure message names the flags.

Options (group "robustcheck"): ``--robustcheck-seed``, ``--robustcheck-budget``,
``--robustcheck-report`` (HTML of every run of the session), ``--robustcheck-json``
(``results.json`` content), ``--robustcheck-baseline`` with ``--robustcheck-update-baseline`` and
``--robustcheck-tolerance`` (fail when a score drops below its recorded baseline). Scores are added
to each test's ``user_properties`` (``robustcheck:<probe>``), so ``--junitxml`` reports them.

Under pytest-xdist (``-n N``) every worker hands its runs (results, example images, baseline scores
to record) to the controller when it finishes, and the controller writes one report, one JSON file
and one baseline for the whole session, exactly as a single process does.

The session state (the fixture object, settings, baseline file) lives in
:mod:`robustcheck._pytest.session` and the failure message in :mod:`robustcheck._pytest.failure`;
both are private to this plugin.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Both are cheap (no torch, pandas, foolbox or runner at module level): this plugin loads in every
# pytest session of every project that installs robustcheck, so heavy imports wait until a test runs.
# worst_samples is re-exported: tests import it from here.
from robustcheck._pytest.failure import worst_samples as worst_samples
from robustcheck._pytest.session import DEFAULT_TOLERANCE, RobustCheck, Settings
from robustcheck.threads import configure_threads, prefer_passive_waiting

MARKER = "robustness"
#: key of a worker's runs in pytest-xdist's ``workeroutput``
WORKER_OUTPUT = "robustcheck"


# --------------------------------------------------------------------------- options and hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--robustcheck-*`` options."""
    group = parser.getgroup("robustcheck", "robustness checks (robustcheck)")
    group.addoption("--robustcheck-seed", type=int, default=0, metavar="SEED", help="seed of every robustness run (default 0)")
    group.addoption(
        "--robustcheck-budget", type=float, default=None, metavar="SECONDS", help="time budget per robustness run (default: none)"
    )
    group.addoption("--robustcheck-report", metavar="PATH", default=None, help="write one HTML report of every robustness run")
    group.addoption("--robustcheck-json", metavar="PATH", default=None, help="write the results (results.json format) of every run")
    group.addoption(
        "--robustcheck-baseline",
        metavar="PATH",
        default=None,
        help="JSON file of baseline scores per test and probe; a score more than the tolerance below its baseline fails",
    )
    group.addoption(
        "--robustcheck-update-baseline",
        action="store_true",
        default=False,
        help="record this session's scores into the --robustcheck-baseline file instead of comparing",
    )
    group.addoption(
        "--robustcheck-tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="DELTA",
        help=f"allowed score drop below the baseline (default {DEFAULT_TOLERANCE})",
    )
    group.addoption("--robustcheck-threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's own)")
    group.addoption(
        "--robustcheck-device",
        default=None,
        metavar="DEVICE",
        help="move models to auto, cpu, cuda, cuda:N or mps for their runs (default: leave them where they are)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and create the session's :class:`RobustCheck` (cheap: nothing heavy is imported)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(probe, min_score, data=None, samples=None, defense=None, allow_flags=(), **params): assert that "
        "the model the test returns (or its `model` fixture) scores at least min_score on probe, with no validity "
        "flag but those allowed by code (robustcheck)",
    )
    config.stash[_STATE] = RobustCheck(config, Settings.from_config(config), plugin=sys.modules[__name__])
    threads = config.getoption("robustcheck_threads")
    if threads is not None:  # passive OpenMP waiting too, where torch is not loaded yet (robustcheck.threads)
        if threads <= 0:
            raise pytest.UsageError(f"--robustcheck-threads must be a positive integer, got {threads}")
        prefer_passive_waiting()
        configure_threads(threads)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Remember which test is running: its node id keys baselines, its properties get the scores."""
    state = _state(item.config)
    if state is not None:
        state.current_item = item
    try:
        yield
    finally:
        if state is not None:
            state.current_item = None


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Iterator[None]:
    """For ``@pytest.mark.robustness`` tests: call the test, take its model and assert robustness.

    The test function is wrapped for the duration of the call, so a returned model is captured and
    pytest sees ``None`` (no ``PytestReturnNotNoneWarning``), and the check fails the test like
    any assertion in its body.
    """
    marker = pyfuncitem.get_closest_marker(MARKER)
    state = _state(pyfuncitem.config)
    original = pyfuncitem.obj
    if marker is None or state is None or _is_async(original):
        yield
        return
    pyfuncitem.obj = _checked_test(original, pyfuncitem, marker, state)
    try:
        yield
    finally:
        pyfuncitem.obj = original


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the session report, results JSON and updated baseline; an xdist worker hands its runs to
    the controller instead, which writes them (see :func:`pytest_testnodedown`)."""
    state = _state(session.config)
    if state is None:
        return
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:
        if state.checks:  # a worker without runs imports nothing heavy
            worker_output[WORKER_OUTPUT] = state.worker_payload()
    else:
        state.write_outputs()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist controller: take over the runs of a worker that finished."""
    state = _state(node.config)
    payload = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if state is not None and payload is not None:
        state.absorb(payload)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """A short "robustcheck" section: number of runs and the files written."""
    state = _state(config)
    lines = state.summary_lines() if state is not None else []
    if lines:
        terminalreporter.write_sep("-", "robustcheck")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def robustcheck(pytestconfig: pytest.Config) -> RobustCheck:
    """The session's robustness runner: ``robustcheck.run(...)`` and ``robustcheck.assert_robust(...)``."""
    return pytestconfig.stash[_STATE]


# --------------------------------------------------------------------------- marker


def _checked_test(function: Callable[..., Any], item: pytest.Function, marker: pytest.Mark, state: RobustCheck) -> Callable[..., None]:
    """``function`` wrapped to assert the robustness the marker asks of its model; returns ``None``."""

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        options = _marker_options(marker, item.nodeid)
        returned = function(*args, **kwargs)
        model = returned if returned is not None else item.funcargs.get("model")
        if model is None:
            pytest.fail(
                f"{item.nodeid}: @pytest.mark.{MARKER} needs the test to return a model or to take a `model` fixture",
                pytrace=False,
            )
        state.assert_robust(model, **options)

    return checked


def _marker_options(marker: pytest.Mark, nodeid: str) -> dict[str, Any]:
    """Keyword arguments of :meth:`RobustCheck.assert_robust` from ``robustness(probe, min_score, ...)``."""
    options = dict(marker.kwargs)
    for name, value in zip(("probe", "min_score"), marker.args, strict=False):
        options.setdefault(name, value)
    missing = [name for name in ("probe", "min_score") if name not in options]
    if missing or len(marker.args) > 2:
        pytest.fail(
            f"{nodeid}: use @pytest.mark.{MARKER}(probe=..., min_score=..., data=None, samples=None, allow_flags=(), **params)",
            pytrace=False,
        )
    return options


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


_STATE = pytest.StashKey["RobustCheck"]()


def _state(config: pytest.Config) -> RobustCheck | None:
    return config.stash.get(_STATE, None)
