"""Running audits on Ray: :class:`RayExecutor`, and :func:`create_executor`, which picks it or the in-process
:class:`~robustcheck.run.runner.LocalExecutor` by name (``--executor local|ray``).

:class:`RayExecutor` (extra ``[ray]``) sends each of the runner's independent run units to a Ray cluster as a
task: a local Ray instance started for the audit when no address is given, or an existing cluster
(``address="auto"`` or ``"ray://host:10001"``). The worker side (a runner cached per worker process, the task,
the progress actor) is here too.

Finished :class:`~robustcheck.run.runner.RunOutcome` objects go back to the runner, which saves each one the
moment it arrives (from the driver), as under the local executor, so an interrupted audit resumes the same way
under either. A unit seeds itself from its spec, so the same seed gives the same results on both.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from robustcheck import registry
from robustcheck.errors import RequirementError, UsageError
from robustcheck.plugins import plugin_class
from robustcheck.run.runner import LocalExecutor, Runner, RunOutcome, RunSpec, summary_line, unit_label

EXECUTORS = ("local", "ray")
#: How often the driver refreshes progress bars while waiting for Ray tasks (seconds).
POLL_S = 0.25


class RayExecutor:
    """Run units as Ray tasks; results come back to the driver in completion order.

    Args:
        address: ``None`` starts a local Ray instance for this audit (stopped afterwards); anything else
            (``"auto"``, ``"ray://head:10001"``) joins that cluster and leaves it running.
        num_cpus: CPUs of the local instance (``None``: all); ignored when joining a cluster.
        task_cpus, task_gpus: resources of each task, overriding what probes declare
            (``Plugin.resources``; default one CPU, no GPU).
        max_retries: times a task is retried when its worker process dies (a crashed or killed worker,
            a lost node). Errors raised by a probe are results (status ``error``), not retried.

    Models named by the spec (registry names, files) are loaded once per worker process and kept;
    models and data added to the runner in memory travel once through Ray's object store. Plugins
    registered in-process (``@register``) are re-registered in the workers, which get the driver's
    ``sys.path`` so that their modules import there too.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        task_cpus: float | None = None,
        task_gpus: float | None = None,
        max_retries: int = 3,
    ) -> None:
        if max_retries < 0:
            raise UsageError(f"max_retries must be >= 0, got {max_retries}")
        self.address, self.num_cpus = address, num_cpus
        self.task_cpus, self.task_gpus, self.max_retries = task_cpus, task_gpus, max_retries

    def execute(self, runner: Runner, specs: Sequence[RunSpec], bar: Any) -> Iterator[tuple[int, RunOutcome]]:
        """Submit every unit, then yield ``(index in specs, outcome)`` as tasks finish."""
        if not specs:
            return
        ray = import_ray()
        started_here = self._connect(ray)
        try:
            yield from self._execute(ray, runner, specs, bar)
        finally:
            if started_here:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Connect to (or start) Ray; True if this call started the instance (and must stop it)."""
        if ray.is_initialized():
            return False
        # Workers import the driver's modules (in-process plugins, test helpers) through sys.path.
        path = os.pathsep.join(p for p in sys.path if p)
        options: dict[str, Any] = {
            "runtime_env": {"env_vars": {"PYTHONPATH": path}},
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "ERROR",
        }
        if self.address is None:
            options["num_cpus"] = self.num_cpus
        # "local" always starts a fresh instance: without it Ray joins any cluster it finds running
        ray.init(address=self.address or "local", **options)
        return self.address is None

    def _resources(self, spec: RunSpec) -> dict[str, float]:
        declared = dict(plugin_class(spec.probe).resources)
        if self.task_cpus is not None:
            declared["num_cpus"] = self.task_cpus
        if self.task_gpus is not None:
            declared["num_gpus"] = self.task_gpus
        return {"num_cpus": float(declared.get("num_cpus", 1)), "num_gpus": float(declared.get("num_gpus", 0))}

    def _execute(self, ray: Any, runner: Runner, specs: Sequence[RunSpec], bar: Any) -> Iterator[tuple[int, RunOutcome]]:
        for spec in specs:  # loaded here: workers get the objects (and the user's code), not names they may not resolve
            runner.model(spec.model)
        shipment = runner.shipment(registry.in_process_entries())
        for module in user_modules(shipment["models"].values()):
            ray.cloudpickle.register_pickle_by_value(module)
        shared = ray.put(shipment)
        progress = _progress_actor(ray).remote(len(specs))
        remote = ray.remote(_run_unit)
        pending: dict[Any, int] = {}
        for index, spec in enumerate(specs):
            ref = remote.options(max_retries=self.max_retries, retry_exceptions=False, **self._resources(spec)).remote(
                [shared], spec, progress, index
            )  # [shared]: a nested reference is not resolved by Ray, so workers can cache by its id
            pending[ref] = index
        labels = [unit_label(index, specs) for index in range(len(specs))]
        tasks = [bar.add_task(label, total=len(runner.data_for(spec))) for label, spec in zip(labels, specs, strict=True)] if bar else []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                if bar:
                    for task, count in zip(tasks, ray.get(progress.counts.remote()), strict=True):
                        bar.update(task, completed=min(count, bar.tasks[task].total))
                for ref in done:
                    index = pending.pop(ref)
                    outcome = ray.get(ref)
                    if bar:
                        bar.update(tasks[index], completed=bar.tasks[tasks[index]].total, description=f"{labels[index]}: {summary_line(outcome)}")
                    yield index, outcome
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)


def user_modules(models: Iterable[Any]) -> list[ModuleType]:
    """The modules defining the layers of ``models`` that are the user's own code: files outside every
    installed package (``path/to/file.py:factory``, a module of the current folder). Ray workers could not
    import them (another working folder, another ``sys.path``), so their code travels with the models,
    pickled by value."""
    installed = [Path(p).resolve() for p in {*site.getsitepackages(), site.getusersitepackages(), *sysconfig.get_paths().values()}]
    found: dict[str, ModuleType] = {}
    for model in models:
        for layer in model.modules():
            name = type(layer).__module__
            module = sys.modules.get(name)
            file = getattr(module, "__file__", None)
            if module is None or file is None or name in found or name.split(".")[0] == "robustcheck":
                continue
            path = Path(file).resolve()
            if not any(path.is_relative_to(folder) for folder in installed):
                found[name] = module
    return list(found.values())


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RequirementError(
            "the ray executor needs Ray: pip install 'robustcheck-harness[ray]' (or pip install ray)"
        ) from exc
    return ray


def create_executor(
    name: str | None, address: str | None = None, *, task_cpus: float | None = None, task_gpus: float | None = None
) -> LocalExecutor | RayExecutor:
    """The executor called ``name`` (``None``: local); the other options only apply to ``ray``."""
    if name in (None, "local"):
        if address is not None or task_cpus is not None or task_gpus is not None:
            raise UsageError("--ray-address and --ray-task-cpus/--ray-task-gpus need --executor ray")
        return LocalExecutor()
    if name == "ray":
        for key, value in (("task_cpus", task_cpus), ("task_gpus", task_gpus)):
            if value is not None and not value >= 0:
                raise UsageError(f"ray {key} must be >= 0, got {value}")
        import_ray()  # fail before any run, with the install hint
        return RayExecutor(address, task_cpus=task_cpus, task_gpus=task_gpus)
    raise UsageError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")


# --------------------------------------------------------------------------- worker side

#: Worker-process cache: the id of the shipped object -> a runner holding its models and data.
_WORKER_RUNNERS: dict[str, Runner] = {}


def _worker_runner(ray: Any, shared_ref: Any) -> Runner:
    """The runner of this worker process for this audit (built once, then reused by every task)."""
    key = shared_ref.hex()
    if key not in _WORKER_RUNNERS:
        shipment = ray.get(shared_ref)
        for entry in shipment["plugins"]:
            registry.register(entry.kind, entry.name, **entry.meta, source=entry.source)(entry.obj)
        runner = Runner(None, quiet=True)
        for name, model in shipment["models"].items():
            runner.add_model(name, model)
        for name, data in shipment["data"].items():
            runner.add_data(name, data)
        _WORKER_RUNNERS.clear()  # one audit at a time per worker: free the previous one's models
        _WORKER_RUNNERS[key] = runner
    return _WORKER_RUNNERS[key]


def _run_unit(shared: list[Any], spec: RunSpec, progress: Any, index: int) -> RunOutcome:
    """A Ray task: execute one unit in a worker, reporting per-sample progress to the driver."""
    import ray

    runner = _worker_runner(ray, shared[0])
    counted = [0]
    last = [0.0]

    def report(n: int) -> None:
        counted[0] += n
        if time.monotonic() - last[0] > POLL_S:  # batch the updates: one actor call per poll period
            last[0] = time.monotonic()
            progress.set.remote(index, counted[0])

    return runner.execute(spec, progress=report)


def _progress_actor(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class Progress:
        """Samples finished per task, written by workers, read by the driver's progress bars."""

        def __init__(self, n: int) -> None:
            self._counts = [0] * n

        def set(self, index: int, count: int) -> None:
            self._counts[index] = count

        def counts(self) -> list[int]:
            return self._counts

    return Progress
