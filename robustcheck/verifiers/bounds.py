"""Sound bounds on every pre-activation of a canonical ReLU network over an input box: interval arithmetic and a
CROWN / DeepPoly-style backward linear relaxation (Zhang et al. 2018; Singh et al. 2019).

For an unstable ReLU with pre-activation bounds ``l < 0 < u`` the relaxation is the triangle: upper line
``a <= u (z - l) / (u - l)``, lower line ``a >= alpha z`` with ``alpha = 1`` if ``u > -l`` else ``0`` (CROWN's
adaptive choice). Bounds of a linear function ``lam . z_k`` are obtained by substituting these lines backwards
down to the input and concretising over the box.

Soundness margin: everything is computed in float64, so each bound is widened by ``REL_SLACK * (1 + S)`` where
``S`` is the sum of absolute values of every term that entered it (a generous bound of the accumulated float64
rounding, whose relative size is about ``depth * width * 2^-53`` of ``S``). The bounds refer to the real-valued
network of :mod:`robustcheck.verifiers.network`; the float32 model's deviation from it is bounded separately by
:func:`robustcheck.verifiers.rounding.float32_error`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robustcheck.verifiers.network import Affine, Network

#: relative widening of every float64 bound (rounding is ~1e-13 relative for our sizes: 1e-9 is ample).
REL_SLACK = 1e-9


@dataclass
class LayerBounds:
    """Pre-activation bounds ``lower[k] <= z_k <= upper[k]`` for each hidden layer ``k`` (float64 arrays)."""

    lower: list[np.ndarray]
    upper: list[np.ndarray]

    def unstable(self) -> list[np.ndarray]:
        """Boolean masks of the ReLUs whose sign the bounds do not fix."""
        return [(lo < 0) & (hi > 0) for lo, hi in zip(self.lower, self.upper, strict=True)]

    def num_unstable(self) -> int:
        """How many ReLUs the bounds leave unstable."""
        return int(sum(int(m.sum()) for m in self.unstable()))

    def magnitudes(self, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
        """Bounds on ``|input of affines[k]|``: the input box, then the post-ReLU upper bounds."""
        return [np.maximum(np.abs(lo), np.abs(hi))] + [np.maximum(u, 0.0) for u in self.upper]


def _widen(value: np.ndarray, scale: np.ndarray, sign: float) -> np.ndarray:
    """``value`` moved outwards (``sign`` -1: down, +1: up) by the float64 rounding allowance of ``scale``."""
    return value + sign * REL_SLACK * (1.0 + scale)


def _affine_interval(affine: Affine, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds ``(lower, upper)`` of ``W x + b`` for ``low <= x <= high`` (widened for float64 rounding)."""
    w_pos, w_neg = np.maximum(affine.weight, 0.0), np.minimum(affine.weight, 0.0)
    scale = np.abs(affine.weight) @ np.maximum(np.abs(low), np.abs(high)) + np.abs(affine.bias)
    bottom = w_pos @ low + w_neg @ high + affine.bias
    top = w_pos @ high + w_neg @ low + affine.bias
    return _widen(bottom, scale, -1.0), _widen(top, scale, 1.0)


def interval_bounds(
    net: Network, lo: np.ndarray, hi: np.ndarray
) -> tuple[LayerBounds, np.ndarray, np.ndarray]:
    """Interval propagation over the box ``[lo, hi]`` ``(n,)``: hidden pre-activation bounds and the logits'
    bounds ``(lower, upper)`` ``(K,)``."""
    low, high = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    bounds = LayerBounds([], [])
    for affine in net.affines[:-1]:
        new_low, new_high = _affine_interval(affine, low, high)
        bounds.lower.append(new_low)
        bounds.upper.append(new_high)
        low, high = np.maximum(new_low, 0.0), np.maximum(new_high, 0.0)
    out_low, out_high = _affine_interval(net.affines[-1], low, high)
    return bounds, out_low, out_high


