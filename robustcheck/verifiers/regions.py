"""Regions around an input: the L-infinity box, and the manipulation regions of Huang et al. (CAV 2017).

All regions are boxes ``[lo, hi]`` on a flat vector: the model input (C-order flattening of ``(C, H, W)``) or the
post-ReLU activations of a hidden layer. A manipulation region moves a few selected dimensions by ``num_span``
steps of size ``span`` in both directions (the paper's finite grid ``x_d + k * span``, ``|k| <= num_span``) and
keeps every other dimension fixed; the verifier proves the grid's convex hull (a superset, so SAFE is sound for
the grid), and the attack stage checks every grid point when there are few (the paper's exhaustive search).

Dimension selection (the paper's heuristics): ``"activation"`` picks the dimensions whose value deviates most from
the layer mean; ``"gradient"`` those with the largest ``|d margin / d value|`` (margin = true-class logit minus
the best other logit, gradient of the real-valued network in float64).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from robustcheck.errors import UsageError
from robustcheck.verifiers.network import Network

#: the attack stage enumerates the manipulation grid only up to this many points.
MAX_GRID_POINTS = 4096


@dataclass
class Region:
    """A box ``[lo, hi]`` on the input of ``network.affines[layer]`` (``layer`` 0: the model input).

    ``grid`` holds the paper's manipulation grid points (``(P, n)``) when the region has one.
    """

    lo: np.ndarray
    hi: np.ndarray
    layer: int = 0
    center: np.ndarray | None = None
    dims: np.ndarray | None = None
    grid: np.ndarray | None = None
    description: str = ""


def linf_box(x: np.ndarray, eps: float, bounds: tuple[float, float]) -> Region:
    """``{x' : |x' - x|_inf <= eps}`` intersected with the model's input bounds; ``x`` flat."""
    x = np.asarray(x, np.float64)
    lo = np.clip(x - eps, bounds[0], bounds[1])
    hi = np.clip(x + eps, bounds[0], bounds[1])
    return Region(lo, hi, 0, x, None, None, f"L-inf ball of radius {eps:g}")


def select_dimensions(
    net: Network, x: np.ndarray, label: int, layer: int, count: int, how: str
) -> tuple[np.ndarray, np.ndarray]:
    """Values at ``layer`` (flat) for input ``x`` and the ``count`` dimensions chosen by heuristic ``how``."""
    values = x if layer == 0 else net.activations(x[None])[layer - 1][0]
    count = max(1, min(count, len(values)))
    if how == "activation":
        score = np.abs(values - values.mean())
    elif how == "gradient":
        score = np.abs(_margin_gradient(net, values, label, layer))
    else:
        raise UsageError(f"unknown dimension selection {how!r}: use 'activation' or 'gradient'")
    order = np.argsort(-score, kind="stable")
    return values, np.sort(order[:count])


def _margin_gradient(net: Network, values: np.ndarray, label: int, layer: int) -> np.ndarray:
    """Gradient of ``y_label - max_{j != label} y_j`` w.r.t. the values at ``layer`` (the active linear piece)."""
    h = values.copy()
    jac = np.eye(len(h))
    for k in range(layer, len(net.affines)):
        affine = net.affines[k]
        z = affine.weight @ h + affine.bias
        jac = affine.weight @ jac
        if k < len(net.affines) - 1:
            mask = (z > 0).astype(np.float64)
            h, jac = z * mask, jac * mask[:, None]
        else:
            others = np.delete(np.arange(len(z)), label)
            rival = others[np.argmax(z[others])]
            return jac[label] - jac[rival]
    raise AssertionError("unreachable")


def manipulation_region(
    net: Network,
    x: np.ndarray,
    label: int,
    *,
    layer: int,
    dims: int,
    span: float,
    num_span: int,
    selection: str,
    bounds: tuple[float, float],
) -> Region:
    """The paper's region at ``layer``: ``dims`` selected dimensions moved by up to ``num_span * span`` each.

    At the input the box is clipped to the model bounds; at a hidden layer to ``>= 0`` (post-ReLU values).
    """
    if span <= 0 or num_span < 1:
        raise UsageError(
            f"manipulation regions need span > 0 and num_span >= 1, got span={span}, num_span={num_span}"
        )
    values, chosen = select_dimensions(net, np.asarray(x, np.float64), label, layer, dims, selection)
    low_clip, high_clip = bounds if layer == 0 else (0.0, np.inf)
    lo, hi = values.copy(), values.copy()
    lo[chosen] = np.clip(values[chosen] - num_span * span, low_clip, high_clip)
    hi[chosen] = np.clip(values[chosen] + num_span * span, low_clip, high_clip)
    steps = np.arange(-num_span, num_span + 1) * span
    grid = None
    if (2 * num_span + 1) ** len(chosen) <= MAX_GRID_POINTS:
        points = []
        for offsets in itertools.product(steps, repeat=len(chosen)):
            point = values.copy()
            point[chosen] = np.clip(values[chosen] + np.array(offsets), low_clip, high_clip)
            points.append(point)
        grid = np.unique(np.array(points), axis=0)
    where = "input" if layer == 0 else f"hidden layer {layer}"
    text = f"{len(chosen)} {selection}-selected dims at the {where}, span {span:g} x {num_span}"
    return Region(lo, hi, layer, values, chosen, grid, text)
