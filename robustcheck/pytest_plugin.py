"""pytest plugin: robustness checks as ordinary test assertions.

Installed as the ``pytest11`` entry point ``robustcheck`` (disable with ``-p no:robustcheck``).
Importing this module is cheap: torch, foolbox, pandas and the probes are imported only when a
test uses the ``robustcheck`` fixture or the ``robustness`` marker.

Fixture (session-scoped)::

    def test_mlp_resists_fgsm(robustcheck):
        robustcheck.assert_robust("digits-mlp", "digits", probe="fgsm", min_score=0.8, samples=64)
        result = robustcheck.run(my_model, my_data, "pgd-linf", steps=10)   # -> ProbeResult

Marker, on a test that returns a model or takes a ``model`` fixture::

    @pytest.mark.robustness(probe="fgsm", min_score=0.8, samples=64)
    def test_trained_model():
        return train_model()

Options (group "robustcheck"): ``--robustcheck-seed``, ``--robustcheck-budget``,
``--robustcheck-report`` (HTML of every run of the session), ``--robustcheck-json``
(``results.json`` content), ``--robustcheck-baseline`` with ``--robustcheck-update-baseline`` and
``--robustcheck-tolerance`` (fail when a score drops below its recorded baseline). Scores are added
to each test's ``user_properties`` (``robustcheck:<probe>``), so ``--junitxml`` reports them.

Under pytest-xdist (``-n N``) every worker hands its runs (results, example images, baseline scores
to record) to the controller when it finishes, and the controller writes one report, one JSON file
and one baseline for the whole session, exactly as a single process does.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
import shlex
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from robustcheck.jsonutil import json_default
from robustcheck.params import format_spec
from robustcheck.reports.formatting import format_value

if TYPE_CHECKING:
    import pandas as pd

    from robustcheck.api import ProbeResult
    from robustcheck.data.dataset import ImageDataset
    from robustcheck.models.classifier import ImageClassifier
    from robustcheck.run.runner import Runner, RunOutcome, RunSpec

MARKER = "robustness"
PROPERTY_PREFIX = "robustcheck:"
DEFAULT_TOLERANCE = 0.02
WORST_SAMPLES = 5
SAMPLE_COLUMNS = ("index", "label", "prediction", "adv_prediction", "min_epsilon")
BASELINE_FORMAT = 1
#: key of a worker's runs in pytest-xdist's ``workeroutput``
WORKER_OUTPUT = "robustcheck"
#: floating-point slack when comparing a score with its threshold or baseline.
EPSILON = 1e-9


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


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and create the session's :class:`RobustCheck` (cheap: nothing heavy is imported)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(probe, min_score, data=None, samples=None, defense=None, **params): assert that the model "
        "the test returns (or its `model` fixture) scores at least min_score on probe (robustcheck)",
    )
    config.stash[_STATE] = RobustCheck(config, Settings.from_config(config))


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


# --------------------------------------------------------------------------- settings and baseline


@dataclass(frozen=True)
class Settings:
    """The ``--robustcheck-*`` options, paths resolved against the invocation directory."""

    seed: int = 0
    budget_s: float | None = None
    report: Path | None = None
    json_path: Path | None = None
    baseline: Path | None = None
    update_baseline: bool = False
    tolerance: float = DEFAULT_TOLERANCE

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        base = Path(config.invocation_params.dir)

        def path(option: str) -> Path | None:
            value = config.getoption(option)
            return base / value if value else None

        settings = cls(
            seed=config.getoption("robustcheck_seed"),
            budget_s=config.getoption("robustcheck_budget"),
            report=path("robustcheck_report"),
            json_path=path("robustcheck_json"),
            baseline=path("robustcheck_baseline"),
            update_baseline=config.getoption("robustcheck_update_baseline"),
            tolerance=config.getoption("robustcheck_tolerance"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.update_baseline and self.baseline is None:
            raise pytest.UsageError("--robustcheck-update-baseline needs --robustcheck-baseline=PATH")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise pytest.UsageError(f"--robustcheck-tolerance must be a non-negative number, got {self.tolerance}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise pytest.UsageError(f"--robustcheck-budget must be positive, got {self.budget_s}")


@dataclass
class Baseline:
    """Scores per test node id and probe key, kept in a JSON file.

    File format: ``{"robustcheck_baseline": 1, "scores": {"<node id>": {"<probe>": score}}}``.
    Updating replaces the entries of the tests that recorded scores this session and keeps the others.
    """

    path: Path
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    exists: bool = False
    recorded: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Baseline:
        if not path.is_file():
            return cls(path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise pytest.UsageError(f"cannot read robustcheck baseline {str(path)!r}: {exc}") from exc
        scores = content.get("scores") if isinstance(content, dict) else None
        if not _is_score_table(scores):
            raise pytest.UsageError(f"robustcheck baseline {str(path)!r} has no 'scores' mapping of test -> probe -> score")
        return cls(path, {test: {k: float(v) for k, v in entry.items()} for test, entry in scores.items()}, exists=True)

    def expected(self, test: str, key: str) -> float | None:
        return self.scores.get(test, {}).get(key)

    def record(self, test: str, key: str, score: float) -> None:
        self.recorded.setdefault(test, {})[key] = float(score)

    def save(self) -> None:
        merged = {**self.scores, **self.recorded}
        content = {"robustcheck_baseline": BASELINE_FORMAT, "scores": {t: dict(sorted(merged[t].items())) for t in sorted(merged)}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the fixture object


@dataclass
class Check:
    """One robustness run of the session and what the test expected of it."""

    outcome: RunOutcome
    test: str
    key: str
    reproduce: str
    min_score: float | None = None


class RobustCheck:
    """The ``robustcheck`` fixture: runs probes for tests and collects every outcome of the session.

    Models and data may be registry names / specs (``"digits-mlp"``, ``"digits:split=test"``) or
    objects (:class:`~robustcheck.models.classifier.ImageClassifier` or ``nn.Module``,
    :class:`~robustcheck.data.dataset.ImageDataset`). Named ones are loaded once per session; objects are
    named after their ``name`` (made unique within the test) and never kept alive by this fixture.
    """

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.current_item: pytest.Item | None = None
        self.checks: list[Check] = []
        self._models: dict[str, ImageClassifier] = {}
        self._data: dict[str, ImageDataset] = {}
        self._names = _ObjectNames()
        self._keys: dict[tuple[str, str], int] = {}
        self.baseline = Baseline.load(settings.baseline) if settings.baseline is not None else None
        self._written: list[str] = []
        #: xdist controller: finished runs of the workers (``results.json`` entries) and their example images
        self._worker_runs: list[dict[str, Any]] = []
        self._worker_artifacts: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<robustcheck session: seed {self.seed}, {self.run_count} run(s)>"

    # -- public API ----------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def run_count(self) -> int:
        """Runs of the session so far, the xdist workers' included."""
        return len(self.checks) + len(self._worker_runs)

    @property
    def outcomes(self) -> list[RunOutcome]:
        """Every run of the session so far, in order."""
        return [check.outcome for check in self.checks]

    def run(
        self,
        model: Any,
        data: Any,
        probe: str,
        *,
        defense: str | None = None,
        samples: int | None = None,
        **params: Any,
    ) -> ProbeResult:
        """Run ``probe`` (``"fgsm"`` or ``"fgsm:epsilons=[0,0.1]"``, more ``params`` as keywords).

        Args:
            model: model spec or object.
            data: data spec or :class:`ImageDataset`; ``None`` for the model's ``default_data``.
            defense: defense spec applied to the model (``"bit-depth:bits=4"``).
            samples: leading samples to use; ``None``: all of an in-memory data set, the CLI default
                (100) of a named one.

        The score is recorded in the test's ``user_properties`` as ``robustcheck:<probe>``.
        """
        return self._check(model, data, probe, defense, samples, params).outcome.result

    def assert_robust(
        self,
        model: Any,
        data: Any = None,
        *,
        probe: str,
        min_score: float,
        defense: str | None = None,
        samples: int | None = None,
        **params: Any,
    ) -> ProbeResult:
        """Run ``probe`` and raise ``AssertionError`` unless it finished with ``score >= min_score``.

        With ``--robustcheck-baseline`` the score must also not drop more than the tolerance below
        the score recorded for this test and probe. A timeout or error fails as inconclusive. The
        message shows probe, parameters, score, threshold, seed, the worst samples and a command
        that reproduces the run.
        """
        __tracebackhide__ = True
        check = self._check(model, data, probe, defense, samples, params, min_score=min_score)
        problems = self._problems(check)
        if problems:
            raise AssertionError(explain(check, problems))
        return check.outcome.result

    def results(self) -> dict[str, Any]:
        """The session's ``results.json`` content (each run also names its ``test``); under xdist the
        workers' runs, sorted by test (a test's runs keep their order)."""
        from robustcheck.run.runner import Runner

        results = Runner(None, quiet=True).results(self.outcomes, self.seed)
        for run, check in zip(results["runs"], self.checks, strict=True):
            run["test"] = check.test
        results["runs"] += sorted(self._worker_runs, key=lambda run: run["test"])
        return results

    # -- pytest-xdist --------------------------------------------------------------------------
    def worker_payload(self) -> str:
        """What an xdist worker sends the controller (JSON text): its runs, images and recorded scores."""
        from robustcheck.run.checkpoint import artifacts_to_json

        return json.dumps(
            {
                "runs": self.results()["runs"],
                "artifacts": {c.outcome.spec.run_id: artifacts_to_json(c.outcome.result.artifacts) for c in self.checks},
                "recorded": self.baseline.recorded if self.baseline is not None else {},
            },
            default=json_default,
        )

    def absorb(self, payload: str) -> None:
        """Controller side of :meth:`worker_payload`: keep a worker's runs for the session outputs."""
        content = json.loads(payload)
        self._worker_runs += content["runs"]
        self._worker_artifacts.update(content["artifacts"])
        if self.baseline is not None:
            for test, scores in content["recorded"].items():
                for key, score in scores.items():
                    self.baseline.record(test, key, score)

    # -- running -------------------------------------------------------------------------------
    def _check(
        self,
        model: Any,
        data: Any,
        probe: str,
        defense: str | None,
        samples: int | None,
        params: dict[str, Any],
        min_score: float | None = None,
    ) -> Check:
        __tracebackhide__ = True
        from robustcheck.defaults import DEFAULT_SAMPLES
        from robustcheck.plugins import probe_spec
        from robustcheck.run.runner import Runner, RunSpec

        test = self.current_item.nodeid if self.current_item is not None else "<session>"
        if self._names.test != test:
            self._names = _ObjectNames(test)
        runner = Runner(None, quiet=True)
        model_key, adapter = self._resolve_model(model, runner)
        data_key = self._resolve_data(data, adapter, model_key, runner)
        named = isinstance(model, str) and not _is_object(data)
        if samples is None and not _is_object(data):
            samples = DEFAULT_SAMPLES
        spec = RunSpec(
            model=model_key,
            probe=probe_spec(probe),
            params=params,
            data=data_key,
            defense=defense,
            samples=samples,
            seed=self.seed,
            budget_s=self.settings.budget_s,
        )
        outcome = runner.execute(spec)
        reproduce = audit_command(spec, outcome) if named else self._pytest_command()
        check = Check(outcome, test, self._key(test, spec), reproduce, min_score)
        self.checks.append(check)
        self._record_property(check)
        return check

    def _resolve_model(self, model: Any, runner: Runner) -> tuple[str, ImageClassifier]:
        if isinstance(model, str):
            if model not in self._models:
                from robustcheck.models.loading import load_model

                self._models[model] = load_model(model)
            adapter = self._models[model]
            key = model
            self._names.reserve(model)
        else:
            from torch import nn

            from robustcheck.models.classifier import ImageClassifier

            if not isinstance(model, nn.Module):
                raise TypeError(f"model must be a spec string, an ImageClassifier or a torch.nn.Module, got {type(model).__name__}")
            base = model.name if isinstance(model, ImageClassifier) else type(model).__name__
            key = self._names.name_for(model, base)
            adapter = model if isinstance(model, ImageClassifier) else ImageClassifier(model, name=key)
        runner.add_model(key, adapter)
        return key, adapter

    def _resolve_data(self, data: Any, model: ImageClassifier, model_key: str, runner: Runner) -> str | None:
        if data is None:
            if model.default_data is None:
                from robustcheck.errors import UsageError

                raise UsageError(f"model {model_key!r} names no default data: pass data=...")
            runner.add_data(model.default_data, self._named_data(model.default_data))
            return None
        if isinstance(data, str):
            runner.add_data(data, self._named_data(data))
            self._names.reserve(data)
            return data
        from robustcheck.data.dataset import ImageDataset

        if not isinstance(data, ImageDataset):
            raise TypeError(f"data must be a spec string or an ImageDataset, got {type(data).__name__}")
        key = self._names.name_for(data, data.name)
        runner.add_data(key, data)
        return key

    def _named_data(self, spec: str) -> ImageDataset:
        if spec not in self._data:
            from robustcheck.data.loading import load_data

            self._data[spec] = load_data(spec)
        return self._data[spec]

    def _key(self, test: str, spec: RunSpec) -> str:
        """Baseline key of a run within its test: the probe name, ``#2``, ``#3``... when repeated."""
        name = spec.probe.name
        count = self._keys.get((test, name), 0) + 1
        self._keys[(test, name)] = count
        return name if count == 1 else f"{name}#{count}"

    def _record_property(self, check: Check) -> None:
        if self.current_item is not None:
            result = check.outcome.result
            value = result.score if result.status == "ok" and result.score is not None else result.status
            self.current_item.user_properties.append((f"{PROPERTY_PREFIX}{check.key}", value))

    def _pytest_command(self) -> str:
        test = self.current_item.nodeid if self.current_item is not None else ""
        parts = ["python", "-m", "pytest", test, f"--robustcheck-seed={self.seed}"]
        name = self.config.pluginmanager.get_name(sys.modules[__name__])
        if name and name != "robustcheck":  # loaded with -p MODULE rather than the entry point
            parts[3:3] = ["-p", name]
        if self.settings.budget_s:
            parts.append(f"--robustcheck-budget={self.settings.budget_s:g}")
        return shlex.join(p for p in parts if p)

    # -- judging -------------------------------------------------------------------------------
    def _problems(self, check: Check) -> list[str]:
        """Why ``check`` fails (empty: it passes); records the score when updating the baseline."""
        result = check.outcome.result
        if result.status != "ok" or result.score is None:
            return [f"inconclusive: status {result.status}" + (f": {result.message}" if result.message else "")]
        problems = []
        if check.min_score is not None and result.score < check.min_score - EPSILON:
            problems.append(f"score {result.score:.4f} is below min_score {check.min_score:.4f}")
        baseline = self.baseline
        if baseline is not None and self.settings.update_baseline:
            baseline.record(check.test, check.key, result.score)
        elif baseline is not None:
            expected = baseline.expected(check.test, check.key)
            if expected is not None and result.score < expected - self.settings.tolerance - EPSILON:
                problems.append(
                    f"score {result.score:.4f} dropped more than {self.settings.tolerance:g} below its baseline "
                    f"{expected:.4f} (recorded for {check.key!r} in {baseline.path})"
                )
        return problems

    # -- session outputs -----------------------------------------------------------------------
    def write_outputs(self) -> None:
        """Write the report, the JSON results and the updated baseline, as the options ask."""
        settings = self.settings
        if settings.report is not None or settings.json_path is not None:
            results = self.results()
            if settings.json_path is not None:
                settings.json_path.parent.mkdir(parents=True, exist_ok=True)
                settings.json_path.write_text(json.dumps(results, indent=2, default=json_default) + "\n", encoding="utf-8")
                self._written.append(f"results: {settings.json_path}")
            if settings.report is not None:
                from robustcheck.reports.html import write_report
                from robustcheck.run.checkpoint import artifacts_from_json

                artifacts = {run_id: artifacts_from_json(text) for run_id, text in self._worker_artifacts.items()}
                artifacts.update({c.outcome.spec.run_id: c.outcome.result.artifacts for c in self.checks})
                write_report(settings.report, results, artifacts, title="robustcheck: pytest session")
                self._written.append(f"report: {settings.report}")
        if settings.update_baseline and self.baseline is not None:
            self.baseline.save()
            self._written.append(f"baseline updated: {self.baseline.path} ({_count(self.baseline.recorded)} scores recorded)")

    def summary_lines(self) -> list[str]:
        lines = [f"{self.run_count} robustness run(s), seed {self.seed}"] if self.run_count else []
        lines += self._written
        baseline = self.baseline
        if baseline is not None and not baseline.exists and not self.settings.update_baseline:
            lines.append(f"baseline {baseline.path} not found: no score was compared (create it with --robustcheck-update-baseline)")
        return lines


