"""The runner: an audit is a list of independent run units (model x defense x probe x data).

Each :class:`RunSpec` is plain data (serialisable, hashable into a ``run_id``), so runs can be
executed in any order or elsewhere. The :class:`Runner` seeds each run, enforces its time budget,
persists every finished run at once (:class:`~robustcheck.run.checkpoint.RunStore`) and writes the outputs:
``results.json`` (canonical), ``records.csv`` (per-sample rows) and ``report.html``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import platform
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.markup import escape

import robustcheck
from robustcheck.api import Artifact, ProbeResult, RunContext, Table
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.loading import load_data
from robustcheck.deadline import budget_scope
from robustcheck.defaults import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES
from robustcheck.devices import check_device_name, describe_device, resolve_device
from robustcheck.errors import InputError, ProbeTimeout, RobustCheckError, UsageError
from robustcheck.jsonutil import json_default
from robustcheck.models.classifier import ImageClassifier, audited_model
from robustcheck.models.loading import load_model
from robustcheck.params import PluginSpec
from robustcheck.plugins import create, plugin_class
from robustcheck.reports.html import write_report
from robustcheck.run.checkpoint import RunStore
from robustcheck.run.flags import audit_flags
from robustcheck.run.history import ResultsDB, weights_hash
from robustcheck.seeding import seed_everything

#: How a run draws its samples (part of ``run_id``): seeded and class-stratified, classes interleaved.
SAMPLING = "stratified"


@dataclass(frozen=True)
class RunSpec:
    """One run unit: plain data, so it can run anywhere and be hashed into a ``run_id``.

    Attributes:
        model: registry name, import path or file (``NAME:key=value`` for options).
        probe: the probe or verifier with its parameters; text (``"pgd-linf:steps=20"``) is parsed once,
            here, and ``params`` (keyword only at construction) are merged into it.
        data: data spec; ``None`` means the model's default data.
        defense: the defense with its parameters (text is parsed like ``probe``), or ``None``.
        samples: how many samples of the data to use, a seeded, class-stratified draw
            (:meth:`~robustcheck.data.dataset.ImageDataset.sample`; ``None``: all of them).
        seed: seed for everything random in this run, the draw of its samples included.
        budget_s: time budget of the probe in seconds (``None``: unlimited); not part of ``run_id``.
        device: where the run executes (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), resolved where it
            runs (:func:`robustcheck.devices.resolve_device`), the model moved there; ``None``: the model stays
            where it is (in-memory models of API and pytest users are not moved unless asked). Not part of ``run_id``.
        model_options: adapter options the model was loaded with (bounds, mean, std, labels, ...);
            part of ``run_id``, so resuming after changing them recomputes the runs.
        shards: split the drawn samples into this many contiguous shards, each its own unit (run in parallel
            by the ray executor), merged by the probe (``Probe.merge``) into this run's result.
        shard: set on a shard unit: which shard of ``shards`` it is (``None`` for a whole run).
    """

    model: str
    probe: PluginSpec
    params: InitVar[dict[str, Any] | None] = None
    data: str | None = None
    defense: PluginSpec | None = None
    samples: int | None = DEFAULT_SAMPLES
    seed: int = 0
    budget_s: float | None = None
    device: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    model_options: dict[str, Any] = field(default_factory=dict)
    shards: int = 1
    shard: int | None = None

    def __post_init__(self, params: dict[str, Any] | None) -> None:
        probe = PluginSpec.parse("probe", self.probe)
        if params:
            probe = PluginSpec(probe.kind, probe.name, {**probe.params, **params})
        object.__setattr__(self, "probe", probe)
        if self.defense is not None:
            object.__setattr__(self, "defense", PluginSpec.parse("defense", self.defense))
        if not isinstance(self.shards, int) or self.shards < 1:
            raise UsageError(f"shards must be a positive integer, got {self.shards!r}")
        if self.shard is not None and not 0 <= self.shard < self.shards:
            raise UsageError(f"shard {self.shard} out of range for {self.shards} shards")
        if self.device is not None:
            check_device_name(self.device)

    def identity(self) -> dict[str, Any]:
        """What determines the result (everything but the time budget and the device), in the form run ids have
        always hashed: probe name and parameters apart, the defense as its spec text."""
        out = {
            "model": self.model,
            "probe": self.probe.name,
            "params": self.probe.params,
            "data": self.data,
            "defense": str(self.defense) if self.defense else None,
            "samples": self.samples,
            "seed": self.seed,
            "batch_size": self.batch_size,
            # how samples are drawn: run ids of first-N runs (before stratified sampling) never match
            "sampling": SAMPLING,
        }
        # defaults are left out, so run ids of specs without these fields stay as they were
        for key, default in (("model_options", {}), ("shards", 1), ("shard", None)):
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        return out

    def shard_units(self) -> list[RunSpec]:
        """The units this run executes as: itself, or one spec per shard."""
        if self.shards == 1 or self.shard is not None:
            return [self]
        return [dataclasses.replace(self, shard=i) for i in range(self.shards)]

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        defense = f"+{self.defense}" if self.defense else ""
        shard = f" [shard {self.shard + 1}/{self.shards}]" if self.shard is not None else ""
        return f"{self.model}{defense} / {self.probe.name}{shard}"


@dataclass
class RunOutcome:
    """A finished run: its spec, the result and whether it came from the store (``resumed``).

    ``indices``: the dataset indices of the samples it ran on, in the order the probe saw them
    (``None``: unknown); ``labels``: the class names of the model as audited (``None``: none);
    ``device``: the device it ran on (``None``: unknown, e.g. stored by an older version).
    """

    spec: RunSpec
    result: ProbeResult
    data_name: str
    score_doc: str = ""
    resumed: bool = False
    indices: list[int] | None = None
    labels: list[str] | None = None
    device: str | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "run_id": self.spec.run_id,
            "model": self.spec.model,
            "defense": str(self.spec.defense) if self.spec.defense else None,
            "probe": self.spec.probe.name,
            "params": self.spec.probe.params,
            "data": self.data_name,
            "samples": int(len(r.records)) if len(r.records) else self.spec.samples,
            "score": r.score,
            "metrics": r.metrics,
            "tables": [t.to_json() for t in r.tables],
            "status": r.status,
            "message": r.message,
            "seconds": round(r.seconds, 3),
            "device": self.device,
            "seed": r.seed,
            "score_doc": self.score_doc,
            "indices": self.indices,
            "labels": self.labels,
        }


def environment() -> dict[str, str]:
    """Versions of what produced the numbers."""
    import z3  # here, not at the top: the solver and foolbox load only when results are written

    from robustcheck.probes._foolbox import foolbox_version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "foolbox": foolbox_version(),
        "z3": z3.get_version_string(),
        "platform": platform.platform(),
    }


class Runner:
    """Executes run specs with caching of models and data, persistence and progress.

    Args:
        out_dir: output folder (``None``: keep nothing on disk).
        resume: reuse runs already stored in ``out_dir`` (else the store is cleared first).
        quiet: no progress bars.
        save_adversarials: write each attack run's adversarial examples to ``out_dir/adversarials/<run_id>.npz``
            as the run finishes (:func:`save_adversarials`).
    """

    def __init__(
        self, out_dir: str | Path | None = None, *, resume: bool = False, quiet: bool = False, save_adversarials: bool = False
    ) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.quiet = quiet
        self.save_adversarials = save_adversarials
        self.store = RunStore(self.out_dir / "runs.sqlite") if self.out_dir is not None else None
        if self.store is not None and not resume:
            self.store.clear()
        self._models: dict[str, ImageClassifier] = {}
        self._data: dict[str, ImageDataset] = {}
        self._samples: dict[tuple[str, int | None, int], ImageDataset] = {}  # (data, samples, seed) -> the draw
        self._audited: dict[tuple[str, str], ImageClassifier] = {}  # (model, data) -> the model as audited on it

    # -- resolution (cached) -------------------------------------------------------------------
    def add_model(self, name: str, model: ImageClassifier) -> None:
        """Make an in-memory model available to specs under ``name``."""
        self._models[name] = model
        self._audited = {key: m for key, m in self._audited.items() if key[0] != name}

    def add_data(self, name: str, data: ImageDataset) -> None:
        """Make an in-memory data set available to specs under ``name``."""
        self._data[name] = data
        self._samples = {key: d for key, d in self._samples.items() if key[0] != name}
        self._audited = {key: m for key, m in self._audited.items() if key[1] != name}

    def model(self, spec: str) -> ImageClassifier:
        if spec not in self._models:
            self._models[spec] = load_model(spec)
        return self._models[spec]

    def data_for(self, spec: RunSpec) -> ImageDataset:
        """The samples ``spec`` runs on, checked against its model (shape, bounds, label range).

        They are a seeded, class-stratified draw of ``spec.samples`` (:meth:`ImageDataset.sample`, the
        run's seed), then the run's shard of that draw; ``indices`` says where each came from.
        """
        name = self._data_name(spec)
        key = (name, spec.samples, spec.seed)
        if key not in self._samples:
            self._samples[key] = self._data[name].sample(spec.samples, spec.seed)
        data = self._samples[key]
        if spec.shard is not None:
            start, stop = shard_bounds(len(data), spec.shards)[spec.shard]
            data = data.subset(torch.arange(start, stop))
        model = self.model_for(spec)
        larger_ok = getattr(plugin_class(spec.probe), "accepts_larger_inputs", False)
        model.validate(data.x, what=f"data {name!r}", larger_ok=larger_ok)  # every sample: bounds are per-sample
        if model.num_classes is not None and len(data) and int(data.y.max()) >= model.num_classes:
            raise InputError(f"data {name!r} has label {int(data.y.max())} but model {spec.model!r} has {model.num_classes} classes")
        return data

    def _data_name(self, spec: RunSpec) -> str:
        """The data set ``spec`` names (or its model's default), loaded once."""
        name = spec.data or self.model(spec.model).default_data
        if name is None:
            raise InputError(f"model {spec.model!r} names no default data: pass --data")
        if name not in self._data:
            self._data[name] = load_data(name)
        return name

    def model_for(self, spec: RunSpec) -> ImageClassifier:
        """The model of ``spec`` as audited on its data: what it does not declare, the data supplies.

        A model without ``input_shape`` takes the data's image shape (so probes never feed it another
        size); a classifier without ``labels`` takes the data's class names when their count equals its
        number of outputs (so reports show names). The model itself (:meth:`model`) is left unchanged.
        """
        name = self._data_name(spec)
        key = (spec.model, name)
        if key not in self._audited:
            self._audited[key] = audited_model(self.model(spec.model), self._data[name])
        return self._audited[key]

    def check(self, specs: Sequence[RunSpec]) -> None:
        """Resolve every name, parameter, model and data set before running anything (fail fast)."""
        for spec in specs:
            data = self.data_for(spec)
            model = self.model_for(spec)
            sample = data.x[:2]
            if model.input_shape is not None:  # a probe may take larger photos and crop them itself
                sample = sample[..., : model.input_shape[1], : model.input_shape[2]]
            model.predict(sample)  # a model that raises fails here, before any run
            target = create(spec.defense).apply(model) if spec.defense else model
            probe = create(spec.probe)
            probe.check_requirements(target)
            if spec.shards > 1 and not probe.shardable:
                raise UsageError(f"probe {spec.probe.name!r} cannot split its samples into shards (it does not implement merge)")
            if spec.shards > len(data):
                raise UsageError(f"{spec.shards} shards for {len(data)} samples: at most one shard per sample")

    # -- execution -----------------------------------------------------------------------------
    def execute(self, spec: RunSpec, progress: Any = None) -> RunOutcome:
        """Run one unit now (no store lookup); probe errors become status ``error``."""
        data = self.data_for(spec)
        model = self.model_for(spec)
        if spec.device is not None:  # resolved here, where the run executes (a Ray worker has its own GPUs)
            model.move_to(resolve_device(spec.device))
        # seed after the cached model and data are resolved: building a model the first time draws
        # random initial weights, which would otherwise make a run depend on whether it came first
        seed_everything(spec.seed)
        probe = create(spec.probe)
        target = create(spec.defense).apply(model) if spec.defense else model
        probe.check_requirements(target)
        deadline = time.monotonic() + spec.budget_s if spec.budget_s else None
        context = RunContext(
            seed=spec.seed,
            deadline=deadline,
            batch_size=spec.batch_size,
            bare_model=model if spec.defense else None,
            progress=progress,
        )
        start = time.perf_counter()
        try:
            with budget_scope(deadline):
                result = probe.run(target, data, context)
            json.dumps(result.metrics, default=json_default)  # metrics a probe cannot save fail this run only
        except ProbeTimeout as exc:
            result = ProbeResult(None, status="timeout", message=f"{exc} after {spec.budget_s} s")
        except RobustCheckError as exc:
            result = ProbeResult(None, status="error", message=str(exc))
        except Exception as exc:  # a probe's bug must not lose the audit: record it, keep going
            result = ProbeResult(None, status="error", message=f"probe {spec.probe.name!r} raised {type(exc).__name__}: {exc}")
        result.seed, result.seconds = spec.seed, time.perf_counter() - start
        return RunOutcome(
            spec, result, data.name, probe.score_doc, indices=data.dataset_indices, labels=model.labels, device=describe_device(model.device)
        )

    def run(self, specs: Sequence[RunSpec], executor: Any = None) -> list[RunOutcome]:
        """Execute ``specs``, reusing stored runs; each finished run is saved the moment it arrives.

        ``executor`` (:mod:`robustcheck.run.ray`; default local, in this process) decides where units
        run; outcomes come back in ``specs`` order whatever order they finish in.
        """
        outcomes: dict[int, RunOutcome] = {}
        units: list[RunSpec] = []  # what still has to run: whole runs and shards
        for index, spec in enumerate(specs):
            stored = self._stored(spec)
            if stored is not None:
                outcomes[index] = stored
            else:
                units.extend(u for u in spec.shard_units() if u is spec or self._stored(u) is None)
        with self._progress() as bar:
            finished = {}
            overall = bar.add_task(f"all runs ({len(units)} to do, {len(specs) - len(units)} stored)", total=len(units)) if bar and units else None
            for position, outcome in (executor or LocalExecutor()).execute(self, units, bar):
                self._save(outcome)
                finished[units[position].run_id] = outcome
                if overall is not None:
                    bar.advance(overall)
        for index, spec in enumerate(specs):
            if index not in outcomes:
                outcomes[index] = finished.get(spec.run_id) or self._merge(spec, finished)
        return [outcomes[i] for i in range(len(specs))]

    def _merge(self, spec: RunSpec, finished: dict[str, RunOutcome]) -> RunOutcome:
        """Combine the shard outcomes of ``spec`` (fresh or stored) into its outcome, and save it."""
        parts = [finished.get(u.run_id) or self._stored(u) for u in spec.shard_units()]
        results = [p.result for p in parts if p is not None]
        offsets = [start for start, _ in shard_bounds(len(self.data_for(spec)), spec.shards)]
        failed = [r for r in results if r.status == "error"]
        probe = create(spec.probe)
        if failed or len(results) < spec.shards:
            message = failed[0].message if failed else "a shard did not finish"
            result = ProbeResult(None, status="error", message=f"{len(failed)} of {spec.shards} shards failed: {message}")
        else:
            result = probe.merge(results, offsets)
        result.seed, result.seconds = spec.seed, sum(r.seconds for r in results)
        data_name = parts[0].data_name if parts[0] is not None else ""
        data = self.data_for(spec)
        outcome = RunOutcome(
            spec, result, data_name, probe.score_doc, indices=data.dataset_indices, labels=self.model_for(spec).labels,
            device=devices_used(p for p in parts if p is not None),
        )  # fmt: skip
        self._save(outcome)
        return outcome

    def shipment(self, plugins: Sequence[Any] = ()) -> dict[str, Any]:
        """What a remote worker needs to run this runner's specs: in-memory models and data, plugins."""
        return {"models": dict(self._models), "data": dict(self._data), "plugins": list(plugins)}

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Any]:
        if self.quiet:
            yield None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # k/N (samples of a run, runs of the audit), time spent and left (rich's estimate from the rate so far)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            yield bar

    def _stored(self, spec: RunSpec) -> RunOutcome | None:
        if self.store is None:
            return None
        found = self.store.load(spec.run_id)
        if found is None:
            return None
        row, records, artifacts = found
        if row["status"] == "error":  # errors are retried on resume; ok and timeout runs are final
            return None
        tables = [Table.from_json(t) for t in row.get("tables", [])]
        result = ProbeResult(
            row["score"], row["metrics"], records, artifacts, tables,
            status=row["status"], message=row["message"], seed=row["seed"], seconds=row["seconds"],
        )  # fmt: skip
        return RunOutcome(
            spec, result, row["data"], row.get("score_doc", ""), resumed=True, indices=row.get("indices"), labels=row.get("labels"),
            device=row.get("device"),
        )  # fmt: skip

    def _save(self, outcome: RunOutcome) -> None:
        if self.store is not None:
            spec = dataclasses.asdict(outcome.spec)
            self.store.save(outcome.spec.run_id, spec, outcome.to_json(), outcome.result.records, outcome.result.artifacts)
        if self.save_adversarials and self.out_dir is not None and outcome.spec.shard is None:
            save_adversarials(outcome, self.out_dir / "adversarials" / f"{outcome.spec.run_id}.npz")

    # -- outputs -------------------------------------------------------------------------------
    def results(
        self, outcomes: Sequence[RunOutcome], seed: int, thresholds: Sequence[float | None] | None = None
    ) -> dict[str, Any]:
        """The canonical ``results.json`` content. Each run carries its validity ``flags``
        (:mod:`robustcheck.run.flags`) and its ``threshold``: the score it must reach (``thresholds``, one
        per outcome; ``None``: none set)."""
        thresholds = list(thresholds) if thresholds is not None else [None] * len(outcomes)
        runs = [
            {**o.to_json(), "threshold": threshold, "flags": [f.to_json() for f in flags]}
            for o, threshold, flags in zip(outcomes, thresholds, audit_flags(outcomes), strict=True)
        ]
        return {
            "robustcheck_version": robustcheck.__version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seed": seed,
            "environment": {**environment(), "device": devices_used(outcomes)},
            "runs": runs,
        }

    def write_outputs(
        self,
        outcomes: Sequence[RunOutcome],
        seed: int,
        thresholds: Sequence[float | None] | None = None,
        results_db: str | Path | None = None,
    ) -> dict[str, Any]:
        """Write ``results.json``, ``records.csv`` and ``report.html`` into ``out_dir`` and append the
        runs to the results database ``results_db`` (if given); return the results."""
        results = self.results(outcomes, seed, thresholds)
        if self.out_dir is None:
            return results
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=json_default) + "\n")
        records_table(outcomes).to_csv(self.out_dir / "records.csv", index=False)
        artifacts: dict[str, list[Artifact]] = {o.spec.run_id: o.result.artifacts for o in outcomes}
        report = write_report(self.out_dir / "report.html", results, artifacts)
        if results_db is not None:
            hashes = {o.spec.model: weights_hash(self.model(o.spec.model)) for o in outcomes}
            ResultsDB(results_db).append(results, report=str(report.resolve()), hashes=hashes)
        return results


