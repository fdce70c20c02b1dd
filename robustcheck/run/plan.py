"""An audit plan: which models, data, probes and defenses to combine, from the CLI and/or a TOML file.

Config file (every key optional; command-line options override)::

    seed = 0
    samples = 100             # a seeded, class-stratified draw; "all" for every sample
    out = "robustcheck-report"
    results_db = "results.db"  # runs are appended here for leaderboards (default: OUT/results.db)
    data = "digits-rgb32"
    fail_under = 0.3          # threshold for every probe
    budget = 120              # seconds per run (default: each probe's own, 120 for most; 0: none)
    executor = "local"        # or "ray" (extra [ray]); ray_address = "auto" joins a running cluster
    ray_task_gpus = 1         # resources of each Ray task (ray_task_cpus too), overriding the probes' own
    shards = 4                # split each run of a shardable probe into 4 sample shards (parallel on ray)
    threads = 1               # torch CPU threads (default: the CPUs available, at most 2; 1 on a busy machine)
    device = "auto"           # auto (a GPU where there is one), cpu, cuda, cuda:N or mps
    save_adversarials = true  # OUT/adversarials/<run_id>.npz per attack run
    models = ["digits-cnn", { source = "pkg.mod:factory", bounds = [0, 1], labels = ["a", "b"] }]
    defenses = ["none", "bit-depth:bits=3"]

    [[probes]]
    name = "pgd-linf"
    params = { steps = 10, epsilons = [0, 0.03] }
    fail_under = 0.4          # this probe's threshold
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustcheck import registry
from robustcheck.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL,
    DEFAULT_OUT,
    DEFAULT_SAMPLES,
)
from robustcheck.devices import check_device_name, resolve_device
from robustcheck.errors import InputError, RequirementError, UsageError, suggest
from robustcheck.models.loading import ADAPTER_OPTIONS, LOAD_OPTIONS, load_model
from robustcheck.params import PluginSpec
from robustcheck.plugins import create, defense_spec, probe_spec
from robustcheck.run.ray import create_executor
from robustcheck.run.runner import Runner, RunSpec

TOP_KEYS = {"seed", "samples", "out", "data", "fail_under", "budget", "batch_size", "models", "probes", "defenses", "results_db",
            "executor", "ray_address", "ray_task_cpus", "ray_task_gpus", "shards", "threads", "device", "save_adversarials"}  # fmt: skip
MODEL_KEYS = {"source", *ADAPTER_OPTIONS, *LOAD_OPTIONS}  # a model table: where it comes from, its adapter and loading options
PROBE_KEYS = {"name", "params", "fail_under"}


@dataclass
class ProbeChoice:
    """A probe of the audit and the score it must reach (``None``: the audit's ``fail_under``)."""

    spec: PluginSpec
    fail_under: float | None = None


@dataclass
class ModelChoice:
    source: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditPlan:
    """Everything an audit combines; :meth:`specs` expands it into run units."""

    models: list[ModelChoice]
    probes: list[ProbeChoice] | None  # None: each model's default probe set
    defenses: list[PluginSpec | None] | None  # None: bare plus the default defenses
    data: str | None = None
    samples: int | None = DEFAULT_SAMPLES  # None: all
    seed: int = 0
    out: Path = Path(DEFAULT_OUT)
    fail_under: float | None = None
    budget: float | None = None  # seconds per run (None: none); see budget_given
    budget_given: bool = False  # False: each probe's default budget (Probe.default_budget_s)
    batch_size: int = DEFAULT_BATCH_SIZE
    results_db: Path | None = None  # None: OUT/results.db
    executor: str = "local"  # where units run: "local" or "ray" (robustcheck.run.ray)
    ray_address: str | None = None  # None with executor "ray": start a local Ray instance
    ray_task_cpus: float | None = None  # per-task resources, overriding what probes declare
    ray_task_gpus: float | None = None
    shards: int = 1  # sample shards per run of probes that can merge them (Probe.shardable)
    threads: int | None = None  # torch CPU threads (None: robustcheck.threads.default_threads)
    device: str = "auto"  # where runs execute (robustcheck.devices), resolved where each run executes
    save_adversarials: bool = False  # OUT/adversarials/<run_id>.npz for every attack run

    def __post_init__(self) -> None:
        """A model, probe or defense given twice runs once (the first occurrence keeps its place); the device
        is checked here, where runs execute locally (a Ray cluster's workers resolve it themselves)."""
        check_device_name(self.device)
        if self.executor == "local":
            resolve_device(self.device)
        elif self.device == "cpu" and self.ray_task_gpus:
            raise UsageError("--ray-task-gpus reserves GPUs that --device cpu leaves unused: drop one of them")
        self.models = _unique(self.models, lambda m: (m.source, json.dumps(m.options, sort_keys=True, default=str)))
        if self.probes is not None:
            self.probes = _unique(self.probes, lambda p: p.spec)
        if self.defenses is not None:
            self.defenses = _unique(self.defenses, lambda d: d)

    def make_executor(self) -> Any:
        """The executor the audit runs on (checked, and Ray imported, before any run)."""
        return create_executor(self.executor, self.ray_address, task_cpus=self.ray_task_cpus, task_gpus=self.ray_task_gpus)

    @property
    def results_db_path(self) -> Path:
        """Where the audit appends its runs for leaderboards (default: next to the report)."""
        return self.results_db or self.out / "results.db"

    @classmethod
    def from_sources(cls, cli: dict[str, Any], config: str | Path | None = None) -> AuditPlan:
        """Merge a TOML config (if any) with command-line options (which win)."""
        values = load_config(config) if config else {}
        input_shape = cli.get("input_shape")  # --input-shape: every model of the audit takes images of this shape
        trust_pickle = cli.get("trust_pickle")  # --trust-pickle: every model of the audit may be a pickled module
        values.update({k: v for k, v in cli.items() if k not in ("input_shape", "trust_pickle")})
        if isinstance(values.get("models"), list) and values["models"] and isinstance(values["models"][0], str):
            values["models"] = [_model_choice(m, f"models[{i}]") for i, m in enumerate(values["models"])]
        if input_shape is not None:
            shape = [int(d) for d in input_shape]
            models = values.get("models") or [ModelChoice(DEFAULT_MODEL)]
            values["models"] = [ModelChoice(m.source, {**m.options, "input_shape": shape}) for m in models]
        if trust_pickle:
            models = values.get("models") or [ModelChoice(DEFAULT_MODEL)]
            values["models"] = [ModelChoice(m.source, {**m.options, "trust_pickle": True}) for m in models]
        probes = values.get("probes")
        if probes is not None:
            values["probes"] = [p if isinstance(p, ProbeChoice) else _probe_choice(p, f"probes[{i}]") for i, p in enumerate(probes)]
        defenses = values.get("defenses")
        if defenses is not None:
            values["defenses"] = [None if d in (None, "none") else defense_spec(d) for d in defenses]
        budget = values.get("budget")
        return cls(
            models=values.get("models") or [ModelChoice(DEFAULT_MODEL)],
            probes=values.get("probes"),
            defenses=values.get("defenses"),
            data=values.get("data"),
            samples=samples_value(values.get("samples", DEFAULT_SAMPLES)),
            seed=int(values.get("seed", 0)),
            out=Path(values.get("out", DEFAULT_OUT)),
            fail_under=values.get("fail_under"),
            budget=float(budget) if budget else None,
            budget_given=budget is not None,
            batch_size=_positive_int(values.get("batch_size", DEFAULT_BATCH_SIZE), "batch_size"),
            results_db=Path(values["results_db"]) if values.get("results_db") else None,
            executor=values.get("executor") or "local",
            ray_address=values.get("ray_address"),
            ray_task_cpus=values.get("ray_task_cpus"),
            ray_task_gpus=values.get("ray_task_gpus"),
            shards=_positive_int(values.get("shards", 1), "shards"),
            threads=_positive_int(values["threads"], "threads") if values.get("threads") is not None else None,
            device=values.get("device") or "auto",
            save_adversarials=bool(values.get("save_adversarials", False)),
        )

    def threshold(self, probe: str) -> float:
        """The score below which ``probe`` fails (``-inf``: no threshold)."""
        for choice in self.probes or []:
            if choice.spec.name == probe and choice.fail_under is not None:
                return choice.fail_under
        return self.fail_under if self.fail_under is not None else -math.inf

    def specs(self, runner: Runner) -> list[RunSpec]:
        """Expand into run units, in a fixed order: model, defense (bare first), probe."""
        defenses = self.defenses if self.defenses is not None else [None, *_default_specs("defense")]
        probes = self.probes or [ProbeChoice(spec) for spec in _default_specs("probe")]
        # every plugin created (so every parameter checked) once, before anything loads or runs
        plugins = {spec: create(spec) for spec in {*(p.spec for p in probes), *(d for d in defenses if d is not None)}}
        # runs carry the checked values ("8/255" -> 0.0313..., epsilons sorted), as given keys only
        checked = {spec: PluginSpec(spec.kind, spec.name, {k: plugin.params[k] for k in spec.params}) for spec, plugin in plugins.items()}
        specs = []
        for choice in self.models:
            model_id = choice.options.get("name", choice.source)
            if choice.options:
                runner.add_model(model_id, load_model(choice.source, **choice.options))
            model = runner.model(model_id)
            for defense in defenses:
                target = plugins[defense].apply(model) if defense else model
                for probe in probes:
                    if self.probes is None or (defense is not None and self.defenses is None):
                        # defaults (probes, or defenses nobody asked for): skip pairs that do not apply
                        try:
                            plugins[probe.spec].check_requirements(target)
                        except RequirementError:
                            continue
                    shardable = plugins[probe.spec].shardable
                    specs.append(
                        RunSpec(
                            model=model_id,
                            probe=checked[probe.spec],
                            data=self.data,
                            defense=checked[defense] if defense else None,
                            samples=self.samples,
                            seed=self.seed,
                            budget_s=self.budget if self.budget_given else plugins[probe.spec].default_budget_s,
                            device=self.device,
                            batch_size=self.batch_size,
                            model_options={k: v for k, v in choice.options.items() if k not in LOAD_OPTIONS},  # not in run ids
                            shards=(min(self.shards, self.samples) if self.samples is not None else self.shards) if shardable else 1,
                        )
                    )
        return _unique(specs, lambda spec: spec.run_id)  # equal after checking ("8/255" and 0.0313...): run once


def _default_specs(kind: str) -> list[PluginSpec]:
    """The plugins of ``kind`` that run when an audit names none (``in_default_audit``)."""
    return [PluginSpec(kind, e.name) for e in registry.entries(kind) if e.obj.in_default_audit]


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a TOML audit config; errors name the file and the offending key."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    for key in values:
        if key not in TOP_KEYS:
            raise UsageError(f"{path}: unknown key {key!r}{suggest(key, TOP_KEYS)}")
    if "models" in values:
        values["models"] = [_model_choice(m, f"{path}: models[{i}]") for i, m in enumerate(_as_list(values["models"], "models"))]
    if "probes" in values:
        values["probes"] = [_probe_choice(p, f"{path}: probes[{i}]") for i, p in enumerate(_as_list(values["probes"], "probes"))]
    if "defenses" in values:
        values["defenses"] = _as_list(values["defenses"], "defenses")
    for key in ("fail_under", "budget", "ray_task_cpus", "ray_task_gpus"):
        if key in values and not isinstance(values[key], (int, float)):
            raise UsageError(f"{path}: {key!r} must be a number, got {values[key]!r}")
    if "save_adversarials" in values and not isinstance(values["save_adversarials"], bool):
        raise UsageError(f"{path}: 'save_adversarials' must be true or false, got {values['save_adversarials']!r}")
    if "seed" in values and (not isinstance(values["seed"], int) or isinstance(values["seed"], bool)):
        raise UsageError(f"{path}: 'seed' must be an integer, got {values['seed']!r}")
    for key in ("out", "data", "executor", "ray_address", "device"):
        if key in values and not isinstance(values[key], str):
            raise UsageError(f"{path}: {key!r} must be a string, got {values[key]!r}")
    for i, defense in enumerate(values.get("defenses", [])):
        if not isinstance(defense, str):
            raise UsageError(f"{path}: defenses[{i}] must be a string such as \"bit-depth:bits=4\" or \"none\", got {defense!r}")
    return values


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (str, dict)):
        return [value]
    if not isinstance(value, list):
        raise UsageError(f"config key {key!r} must be a list, got {value!r}")
    return value