# --------------------------------------------------------------------------- failure message


def explain(check: Check, problems: list[str]) -> str:
    """The one-screen explanation of a failed robustness check."""
    spec, result = check.outcome.spec, check.outcome.result
    run = check.outcome.to_json()
    threshold = f"min_score {check.min_score:.4f}" if check.min_score is not None else "none"
    score = f"{result.score:.4f}" if result.score is not None else "none"
    lines = [
        f"robustness check failed: {spec.probe.name} on {spec.model}: " + "; ".join(problems),
        f"  probe:      {spec.probe.name}",
        f"  params:     {format_spec('', spec.probe.params)[1:] or '(defaults)'}",
        f"  model:      {spec.model}" + (f" + {spec.defense}" if spec.defense else ""),
        f"  data:       {run['data']} ({run['samples']} samples)",
        f"  score:      {score}   threshold: {threshold}",
        f"  status:     {result.status}" + (f": {result.message}" if result.message else ""),
        f"  seed:       {result.seed}",
    ]
    metrics = _scalar_metrics(result.metrics)
    if metrics:
        lines.append(f"  metrics:    {metrics}")
    lines += _worst_lines(result.records)
    lines.append(f"  reproduce:  {check.reproduce}")
    return "\n".join(lines)


def _scalar_metrics(metrics: Mapping[str, Any]) -> str:
    shown = [f"{k}={format_value(v)}" for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)]
    return " ".join(shown)


