"""Executors (robustcheck.run.ray): local in-process runs and Ray tasks give the same audit.

Ray tests are marked ``ray`` and skipped where Ray is not installed (``pip install -e ".[ray]"``); each
starts a local Ray instance with 2 CPUs, as a user's laptop or CI runner would.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import comparable_runs, stored_runs

from robustcheck.errors import UsageError
from robustcheck.run.ray import RayExecutor, create_executor
from robustcheck.run.runner import LocalExecutor, Runner, RunOutcome, RunSpec

pytestmark = pytest.mark.usefixtures("single_thread")


def _specs(tmp_path: Path) -> list[RunSpec]:
    """A small audit: a registry model under two attacks (one defended), an in-process probe, an error."""
    base = {"model": "digits-mlp", "samples": 24, "seed": 3}
    return [
        RunSpec(**base, probe="fgsm", params={"epsilons": [0.0, 0.05, 0.1]}),
        RunSpec(**base, probe="pgd-linf", params={"epsilons": [0.0, 0.1], "steps": 5}, defense="bit-depth"),
        RunSpec(**base, probe="sleepy", params={"sleep": 0.0}),
        RunSpec(**base, probe="explode"),
        RunSpec(**base, probe="sleepy", params={"sleep": 0.0}, shards=3),  # three tasks, merged by the driver
    ]


def test_create_executor() -> None:
    assert isinstance(create_executor(None), LocalExecutor) and isinstance(create_executor("local"), LocalExecutor)
    with pytest.raises(UsageError, match="unknown executor 'dask'.*local, ray"):
        create_executor("dask")
    with pytest.raises(UsageError, match="--ray-address and --ray-task-cpus/--ray-task-gpus need --executor ray"):
        create_executor("local", "auto")
    with pytest.raises(UsageError, match="need --executor ray"):
        create_executor(None, task_gpus=1)
    with pytest.raises(UsageError, match="max_retries"):
        RayExecutor(max_retries=-1)


def test_local_executor_is_the_default(helpers: Any, tmp_path: Path) -> None:
    specs = _specs(tmp_path)
    default = Runner(None, quiet=True).run(specs)
    explicit = Runner(None, quiet=True).run(specs, LocalExecutor())
    assert [o.to_json() | {"seconds": 0} for o in default] == [o.to_json() | {"seconds": 0} for o in explicit]


def test_audit_plan_executor_keys(tmp_path: Path) -> None:
    from robustcheck.run.plan import AuditPlan

    config = tmp_path / "audit.toml"
    config.write_text('executor = "local"\nshards = 3\n')
    plan = AuditPlan.from_sources({}, config)
    assert isinstance(plan.make_executor(), LocalExecutor) and plan.shards == 3
    config.write_text("executor = 3\n")
    with pytest.raises(UsageError, match="'executor' must be a string"):
        AuditPlan.from_sources({}, config)


def test_cli_executor_options(cli: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("audit", "--ray-address", "auto", "--quiet")
    assert result.code == 2 and "need --executor ray" in result.err
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = cli("audit", "--executor", "ray", "--quiet")
    assert result.code == 2 and "pip install 'robustcheck-harness[ray]'" in result.err


def test_task_resources_come_from_the_probe_and_can_be_overridden() -> None:
    spec = RunSpec(model="digits-mlp", probe="fgsm")
    assert RayExecutor()._resources(spec) == {"num_cpus": 1.0, "num_gpus": 0.0}  # Plugin.resources default
    assert RayExecutor(task_cpus=2, task_gpus=0.5)._resources(spec) == {"num_cpus": 2.0, "num_gpus": 0.5}


# --------------------------------------------------------------------------- Ray

ray = pytest.importorskip("ray", reason="the ray executor needs Ray (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray instance (2 CPUs) for this module: starting one takes seconds to a minute.

    Its workers import ``rc_helpers`` from a folder put on their ``PYTHONPATH`` here, the way
    :class:`RayExecutor` passes the driver's ``sys.path`` to an instance it starts itself.
    """
    from helpers import HELPERS_MODULE, HELPERS_SOURCE

    folder = tmp_path_factory.mktemp("ray-helpers")
    (folder / f"{HELPERS_MODULE}.py").write_text(HELPERS_SOURCE)
    env = {"PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def ray_executor(ray_cluster: None) -> Iterator[RayExecutor]:
    """A Ray executor on the module's instance (it joins a running instance and leaves it running)."""
    yield RayExecutor()
    assert ray.is_initialized()


@pytest.mark.ray
def test_ray_results_equal_local_results(helpers: Any, tmp_path: Path, ray_executor: RayExecutor) -> None:
    specs = _specs(tmp_path)
    local = Runner(tmp_path / "local", quiet=True)
    distributed = Runner(tmp_path / "ray", quiet=True)
    local_results = local.write_outputs(local.run(specs), seed=3)
    ray_results = distributed.write_outputs(distributed.run(specs, ray_executor), seed=3)
    assert comparable_runs(ray_results) == comparable_runs(local_results)
    assert [r["status"] for r in ray_results["runs"]] == ["ok", "ok", "ok", "error", "ok"]
    assert (tmp_path / "ray" / "records.csv").read_bytes() == (tmp_path / "local" / "records.csv").read_bytes()


@pytest.mark.ray
def test_ray_retries_a_task_whose_worker_died(helpers: Any, tmp_path: Path, ray_executor: RayExecutor) -> None:
    marker = tmp_path / "crashed"
    spec = RunSpec(model="digits-mlp", probe="crash-once", params={"path": str(marker)}, samples=16)
    outcome = Runner(tmp_path / "o", quiet=True).run([spec], ray_executor)[0]
    assert marker.read_text() == "crashed once"  # the first attempt really died
    assert outcome.result.status == "ok" and outcome.result.score is not None


class _InterruptAfter:
    """Wraps an executor; raises KeyboardInterrupt after ``n`` outcomes reached the runner (Ctrl-C)."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n = inner, n

    def execute(self, runner: Runner, specs: Sequence[RunSpec], bar: Any) -> Iterator[tuple[int, RunOutcome]]:
        for count, item in enumerate(self.inner.execute(runner, specs, bar), start=1):
            yield item
            if count == self.n:
                raise KeyboardInterrupt


@pytest.mark.ray
def test_interrupted_ray_audit_resumes(helpers: Any, tmp_path: Path, ray_executor: RayExecutor) -> None:
    specs = _specs(tmp_path)[:3]
    with pytest.raises(KeyboardInterrupt):
        Runner(tmp_path / "o", quiet=True).run(specs, _InterruptAfter(ray_executor, 1))
    saved = stored_runs(tmp_path / "o" / "runs.sqlite")
    assert len(saved) == 1  # the run that finished was saved by the driver as it arrived
    outcomes = Runner(tmp_path / "o", resume=True, quiet=True).run(specs, ray_executor)
    assert sum(o.resumed for o in outcomes) == 1
    assert [o.spec.run_id for o in outcomes if o.resumed] == list(saved)
    assert comparable_runs({"runs": [o.to_json() for o in outcomes]}) == comparable_runs(
        {"runs": [o.to_json() for o in Runner(None, quiet=True).run(specs)]}
    )


@pytest.mark.ray
@pytest.mark.parametrize("how", ["file", "module of the current folder"])
def test_ray_workers_run_the_users_own_model_code(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_executor: RayExecutor
) -> None:
    """The workers cannot import ``mynet`` (another folder, another sys.path): its code travels by value."""
    from helpers import CONSTANT_MODEL_SOURCE

    folder = tmp_path / "user"
    folder.mkdir()
    module = f"rc_ray_user_{'file' if how == 'file' else 'cwd'}"
    (folder / f"{module}.py").write_text(CONSTANT_MODEL_SOURCE)
    monkeypatch.chdir(folder)
    monkeypatch.delitem(sys.modules, module, raising=False)
    source = f"{folder / module}.py:constant" if how == "file" else f"{module}:constant"
    spec = RunSpec(model=source, probe="fgsm", samples=8)
    ray_outcome = Runner(None, quiet=True).run([spec], ray_executor)[0]
    assert ray_outcome.result.status == "ok", ray_outcome.result.message
    local = Runner(None, quiet=True).run([spec])[0]
    assert ray_outcome.result.metrics == local.result.metrics