def devices_used(outcomes: Iterable[RunOutcome]) -> str | None:
    """The devices ``outcomes`` ran on, as one text (``"cpu"``, ``"cpu, cuda:0 (...)"``; ``None``: unknown)."""
    return ", ".join(sorted({o.device for o in outcomes if o.device})) or None


def save_adversarials(outcome: RunOutcome, path: Path) -> Path | None:
    """Write the adversarial examples of an attack run as ``.npz`` (``None`` where the probe made none).

    One entry per correctly classified sample an attack fooled: ``adversarial`` ``(N, C, H, W)`` float32 in the
    model's bounds (at the sample's smallest breaking epsilon), ``epsilon``, ``label``, ``prediction`` (clean),
    ``adv_prediction``, ``index`` (position in the run's samples) and ``dataset_index``; ``run_id`` and ``probe``
    as strings.
    """
    result = outcome.result
    records = result.records
    if result.adversarials is None or not len(records) or "min_epsilon" not in records.columns:
        return None
    fooled = (records["correct"].astype(bool) & records["min_epsilon"].notna()).to_numpy()
    dataset_index = _dataset_index(records, outcome.indices)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        adversarial=result.adversarials.numpy()[fooled].astype(np.float32),
        epsilon=records["min_epsilon"].to_numpy(float)[fooled],
        label=records["label"].to_numpy()[fooled],
        prediction=records["prediction"].to_numpy()[fooled],
        adv_prediction=records["adv_prediction"].to_numpy()[fooled],
        index=records["index"].to_numpy()[fooled],
        dataset_index=(dataset_index.to_numpy() if dataset_index is not None else records["index"].to_numpy())[fooled],
        run_id=np.array(outcome.spec.run_id),
        probe=np.array(outcome.spec.probe.name),
    )
    return path


