"""Metrics shared by probes: robust-accuracy curves and their normalised area."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def epsilon_key(eps: float) -> str:
    """The string form of an epsilon used as a metrics key (6 significant digits)."""
    return f"{eps:.6g}"


def normalized_auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Area under ``ys(xs)`` (trapezoids) divided by the ``xs`` range: in [0, 1] when ``ys`` is.

    A single point gives its own value: the curve is constant as far as we know.
    """
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(x) == 0:
        raise ValueError("normalized_auc needs at least one point")
    order = np.argsort(x)
    x, y = x[order], y[order]
    span = x[-1] - x[0]
    if span <= 0:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / span)


def robust_accuracy_curve(robust: np.ndarray, epsilons: Sequence[float]) -> dict[str, float]:
    """``robust`` is a boolean ``(num_eps, N)`` array: sample n is classified correctly under every
    attack of size ``epsilons[i]``. Returns ``{epsilon_key(eps): accuracy}``."""
    return {epsilon_key(eps): float(robust[i].mean()) if robust.shape[1] else 0.0 for i, eps in enumerate(epsilons)}
