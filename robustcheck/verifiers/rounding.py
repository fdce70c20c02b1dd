"""Rounding-error bounds: how far a float32 evaluation of a :class:`~robustcheck.verifiers.network.Network` can be
from the real-valued network the verifiers encode.

:func:`float32_error` (crude) and :func:`spec_error` (tight, used by the engine) bound that difference from each
:class:`~robustcheck.verifiers.network.Affine`'s ``abs_weight``, ``abs_bias`` and ``fan_in``, by standard
dot-product rounding analysis: ``|fl(w.x) - w.x| <= gamma_n |w|.|x|`` with ``gamma_n = n u / (1 - n u)``,
``u = 2^-24`` (:func:`gamma`). With ``unit=0`` they bound only the float64 rounding of the merged / probed
weights of :mod:`robustcheck.verifiers.extraction`.
"""

from __future__ import annotations

import numpy as np

from robustcheck.verifiers.network import Network

#: float32 unit roundoff, and float64's (for pieces we compute in float64 ourselves).
U32 = 2.0**-24
U64 = 2.0**-53


def gamma(n: int, unit: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)`` for a chain of ``n`` roundings of unit ``unit`` (float32 by default), plus
    float64 slack ``4 n 2^-53`` for our own merging / probing of the pieces (``unit`` 0: that slack alone)."""
    n = max(int(n), 1)
    return n * unit / (1.0 - n * unit) + 4.0 * n * U64


def float32_error(net: Network, magnitudes: list[np.ndarray]) -> np.ndarray:
    """A crude bound of ``|y_float32(x) - y_real(x)|`` per logit over a region (see :func:`local_errors`).

    ``magnitudes[k]`` bounds ``|input of affines[k]|`` elementwise over the region. Errors entering a layer are
    propagated through ``abs_weight`` (ReLU is 1-Lipschitz and exact), which ignores cancellation:
    :func:`spec_error` is much tighter.
    """
    return local_errors(net, magnitudes)[1][-1]


#: absolute error of a float32 sigmoid / tanh evaluation (values within [-1, 1]; libm-quality is ~2 ulp).
SMOOTH_ULPS = 8


def _lipschitz(kind: str) -> float:
    return {"relu": 1.0, "sigmoid": 0.25, "tanh": 1.0}[kind]


def local_errors(
    net: Network, magnitudes: list[np.ndarray], unit: float = U32
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per affine piece: the rounding error it adds itself (``gamma_n (|W| |input| + |b|)``, with the float
    input's magnitude), and the crude accumulated deviation of its output (errors through ``abs_weight``,
    activations by their Lipschitz constants plus a smooth activation's own rounding, max pooling by the
    window's largest deviation). ``unit`` is the evaluation's unit roundoff (:func:`gamma`)."""
    dev = np.zeros(net.num_inputs)
    local, accumulated = [], []
    for k, (affine, mag) in enumerate(zip(net.affines, magnitudes, strict=True)):
        own = gamma(affine.fan_in, unit) * (affine.abs_weight @ (mag + dev) + affine.abs_bias)
        out = affine.abs_weight @ dev + own
        local.append(own)
        accumulated.append(out)
        if k < len(net.affines) - 1:
            kind = net.acts[k]
            dev = _lipschitz(kind) * out + (0.0 if kind == "relu" else SMOOTH_ULPS * unit)
            if net.pools[k] is not None:
                dev = dev[net.pools[k]].max(axis=1)  # max is exact: it moves by the largest input deviation
    return local, accumulated


def spec_error(net: Network, spec: np.ndarray, lower: list[np.ndarray], upper: list[np.ndarray],
               magnitudes: list[np.ndarray], unit: float = U32) -> np.ndarray:  # fmt: skip
    """Bound ``|spec @ (y_float32(x) - y_real(x))|`` per row over a region with pre-activation bounds ``lower`` /
    ``upper`` (of the real network); ``spec`` ``(m, K)``, result ``(m,)`` in logit units.

    With ``unit=0`` it bounds only the float64 rounding of our merged / probed weights: the deviation of the
    encoded network from the exact real-valued composition of the original layers (``"real"`` semantics).

    The deviation obeys ``dz_{k+1} = W D_k dz_k + e_{k+1}`` with each layer's own rounding ``|e_k| <= local_k``
    and ``D_k`` diagonal: 1 where both networks' ReLU is surely active, 0 where surely inactive, somewhere in
    ``[0, 1]`` otherwise (``relu(z + d) - relu(z) = t d`` with ``t`` in ``[0, 1]``; a sigmoid's ``t`` lies in
    ``[0, 1/4]``, a tanh's in ``[0, 1]``; a max pool passes a convex combination of its window's deviations).
    Backwards from ``spec``, the coefficient of each ``e_k`` is kept as an interval, so cancellations inside the
    weights count. ``magnitudes[k]`` bounds ``|input of affines[k]|`` (after activation and pooling).
    """
    local, accumulated = local_errors(net, magnitudes, unit)
    center = spec @ net.affines[-1].weight
    radius = np.zeros_like(center)
    total = np.abs(spec) @ local[-1]
    for k in range(len(net.affines) - 2, -1, -1):
        c_lo, c_hi = center - radius, center + radius
        pool = net.pools[k]
        if pool is not None:  # a convex combination of the window's deviations: each weight in [0, 1]
            size = len(lower[k])
            lo_part, hi_part = np.zeros((len(spec), size)), np.zeros((len(spec), size))
            np.add.at(lo_part.T, pool, np.minimum(c_lo, 0.0).T[:, None, :].repeat(pool.shape[1], 1))
            np.add.at(hi_part.T, pool, np.maximum(c_hi, 0.0).T[:, None, :].repeat(pool.shape[1], 1))
            c_lo, c_hi = lo_part, hi_part
        dev = accumulated[k]
        kind = net.acts[k]
        if kind == "relu":
            active, inactive = lower[k] - dev > 0, upper[k] + dev < 0
            unstable = ~active & ~inactive
            c_lo, c_hi = (np.where(inactive, 0.0, np.where(unstable, np.minimum(c_lo, 0.0), c_lo)),
                          np.where(inactive, 0.0, np.where(unstable, np.maximum(c_hi, 0.0), c_hi)))  # fmt: skip
        else:
            total = total + np.maximum(np.abs(c_lo), np.abs(c_hi)).sum(axis=1) * SMOOTH_ULPS * unit
            slope = _lipschitz(kind)
            c_lo, c_hi = np.minimum(slope * c_lo, 0.0), np.maximum(slope * c_hi, 0.0)
        total = total + np.maximum(np.abs(c_lo), np.abs(c_hi)) @ local[k]
        center, radius = (c_lo + c_hi) / 2, (c_hi - c_lo) / 2
        weight = net.affines[k].weight
        center, radius = center @ weight, radius @ np.abs(weight)
    return total * (1.0 + 1e-6) + 1e-12
