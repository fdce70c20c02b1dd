"""The time budget of the run in progress, seen by every model call made on its behalf.

Probes check their budget between batches (:meth:`robustcheck.api.RunContext.check_time`), but one batch
of a long attack (a foolbox PGD with thousands of steps, a GAN's training) can outlast the whole budget.
The runner therefore opens a :func:`budget_scope`, and the model adapters call :func:`interrupt_if_spent`
on every forward pass: the first call after the deadline raises :class:`ProbeTimeout` from inside the
attack loop, wherever it is. Later calls go through, so that the probe can still compute its metrics and
example images from what finished (a probe that keeps looping is caught by its own ``check_time``).

A context variable, not a global: concurrent runs in threads each see their own deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass

from robustcheck.errors import ProbeTimeout


@dataclass
class _Budget:
    deadline: float  # a time.monotonic() value
    interrupted: bool = False


_current: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("robustcheck_budget", default=None)


@contextlib.contextmanager
def budget_scope(deadline: float | None) -> Iterator[None]:
    """Let model calls inside the block interrupt the run once ``time.monotonic()`` passes ``deadline``
    (``None``: no limit)."""
    token = _current.set(_Budget(deadline) if deadline is not None else None)
    try:
        yield
    finally:
        _current.reset(token)


def seconds_left() -> float | None:
    """Seconds until the current deadline (negative once spent; ``None``: no deadline)."""
    budget = _current.get()
    return None if budget is None else budget.deadline - time.monotonic()


def interrupt_if_spent() -> None:
    """Raise :class:`ProbeTimeout` the first time it is called after the deadline of the current scope."""
    budget = _current.get()
    if budget is not None and not budget.interrupted and time.monotonic() > budget.deadline:
        budget.interrupted = True
        raise ProbeTimeout("time budget spent")