def _worst_lines(records: pd.DataFrame | None) -> list[str]:
    if records is None or not len(records):
        return []
    worst = worst_samples(records)
    if not len(worst):
        return [f"  worst samples: none of the {len(records)} samples was misclassified or fooled"]
    columns = [c for c in SAMPLE_COLUMNS if c in worst.columns] or list(worst.columns)
    return [f"  worst samples (of {len(records)}; correctly classified but fooled first):", *_table(worst, columns, indent=4)]


def worst_samples(records: pd.DataFrame, limit: int = WORST_SAMPLES) -> pd.DataFrame:
    """The ``limit`` worst rows: correctly classified but fooled first (smallest ``min_epsilon``
    first when the column exists), then samples misclassified without attack.

    Records without correctness information give their first rows.
    """
    cols = set(records.columns)
    correct = records["correct"].astype(bool) if "correct" in cols else None
    if correct is None and {"label", "prediction"} <= cols:
        correct = records["prediction"] == records["label"]
    fooled = None
    if "min_epsilon" in cols:
        fooled = records["min_epsilon"].notna()
    elif {"label", "adv_prediction"} <= cols:
        fooled = records["adv_prediction"] != records["label"]
    if correct is None and fooled is None:
        return records.head(limit)
    import numpy as np

    rank = np.full(len(records), 2)
    if correct is not None:
        rank[~correct.to_numpy(bool)] = 1
    if fooled is not None:
        bad = fooled.to_numpy(bool) & (correct.to_numpy(bool) if correct is not None else True)
        rank[bad] = 0
    ranked = records.assign(_rank=rank)
    order = ["_rank", *(["min_epsilon"] if "min_epsilon" in cols else []), *(["index"] if "index" in cols else [])]
    ranked = ranked[ranked["_rank"] < 2].sort_values(order, kind="stable", na_position="last")
    return ranked.drop(columns="_rank").head(limit)


