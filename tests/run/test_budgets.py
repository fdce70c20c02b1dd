"""Time budgets hold inside long loops (robustcheck.deadline, checked by every model call).

A run must end within max(5 s, 10 %) of its budget with status ``timeout`` and the metrics of what
finished, even when a single batch of the attack would take far longer than the whole budget.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from robustcheck.api import Probe, ProbeResult, RunContext
from robustcheck.data.dataset import ImageDataset
from robustcheck.deadline import budget_scope, interrupt_if_spent, seconds_left
from robustcheck.errors import ProbeTimeout
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.run.runner import Runner, RunSpec

pytestmark = pytest.mark.usefixtures("single_thread")


def tolerance(budget: float) -> float:
    return max(5.0, 0.1 * budget)


def run_timed(**spec: Any) -> tuple[Any, float]:
    start = time.monotonic()
    outcome = Runner().execute(RunSpec(**spec))
    return outcome.result, time.monotonic() - start


def test_one_endless_attack_batch_stops_at_the_budget() -> None:
    # one batch of 2,000,000 PGD steps would run for hours; the model call after the deadline ends it
    result, elapsed = run_timed(
        model="digits-mlp", probe="pgd-linf", params={"steps": 2_000_000}, samples=16, batch_size=16, budget_s=1.0
    )
    assert result.status == "timeout"
    assert "budget" in result.message
    assert elapsed <= 1.0 + tolerance(1.0)


def test_a_timeout_keeps_the_metrics_of_the_finished_batches() -> None:
    run_timed(model="digits-mlp", probe="pgd-linf", params={"steps": 1}, samples=4)  # foolbox's first import is slow
    result, elapsed = run_timed(
        model="digits-mlp", probe="pgd-linf", params={"steps": 40}, samples=400, batch_size=4, budget_s=3.0
    )  # 100 batches of about 0.1 s each on an idle machine: some finish, not all
    assert result.status == "timeout"
    assert elapsed <= 3.0 + tolerance(3.0)
    assert 0 < result.metrics["samples"] < 400
    assert len(result.records) == result.metrics["samples"]
    assert f"{result.metrics['samples']} of 400 samples attacked" in result.message


class EndlessForwards(Probe):
    """Calls the model for ever and never checks its budget: only the model adapter can stop it."""

    score_doc = "None: it never ends by itself."

    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        while True:
            model(data.x[:4])


def test_a_probe_that_never_checks_its_budget_is_stopped_by_the_model() -> None:
    model, data = load_model("digits-mlp"), _digits(8)
    start = time.monotonic()
    with pytest.raises(ProbeTimeout):
        EndlessForwards()(model, data, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - start <= 0.5 + tolerance(0.5)


def test_model_calls_after_the_interruption_go_through() -> None:
    """The probe may still compute metrics and examples from what finished."""
    model, data = load_model("digits-mlp"), _digits(4)
    with budget_scope(time.monotonic() - 1.0):
        assert seconds_left() is not None and seconds_left() < 0
        with pytest.raises(ProbeTimeout):
            model(data.x)
        assert model(data.x).shape == (4, 10)
    interrupt_if_spent()  # no scope: no deadline
    assert seconds_left() is None


@pytest.mark.parametrize(
    ("probe", "params"),
    [
        ("fooling", {"generations": 100_000, "time_budget": None}),
        ("translation", {"samples": 100_000}),
    ],
)
def test_other_probes_keep_the_budget(probe: str, params: dict[str, Any]) -> None:
    result, elapsed = run_timed(model="digits-cnn", probe=probe, params=params, samples=None, budget_s=1.5)
    assert result.status in {"timeout", "ok"}  # translation may finish the whole digits set in time
    assert elapsed <= 1.5 + tolerance(1.5)


def _digits(n: int) -> ImageDataset:
    from robustcheck.data.loading import load_data

    data = load_data("digits")
    return ImageDataset(data.x[:n], data.y[:n], name="digits")


def test_scopes_nest_and_restore() -> None:
    with budget_scope(time.monotonic() + 100):
        outer = seconds_left()
        with budget_scope(None):
            assert seconds_left() is None
        assert seconds_left() == pytest.approx(outer, abs=1.0)
