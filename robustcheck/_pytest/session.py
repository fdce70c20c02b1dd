"""Session state of the pytest plugin: the ``robustcheck`` fixture object and what it keeps.

Private to the pytest plugin (:mod:`robustcheck.pytest_plugin`, which holds the hooks, options,
fixture and marker): :class:`RobustCheck` (the fixture: runs probes for tests, judges scores,
writes the session's report, JSON results and baseline, and hands an xdist worker's runs to the
controller), :class:`Settings` (the ``--robustcheck-*`` options) and
:class:`Baseline` (the baseline file).

Like the plugin it is imported in every pytest session, so torch, pandas, foolbox and the runner
are imported only inside the methods that run probes or write outputs, never at module level.
"""

from __future__ import annotations

import json
import math
import shlex
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from robustcheck._pytest.failure import Check, audit_command, explain, flag_problems
from robustcheck.jsonutil import json_default

if TYPE_CHECKING:
    from robustcheck.api import ProbeResult
    from robustcheck.data.dataset import ImageDataset
    from robustcheck.models.classifier import ImageClassifier
    from robustcheck.run.runner import Runner, RunOutcome, RunSpec

PROPERTY_PREFIX = "robustcheck:"
DEFAULT_TOLERANCE = 0.02
BASELINE_FORMAT = 1
#: floating-point slack when comparing a score with its threshold or baseline.
EPSILON = 1e-9


class _DefaultSamples:
    """``samples`` not given: all of an in-memory data set, the CLI default of a named one."""

    def __repr__(self) -> str:
        return "<default: all of an in-memory data set, 100 of a named one>"


DEFAULT: Any = _DefaultSamples()


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
    device: str | None = None  # None: models stay where they are

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
            device=config.getoption("robustcheck_device"),
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
        if self.device is not None:
            from robustcheck.devices import check_device_name
            from robustcheck.errors import UsageError

            try:
                check_device_name(self.device)
            except UsageError as exc:
                raise pytest.UsageError(f"--robustcheck-device: {exc}") from None


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