def records_table(outcomes: Sequence[RunOutcome]) -> pd.DataFrame:
    """All per-sample rows, each prefixed by the run it belongs to.

    ``dataset_index`` is a sample's position in the data set (the probe's own ``index`` is its position in
    the run's samples); ``label_name`` its label's class name, when the model as audited has names.
    """
    frames = []
    for o in outcomes:
        if len(o.result.records):
            frame = o.result.records.copy()
            for position, (key, value) in enumerate(
                (("run_id", o.spec.run_id), ("model", o.spec.model), ("defense", str(o.spec.defense or "")), ("probe", o.spec.probe.name))
            ):
                frame.insert(position, key, value)
            dataset_index = _dataset_index(frame, o.indices)
            if dataset_index is not None:
                frame.insert(4, "dataset_index", dataset_index)
            if o.labels and "label" in frame.columns and "label_name" not in frame.columns:
                frame.insert(list(frame.columns).index("label") + 1, "label_name", _label_names(frame["label"], o.labels))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "model", "defense", "probe"])


def _dataset_index(records: pd.DataFrame, indices: list[int] | None) -> pd.Series | None:
    """The dataset index of each record: ``indices[index]`` (``index``: the sample's position in the run),
    or ``indices`` row by row when the records have no usable ``index`` but one row per sample."""
    if not indices or "dataset_index" in records.columns:
        return None
    lookup = pd.Series(indices, dtype="int64")
    if "index" in records.columns:
        position = pd.to_numeric(records["index"], errors="coerce")
        if position.notna().all() and (position == position.round()).all() and position.between(0, len(indices) - 1).all():
            return pd.Series(lookup.to_numpy()[position.astype("int64").to_numpy()], index=records.index)
        return None
    return pd.Series(lookup.to_numpy(), index=records.index) if len(records) == len(indices) else None