def _relaxation(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per neuron ``(upper slope, upper intercept, lower slope)`` of ``relu`` on ``[lower, upper]``."""
    active, inactive = lower >= 0, upper <= 0
    unstable = ~active & ~inactive
    up_slope = np.where(active, 1.0, 0.0)
    up_icpt = np.zeros_like(lower)
    lo_slope = up_slope.copy()
    span = np.where(unstable, upper - lower, 1.0)
    up_slope = np.where(unstable, upper / span, up_slope)
    up_icpt = np.where(unstable, -lower * upper / span, up_icpt)
    lo_slope = np.where(unstable, (upper > -lower).astype(np.float64), lo_slope)
    return up_slope, up_icpt, lo_slope


def backward_lower(
    net: Network, layer: int, lam: np.ndarray, bounds: LayerBounds, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Sound lower bounds of ``lam @ z_layer`` over the box (``z_layer`` = output of ``affines[layer]``).

    ``lam`` is ``(m, n_layer)``; ``bounds`` must hold the pre-activation bounds of every hidden layer below
    ``layer``. Returns ``(m,)``.
    """
    return backward_linear(net, layer, lam, bounds, lo, hi)[0]


def backward_linear(
    net: Network, layer: int, lam: np.ndarray, bounds: LayerBounds, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`backward_lower` and the input coefficients ``(m, n)`` of the linear lower bound it concretised;
    ``where(coef > 0, lo, hi)`` is the box corner minimising that linear bound (a good candidate point)."""
    affine = net.affines[layer]
    coef = lam @ affine.weight
    const = lam @ affine.bias
    scale = np.abs(lam) @ np.abs(affine.bias)
    for j in range(layer - 1, -1, -1):
        up_slope, up_icpt, lo_slope = _relaxation(bounds.lower[j], bounds.upper[j])
        pos, neg = np.maximum(coef, 0.0), np.minimum(coef, 0.0)
        const = const + neg @ up_icpt
        scale = scale + np.abs(neg) @ up_icpt
        coef = pos * lo_slope + neg * up_slope
        below = net.affines[j]
        const = const + coef @ below.bias
        scale = scale + np.abs(coef) @ np.abs(below.bias)
        coef = coef @ below.weight
    value = const + np.maximum(coef, 0.0) @ lo + np.minimum(coef, 0.0) @ hi
    scale = scale + np.abs(coef) @ np.maximum(np.abs(lo), np.abs(hi))
    return _widen(value, scale, -1.0), coef


def crown_bounds(net: Network, lo: np.ndarray, hi: np.ndarray) -> LayerBounds:
    """CROWN bounds of every hidden layer, each intersected with the interval bounds."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    interval, _, _ = interval_bounds(net, lo, hi)
    bounds = LayerBounds([], [])
    for k in range(len(net.affines) - 1):
        if k == 0:  # the first layer is affine in the input: interval bounds are exact already
            lower, upper = interval.lower[0], interval.upper[0]
        else:
            eye = np.eye(net.affines[k].shape[0])
            lower = np.maximum(backward_lower(net, k, eye, bounds, lo, hi), interval.lower[k])
            upper = np.minimum(-backward_lower(net, k, -eye, bounds, lo, hi), interval.upper[k])
        bounds.lower.append(lower)
        bounds.upper.append(upper)
        # later interval bounds could be tighter from tighter inputs: recompute cheaply layer by layer
        if k + 1 < len(net.affines) - 1:
            low, high = _affine_interval(net.affines[k + 1], np.maximum(lower, 0.0), np.maximum(upper, 0.0))
            interval.lower[k + 1] = np.maximum(interval.lower[k + 1], low)
            interval.upper[k + 1] = np.minimum(interval.upper[k + 1], high)
    return bounds


def compute_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, method: str = "crown") -> LayerBounds:
    """Hidden-layer bounds by ``method`` (``"interval"`` or ``"crown"``)."""
    if method == "interval":
        return interval_bounds(net, lo, hi)[0]
    if method == "crown":
        return crown_bounds(net, lo, hi)
    raise ValueError(f"unknown bound method {method!r}")


def output_lower(
    net: Network, spec: np.ndarray, bounds: LayerBounds, lo: np.ndarray, hi: np.ndarray, method: str = "crown"
) -> np.ndarray:
    """Sound lower bounds of ``spec @ y`` (``spec`` ``(m, K)``) over the box; the better of CROWN and interval."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    last = net.affines[-1]
    a_lo = np.maximum(bounds.lower[-1], 0.0) if bounds.lower else lo
    a_hi = np.maximum(bounds.upper[-1], 0.0) if bounds.upper else hi
    combined = spec @ last.weight
    scale = np.abs(combined) @ np.maximum(np.abs(a_lo), np.abs(a_hi)) + np.abs(spec) @ np.abs(last.bias)
    interval = _widen(
        np.maximum(combined, 0.0) @ a_lo + np.minimum(combined, 0.0) @ a_hi + spec @ last.bias, scale, -1.0
    )
    if method == "interval":
        return interval
    return np.maximum(interval, backward_lower(net, len(net.affines) - 1, spec, bounds, lo, hi))


def split_bounds(
    net: Network, lo: np.ndarray, hi: np.ndarray, base: LayerBounds, splits: dict[tuple[int, int], int]
) -> LayerBounds | None:
    """Bounds on the sub-domain where each split ReLU ``(layer, neuron)`` is active (+1) / inactive (-1).

    Split neurons get ``[max(l, 0), u]`` / ``[l, min(u, 0)]`` (their relaxation becomes exact) and every layer
    after the first split one is recomputed with CROWN. ``None`` when a split contradicts the bounds (empty).
    """
    bounds = LayerBounds([b.copy() for b in base.lower], [b.copy() for b in base.upper])
    _clamp_splits(bounds, splits)
    first = min((k for k, _ in splits), default=len(bounds.lower))
    for k in range(first + 1, len(bounds.lower)):
        eye = np.eye(len(bounds.lower[k]))
        bounds.lower[k] = np.maximum(bounds.lower[k], backward_lower(net, k, eye, bounds, lo, hi))
        bounds.upper[k] = np.minimum(bounds.upper[k], -backward_lower(net, k, -eye, bounds, lo, hi))
        _clamp_splits(bounds, splits, layer=k)  # keep this layer's splits after the recomputation
    if any(np.any(lo_k > up_k) for lo_k, up_k in zip(bounds.lower, bounds.upper, strict=True)):
        return None
    return bounds


def _clamp_splits(bounds: LayerBounds, splits: dict[tuple[int, int], int], layer: int | None = None) -> None:
    """In place: active splits (+1) get ``lower >= 0``, inactive ones (-1) ``upper <= 0`` (only ``layer``'s if given)."""
    for (k, j), sign in splits.items():
        if layer is not None and k != layer:
            continue
        if sign > 0:
            bounds.lower[k][j] = max(bounds.lower[k][j], 0.0)
        else:
            bounds.upper[k][j] = min(bounds.upper[k][j], 0.0)