class RobustCheck:
    """The ``robustcheck`` fixture: runs probes for tests and collects every outcome of the session.

    Models and data may be registry names / specs (``"digits-mlp"``, ``"digits:split=test"``) or
    objects (:class:`~robustcheck.models.classifier.ImageClassifier` or ``nn.Module``,
    :class:`~robustcheck.data.dataset.ImageDataset`). Named ones are loaded once per session; objects are
    named after their ``name`` (made unique within the test) and never kept alive by this fixture.

    ``plugin`` is the plugin module as registered with pytest: its name tells reproduce commands
    whether to load it with ``-p`` (passed in: this module sits below the plugin and never imports it).
    """

    def __init__(self, config: pytest.Config, settings: Settings, plugin: object | None = None) -> None:
        self.config = config
        self.settings = settings
        self.plugin = plugin
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
        samples: int | str | None = DEFAULT,
        input_shape: Sequence[int] | None = None,
        **params: Any,
    ) -> ProbeResult:
        """Run ``probe`` (``"fgsm"`` or ``"fgsm:epsilons=[0,0.1]"``, more ``params`` as keywords).

        Args:
            model: model spec or object.
            data: data spec or :class:`ImageDataset`; ``None`` for the model's ``default_data``.
            defense: defense spec applied to the model (``"bit-depth:bits=4"``).
            samples: how many samples to use, a seeded, class-stratified draw (the session's seed);
                ``None`` or ``"all"``: all of them. Default: all of an in-memory data set, the CLI
                default (100) of a named one.
            input_shape: ``(C, H, W)`` the model takes (default: what it declares, else the data's shape).

        The score is recorded in the test's ``user_properties`` as ``robustcheck:<probe>``.
        """
        return self._check(model, data, probe, defense, samples, params, input_shape=input_shape).outcome.result

    def assert_robust(
        self,
        model: Any,
        data: Any = None,
        *,
        probe: str,
        min_score: float,
        defense: str | None = None,
        samples: int | str | None = DEFAULT,
        input_shape: Sequence[int] | None = None,
        allow_flags: Sequence[str] = (),
        **params: Any,
    ) -> ProbeResult:
        """Run ``probe`` and raise ``AssertionError`` unless it finished with ``score >= min_score``.

        With ``--robustcheck-baseline`` the score must also not drop more than the tolerance below
        the score recorded for this test and probe. A timeout or error fails as inconclusive. A run
        with validity flags (:mod:`robustcheck.run.flags`; cross-run flags compare it with the
        session's earlier runs) fails unless ``allow_flags`` names each of its codes. The message
        shows probe, parameters, score, threshold, seed, flags, the worst samples and a command that
        reproduces the run.
        """
        __tracebackhide__ = True
        check = self._check(model, data, probe, defense, samples, params, min_score=min_score, input_shape=input_shape)
        problems = self._problems(check) + flag_problems(check, self.outcomes, allow_flags)
        check.problems = problems
        if problems:
            raise AssertionError(explain(check, problems))
        return check.outcome.result

    def results(self) -> dict[str, Any]:
        """The session's ``results.json`` content (each run also names its ``test``); under xdist the
        workers' runs, sorted by test (a test's runs keep their order)."""
        from robustcheck.run.runner import Runner

        results = Runner(None, quiet=True).results(self.outcomes, self.seed, [c.min_score for c in self.checks])
        for run, check in zip(results["runs"], self.checks, strict=True):
            run["test"] = check.test
            run["verdict"] = check.verdict
            run["problems"] = check.problems
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
        samples: int | str | None,
        params: dict[str, Any],
        min_score: float | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> Check:
        __tracebackhide__ = True
        from robustcheck.defaults import DEFAULT_SAMPLES
        from robustcheck.plugins import probe_spec
        from robustcheck.run.runner import Runner, RunSpec

        test = self.current_item.nodeid if self.current_item is not None else "<session>"
        if self._names.test != test:
            self._names = _ObjectNames(test)
        runner = Runner(None, quiet=True)
        model_key, adapter = self._resolve_model(model, runner, input_shape)
        data_key = self._resolve_data(data, adapter, model_key, runner)
        named = isinstance(model, str) and not _is_object(data)
        if samples is DEFAULT:
            samples = None if _is_object(data) else DEFAULT_SAMPLES
        elif samples is None or isinstance(samples, str):
            if samples is not None and samples.strip().lower() != "all":
                from robustcheck.errors import UsageError

                raise UsageError(f"samples must be a positive integer, None or 'all', got {samples!r}")
            samples = None
        spec = RunSpec(
            model=model_key,
            probe=probe_spec(probe),
            params=params,
            data=data_key,
            defense=defense,
            samples=samples,
            seed=self.seed,
            budget_s=self.settings.budget_s,
            device=self.settings.device,
            model_options={"input_shape": list(_input_shape(input_shape))} if input_shape is not None else {},
        )
        outcome = runner.execute(spec)
        reproduce = audit_command(spec, outcome) if named else self._pytest_command()
        check = Check(outcome, test, self._key(test, spec), reproduce, min_score)
        self.checks.append(check)
        self._record_property(check)
        return check

    def _resolve_model(self, model: Any, runner: Runner, input_shape: Sequence[int] | None = None) -> tuple[str, ImageClassifier]:
        if input_shape is not None:
            input_shape = _input_shape(input_shape)
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
        if input_shape is not None:  # input_shape=: the model takes images of this shape
            from robustcheck.models.classifier import rewrap

            adapter = rewrap(adapter, {"input_shape": input_shape})
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
        name = self.config.pluginmanager.get_name(self.plugin) if self.plugin is not None else None
        if name and name != "robustcheck":  # loaded with -p MODULE rather than the entry point
            parts[3:3] = ["-p", name]
        if self.settings.budget_s:
            parts.append(f"--robustcheck-budget={self.settings.budget_s:g}")
        if self.settings.device:
            parts.append(f"--robustcheck-device={self.settings.device}")
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
        """The terminal summary: one line per run (verdict, test, probe, score against its threshold), then
        the files written; under xdist the controller has every worker's runs."""
        lines = [f"{self.run_count} robustness run(s), seed {self.seed}"] if self.run_count else []
        runs = self.results()["runs"] if self.run_count else []  # the workers' runs included
        lines += [run_line(run) for run in runs]
        lines += self._written
        baseline = self.baseline
        if baseline is not None and not baseline.exists and not self.settings.update_baseline:
            lines.append(f"baseline {baseline.path} not found: no score was compared (create it with --robustcheck-update-baseline)")
        return lines


# --------------------------------------------------------------------------- helpers


def run_line(run: Mapping[str, Any]) -> str:
    """``PASS  tests/test_m.py::test_a  pgd-linf on digits-mlp  score 0.612 >= 0.500`` (FAIL names why;
    ``run`` for runs a test did not assert)."""
    from robustcheck.reports.formatting import format_score

    verdict = {"pass": "PASS", "fail": "FAIL"}.get(str(run.get("verdict")), "run")
    defense = f"+{run['defense']}" if run.get("defense") else ""
    threshold = run.get("threshold")
    score = f"score {format_score(run.get('score'))}" + (f" (min_score {threshold:.3f})" if threshold is not None else "")
    status = f", {run['status']}" if run.get("status") not in (None, "ok") else ""
    why = f": {'; '.join(run['problems'])}" if run.get("problems") else ""
    return f"{verdict:<4}  {run.get('test', '?')}  {run.get('probe', '?')} on {run.get('model', '?')}{defense}  {score}{status}{why}"


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


def _input_shape(value: Any) -> tuple[int, int, int]:
    """``input_shape=`` of the fixture: ``(C, H, W)``, three positive integers."""
    try:
        shape = tuple(int(d) for d in value)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        from robustcheck.errors import UsageError

        raise UsageError(f"input_shape must be (C, H, W), three positive integers, got {value!r}")
    return shape  # type: ignore[return-value]


def _is_object(data: Any) -> bool:
    return data is not None and not isinstance(data, str)


def _count(scores: Mapping[str, Mapping[str, float]]) -> int:
    return sum(len(entry) for entry in scores.values())