def _label_names(labels: pd.Series, names: list[str]) -> list[str | None]:
    out: list[str | None] = []
    for value in labels:
        try:
            k = int(value)
        except (TypeError, ValueError):
            k = -1
        out.append(str(names[k]) if 0 <= k < len(names) and k == value else None)
    return out


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``shards`` contiguous, near-equal shards of ``n`` samples."""
    edges = [round(i * n / shards) for i in range(shards + 1)]
    return list(itertools.pairwise(edges))


def summary_line(outcome: RunOutcome) -> str:
    r = outcome.result
    return f"score {r.score:.3f}" if r.status == "ok" and r.score is not None else r.status


def unit_label(index: int, specs: Sequence[RunSpec]) -> str:
    """``run 3/12 digits-cnn / pgd-linf``: the progress line of unit ``index`` of ``specs`` (escaped for rich)."""
    return f"run {index + 1}/{len(specs)} {escape_label(specs[index].label)}"


def escape_label(text: str) -> str:
    return escape(text)







class LocalExecutor:
    """Run units in this process, in order, with a progress bar per unit."""

    name = "local"

    def execute(self, runner: Runner, specs: Sequence[RunSpec], bar: Any) -> Iterator[tuple[int, RunOutcome]]:
        """Yield ``(index in specs, outcome)`` as units finish."""
        for index, spec in enumerate(specs):
            label = unit_label(index, specs)
            task = bar.add_task(label, total=len(runner.data_for(spec))) if bar else None
            outcome = runner.execute(spec, progress=(lambda n, t=task: bar.advance(t, n)) if bar else None)
            if bar:
                bar.update(task, completed=bar.tasks[task].total, description=f"{label}: {summary_line(outcome)}")
            yield index, outcome