def _model_choice(value: Any, where: str) -> ModelChoice:
    if isinstance(value, ModelChoice):
        return value
    if isinstance(value, str):
        return ModelChoice(value)
    if not isinstance(value, dict) or "source" not in value:
        raise UsageError(f"{where}: a model is a string or a table with a 'source' key, got {value!r}")
    for key in value:
        if key not in MODEL_KEYS:
            raise UsageError(f"{where}: unknown key {key!r}{suggest(key, MODEL_KEYS)}")
    options = {k: v for k, v in value.items() if k != "source"}
    return ModelChoice(value["source"], options)


def _probe_choice(value: Any, where: str) -> ProbeChoice:
    if isinstance(value, str):
        return ProbeChoice(probe_spec(value))
    if not isinstance(value, dict) or "name" not in value:
        raise UsageError(f"{where}: a probe is a string or a table with a 'name' key, got {value!r}")
    for key in value:
        if key not in PROBE_KEYS:
            raise UsageError(f"{where}: unknown key {key!r}{suggest(key, PROBE_KEYS)}")
    params = value.get("params", {})
    if not isinstance(params, dict):
        raise UsageError(f"{where}: 'params' must be a table, got {params!r}")
    fail_under = value.get("fail_under")
    if fail_under is not None and not isinstance(fail_under, (int, float)):
        raise UsageError(f"{where}: 'fail_under' must be a number, got {fail_under!r}")
    spec = probe_spec(value["name"])
    return ProbeChoice(PluginSpec(spec.kind, spec.name, {**spec.params, **params}), fail_under)


def _unique(items: list[Any], key: Callable[[Any], Any]) -> list[Any]:
    """``items`` without repeats (by ``key``), in first-occurrence order."""
    seen: set[Any] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def samples_value(value: Any, key: str = "samples") -> int | None:
    """A sample count: a positive integer, or ``"all"`` / ``None`` for every sample (``None``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"{key!r} must be a positive integer or \"all\", got {value!r}")
    return value


def _positive_int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"{key!r} must be a positive integer, got {value!r}")
    return value