def _table(frame: pd.DataFrame, columns: list[str], indent: int) -> list[str]:
    cells = [[str(c) for c in columns]] + [[format_value(row[c]) for c in columns] for _, row in frame.iterrows()]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return [" " * indent + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]


# --------------------------------------------------------------------------- reproduce commands


def audit_command(spec: RunSpec, outcome: RunOutcome) -> str:
    """The ``robustcheck audit`` command line that repeats ``spec``."""
    parts = ["robustcheck", "audit", "--model", spec.model]
    if spec.data:
        parts += ["--data", spec.data]
    parts += ["--probe", str(spec.probe), "--seed", str(spec.seed)]
    parts += ["--samples", str(outcome.to_json()["samples"]), "--defense", str(spec.defense or "none")]
    if spec.budget_s:
        parts += ["--budget", f"{spec.budget_s:g}"]
    return shlex.join(parts)


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
        pytest.fail(f"{nodeid}: use @pytest.mark.{MARKER}(probe=..., min_score=..., data=None, samples=None, **params)", pytrace=False)
    return options


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


# --------------------------------------------------------------------------- helpers


class _ObjectNames:
    """Names for the in-memory models and data sets of one test, by object identity (weakly held).

    An object is named after its ``name``; ``#2``, ``#3``... tell apart other objects and specs of the
    same name used earlier in the test. Names depend only on the test, not on which tests ran before.
    """

    def __init__(self, test: str | None = None) -> None:
        self.test = test
        self._by_id: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._taken: set[str] = set()

    def reserve(self, spec: str) -> None:
        """A spec string used in this test: objects will not take its name."""
        self._taken.add(spec)

    def name_for(self, obj: Any, base: str) -> str:
        entry = self._by_id.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        base = base or type(obj).__name__
        name, n = base, 1
        while name in self._taken:
            n += 1
            name = f"{base}#{n}"
        self._taken.add(name)
        self._by_id[id(obj)] = (weakref.ref(obj), name)
        return name


def _is_score_table(scores: Any) -> bool:
    """``{test: {probe: number}}``."""
    if not isinstance(scores, dict):
        return False
    entries = list(scores.values())
    if not all(isinstance(entry, dict) for entry in entries):
        return False
    values = [v for entry in entries for v in entry.values()]
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _is_object(data: Any) -> bool:
    return data is not None and not isinstance(data, str)


def _count(scores: Mapping[str, Mapping[str, float]]) -> int:
    return sum(len(entry) for entry in scores.values())


_STATE = pytest.StashKey["RobustCheck"]()


def _state(config: pytest.Config) -> RobustCheck | None:
    return config.stash.get(_STATE, None)
