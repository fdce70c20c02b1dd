"""Batched linear bounds in torch: CROWN with optimised ReLU lower slopes (alpha-CROWN, Xu et al. 2021) and
Lagrange multipliers for branch-and-bound split constraints (beta-CROWN, Wang et al. 2021), for networks of
:mod:`robustcheck.verifiers.network` with ReLU, sigmoid / tanh and max pooling.

Everything works on a batch of ``B`` sub-domains of one input box at once (tensors ``(B, ...)``, float64).
A sub-domain is given by its pre-activation bounds ``lower[k]`` / ``upper[k]`` ``(B, n_k)`` and its split signs
``signs[k]`` ``(B, n_k)`` (+1: ReLU forced active, ``z >= 0``; -1: inactive, ``z <= 0``; 0: free).

Relaxations (each a pair of lines ``lo_slope z + lo_icpt <= act(z) <= up_slope z + up_icpt`` on ``[l, u]``):

* ReLU: exact when stable; otherwise the triangle's upper line and a lower line ``alpha z`` with ``alpha`` in
  ``[0, 1]`` free (optimised by projected gradient ascent on the bound).
* sigmoid / tanh: lines of the chord's slope (tangent slope at the midpoint when that is steeper on a convex /
  concave piece), with intercepts from the function's extremes of ``act(z) - slope z`` on a grid of the
  interval plus a Lipschitz margin for what lies between grid points: valid whatever the shape.
* max pooling after an activation: ``max_i a_i >= a_{i*}`` (``i*`` the entry with the largest lower bound),
  ``max_i a_i <= a_{i*}`` when ``i*`` dominates the window, else ``<= max_i u_i`` (a constant).

Soundness: a bound is widened by ``REL_SLACK * S``, with ``S`` the sum of the magnitudes of every term that
entered it, including ``|c| (|W| h_max)`` for each matrix product, which bounds the float64 rounding of the
coefficients themselves (``n 2^-53 << REL_SLACK`` for every layer width we can hold). Slopes, multipliers and
relaxation intercepts are any values: the bound is valid for every choice, so optimisation needs no care for
soundness; only the final evaluation's arithmetic does.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from robustcheck.verifiers.network import Network

#: relative widening of every float64 bound (see the module docstring).
REL_SLACK = 1e-9
#: grid points per neuron for the sigmoid / tanh relaxation intercepts.
SMOOTH_GRID = 33
#: elements of the largest coefficient tensor ``(B, rows, n)`` one backward pass may hold (memory and time).
MAX_ELEMENTS = 4_000_000


class Adam:
    """Adam ascent steps on tensors with ``.grad`` (our own: ``torch.optim``'s first use imports for seconds,
    which would eat a short deadline)."""

    def __init__(self, groups: list[tuple[list[torch.Tensor], float]], betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.groups = [(params, lr) for params, lr in groups if params]
        self.b1, self.b2 = betas
        self.t = 0
        self.m = {id(p): torch.zeros_like(p) for params, _ in self.groups for p in params}
        self.v = {id(p): torch.zeros_like(p) for params, _ in self.groups for p in params}

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One descent step on the loss whose gradients the tensors hold."""
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for params, lr in self.groups:
            for p in params:
                if p.grad is None:
                    continue
                m, v = self.m[id(p)], self.v[id(p)]
                m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
                p.sub_(lr * (m / c1) / ((v / c2).sqrt() + 1e-8))


class Expired(Exception):
    """A bound computation passed its deadline (raised between chunks; partial work is discarded)."""


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise Expired


#: weight density below which products go through a sparse (CSR) copy: a convolution merged into a dense matrix
#: is 0.5-5 % non-zero (the verivital conv layer 0.5 %, oval21's 1.5-5.5 %); measured on oval21's first layer
#: (1.5 %), a CSR product with its gradient took a fifth of the dense one's time
SPARSE_DENSITY = 0.06


@dataclass
class TorchNet:
    """A :class:`Network`'s pieces as float64 torch tensors, with the input box.

    ``sparse[k]`` holds CSR copies ``(W_k, W_k^T, |W_k|)`` of layers sparse enough to gain from them (see
    :data:`SPARSE_DENSITY`); :meth:`times_w` and :meth:`times_wt` use them. The products
    are the same sums of the same terms, so the rounding allowance of the bounds is unchanged.
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    abs_weights: list[torch.Tensor]
    acts: list[str]
    pools: list[torch.Tensor | None]
    lo: torch.Tensor
    hi: torch.Tensor
    sparse: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = field(default_factory=list)

    @classmethod
    def of(cls, net: Network, lo: np.ndarray, hi: np.ndarray) -> TorchNet:
        weights = [torch.from_numpy(np.ascontiguousarray(a.weight)) for a in net.affines]
        cache = net.meta.setdefault("_torch_sparse", {})  # CSR copies are built once per network
        sparse = []
        for k, w in enumerate(weights):
            if k not in cache:
                use = w.numel() >= 100_000 and float((w != 0).to(torch.float32).mean()) < SPARSE_DENSITY
                with warnings.catch_warnings():  # "sparse CSR support is in beta": products and their gradients suffice
                    warnings.simplefilter("ignore", UserWarning)
                    cache[k] = (w.to_sparse_csr(), w.T.contiguous().to_sparse_csr(), w.abs().to_sparse_csr()) if use else None
            sparse.append(cache[k])
        return cls(
            weights,
            [torch.from_numpy(np.ascontiguousarray(a.bias)) for a in net.affines],
            [w.abs() for w in weights],
            list(net.acts),
            [None if p is None else torch.from_numpy(p) for p in net.pools],
            torch.as_tensor(lo, dtype=torch.float64),
            torch.as_tensor(hi, dtype=torch.float64),
            sparse,
        )

    @property
    def hidden(self) -> int:
        return len(self.weights) - 1

    def relus(self) -> list[int]:
        return [k for k, a in enumerate(self.acts) if a == "relu"]

    def prefix(self, k: int) -> TorchNet:
        """The network up to ``affines[k]``: its output is hidden layer ``k``'s pre-activation."""
        return TorchNet(self.weights[: k + 1], self.biases[: k + 1], self.abs_weights[: k + 1], self.acts[:k],
                        self.pools[:k], self.lo, self.hi, self.sparse[: k + 1])  # fmt: skip

    def times_w(self, coef: torch.Tensor, k: int) -> torch.Tensor:
        """``coef @ W_k``: ``(..., n_out) -> (..., n_in)`` (differentiable in ``coef``)."""
        pieces = self.sparse[k] if self.sparse else None
        if pieces is None:
            return coef @ self.weights[k]
        flat = coef.reshape(-1, coef.shape[-1])
        return (pieces[1] @ flat.T).T.reshape(*coef.shape[:-1], -1)

    def times_wt(self, h: torch.Tensor, k: int, absolute: bool = False) -> torch.Tensor:
        """``h @ W_k^T`` (or ``h @ |W_k|^T``): ``(B, n_in) -> (B, n_out)``."""
        pieces = self.sparse[k] if self.sparse else None
        if pieces is None:
            return h @ (self.abs_weights[k] if absolute else self.weights[k]).T
        return (pieces[2 if absolute else 0] @ h.T).T


@dataclass
class Domains:
    """A batch of sub-domains: pre-activation bounds and split signs per hidden layer (each ``(B, n_k)``)."""

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    signs: list[torch.Tensor]

    @property
    def size(self) -> int:
        """Number of domains (a network without hidden layers has just the root)."""
        return int(self.lower[0].shape[0]) if self.lower else 1

    def prefix(self, k: int) -> Domains:
        """The bounds and splits of the first ``k`` hidden layers (the domains of :meth:`TorchNet.prefix`)."""
        return Domains(self.lower[:k], self.upper[:k], self.signs[:k])

    def select(self, index: torch.Tensor) -> Domains:
        return Domains([t[index] for t in self.lower], [t[index] for t in self.upper], [t[index] for t in self.signs])

    @staticmethod
    def cat(parts: list[Domains]) -> Domains:
        return Domains(
            [torch.cat([p.lower[k] for p in parts]) for k in range(len(parts[0].lower))],
            [torch.cat([p.upper[k] for p in parts]) for k in range(len(parts[0].upper))],
            [torch.cat([p.signs[k] for p in parts]) for k in range(len(parts[0].signs))],
        )


# ---------------------------------------------------------------------------------------------------------------
# Relaxations
# ---------------------------------------------------------------------------------------------------------------
def _smooth(kind: str, z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z) if kind == "sigmoid" else torch.tanh(z)


def _smooth_grad(kind: str, z: torch.Tensor) -> torch.Tensor:
    s = _smooth(kind, z)
    return s * (1 - s) if kind == "sigmoid" else 1 - s * s


#: bounds of ``|act''|`` (sigmoid: ``1 / (6 sqrt 3)``, tanh: ``4 / (3 sqrt 3)``), rounded up
_CURVATURE = {"sigmoid": 0.0963, "tanh": 0.7699}


def smooth_relaxation(kind: str, low: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(lo_slope, lo_icpt, up_slope, up_icpt)`` of sigmoid / tanh on ``[low, up]`` (any shapes, same).

    Candidate slopes: the chord, the tangents' at both ends, the midpoint and the quarter points, and 0. For a
    slope ``s`` the residual ``r(z) = act(z) - s z`` is evaluated on a uniform grid; between two grid points
    ``r`` stays within ``|act''|_max h^2 / 8`` of its linear interpolation (``h`` the grid step), so the grid's
    extremes widened by that give valid intercepts whatever the slope. The lower line keeps the slope with the
    highest value at the midpoint (the smallest gap on average over the interval), the upper line the lowest.
    """
    low, up = low.detach(), up.detach()
    width = (up - low).clamp(min=0.0)
    mid = (low + up) / 2
    chord = torch.where(width > 1e-12, (_smooth(kind, up) - _smooth(kind, low)) / width.clamp(min=1e-300),
                        _smooth_grad(kind, mid))  # fmt: skip
    slopes = torch.stack([chord, _smooth_grad(kind, low), _smooth_grad(kind, up), _smooth_grad(kind, mid),
                          _smooth_grad(kind, low + width / 4), _smooth_grad(kind, up - width / 4),
                          torch.zeros_like(mid)], dim=-1)  # (..., S)  # fmt: skip
    t = torch.linspace(0.0, 1.0, SMOOTH_GRID, dtype=low.dtype)
    grid = low[..., None] + width[..., None] * t  # (..., G)
    values = _smooth(kind, grid)
    residual = values[..., None, :] - slopes[..., None] * grid[..., None, :]  # (..., S, G)
    step = width / (SMOOTH_GRID - 1)
    margin = (_CURVATURE[kind] * step * step / 8 + 1e-12 * (1 + grid.abs().amax(-1)))[..., None]
    lo_icpt = residual.amin(-1) - margin
    up_icpt = residual.amax(-1) + margin
    lo_pick = (slopes * mid[..., None] + lo_icpt).argmax(-1, keepdim=True)
    up_pick = (slopes * mid[..., None] + up_icpt).argmin(-1, keepdim=True)
    return (slopes.gather(-1, lo_pick)[..., 0], lo_icpt.gather(-1, lo_pick)[..., 0],
            slopes.gather(-1, up_pick)[..., 0], up_icpt.gather(-1, up_pick)[..., 0])  # fmt: skip


def relu_upper(low: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper line ``(slope, intercept)`` of relu on ``[low, up]`` (exact when stable)."""
    unstable = (low < 0) & (up > 0)
    span = torch.where(unstable, up - low, torch.ones_like(up))
    slope = torch.where(unstable, up / span, (low >= 0).to(up.dtype))
    icpt = torch.where(unstable, -low * up / span, torch.zeros_like(up))
    # the line's float rounding: lift it by a hair (valid, a relaxation)
    icpt = icpt + torch.where(unstable, REL_SLACK * (up - low), torch.zeros_like(up))
    return slope, icpt


def act_bounds(kind: str, low: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the activation's output from its input bounds (monotone activations)."""
    if kind == "relu":
        return low.clamp(min=0.0), up.clamp(min=0.0)
    pad = 1e-12
    return _smooth(kind, low) - pad, _smooth(kind, up) + pad


def post_bounds(net: TorchNet, doms: Domains, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds ``(B, |h_k|)`` of hidden layer ``k``'s output (after its activation and pooling)."""
    a_lo, a_hi = act_bounds(net.acts[k], doms.lower[k], doms.upper[k])
    pool = net.pools[k]
    if pool is None:
        return a_lo, a_hi
    return a_lo[:, pool].amax(-1), a_hi[:, pool].amax(-1)


# ---------------------------------------------------------------------------------------------------------------
# Backward bound propagation
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Backward:
    """Result of :func:`backward`: sound lower bounds ``(B, m)``, the input coefficients ``(B, m, n)`` of the
    linear bound, and per hidden layer the coefficients on its activation output (``(B, m, n_k)``, for
    branching scores)."""

    value: torch.Tensor
    input_coef: torch.Tensor
    act_coef: dict[int, torch.Tensor]

    def take(self, index: torch.Tensor) -> Backward:
        """The rows of the domains ``index``."""
        return Backward(self.value[index], self.input_coef[index], {k: c[index] for k, c in self.act_coef.items()})


def backward(
    net: TorchNet,
    layer: int,
    spec: torch.Tensor,
    doms: Domains,
    alphas: dict[int, torch.Tensor] | None = None,
    betas: dict[int, torch.Tensor] | None = None,
    keep_coef: bool = False,
) -> Backward:
    """Sound lower bounds of ``spec @ z_layer`` (``z_layer`` the output of ``affines[layer]``) on each domain.

    ``spec`` ``(B, m, n_layer)`` or ``(m, n_layer)``; ``alphas[k]`` ``(B or 1, m or 1, n_k)`` lower slopes of
    unstable ReLUs (clamped to [0, 1]; default CROWN's adaptive choice); ``betas[k]`` ``(B, m or 1, n_k)`` >= 0
    multipliers of the split constraints ``signs[k] * z_k >= 0``.
    """
    batch = doms.size
    if spec.dim() == 2:
        spec = spec.expand(batch, *spec.shape)
    coef_z = spec
    const = torch.zeros(spec.shape[:-1], dtype=spec.dtype)
    slack = torch.zeros_like(const)
    act_coef: dict[int, torch.Tensor] = {}
    x_max = torch.maximum(net.lo.abs(), net.hi.abs())[None]
    k = layer
    while True:
        b = net.biases[k]
        if k == 0:
            h_max = x_max
        else:
            h_lo, h_hi = post_bounds(net, doms, k - 1)
            h_max = torch.maximum(h_lo.abs(), h_hi.abs())
        c_abs = coef_z.detach().abs()
        # |c| . (|W| h_max + |b|) bounds both the rounding of c @ W_k and of c @ b_k (module docstring)
        slack = slack + (c_abs * (net.times_wt(h_max, k, absolute=True) + b.abs())[:, None, :]).sum(-1)
        const = const + coef_z @ b
        coef = net.times_w(coef_z, k)
        if k == 0:
            break
        j = k - 1
        low, up = doms.lower[j], doms.upper[j]
        pool = net.pools[j]
        if pool is not None:
            coef, const = _pool_backward(coef, const, pool, net.acts[j], low, up)
        if keep_coef:
            act_coef[j] = coef.detach()
        kind = net.acts[j]
        if kind == "relu":
            # a neuron stable in every domain is relaxed exactly (slope 1 or 0, no intercept): one product for
            # all of them, the slopes and intercepts only on the columns unstable somewhere (a conv layer's
            # unstable neurons are a few per cent)
            unstable = (low < 0) & (up > 0)
            cols = torch.nonzero(unstable.any(0)).flatten()
            active = (low >= 0).to(low.dtype)
            coef_z = coef * active[:, None, :]
            c = coef[..., cols]
            pos, neg = c.clamp(min=0.0), c.clamp(max=0.0)
            l_c, u_c = low[:, cols], up[:, cols]
            up_slope, up_icpt = relu_upper(l_c, u_c)
            if alphas is not None and j in alphas:
                alpha = alphas[j][..., cols].clamp(0.0, 1.0)
            else:
                alpha = (u_c > -l_c).to(low.dtype)[:, None, :]
            lo_slope = torch.where(unstable[:, None, cols], alpha, active[:, None, cols])
            term = neg * up_icpt[:, None, :]
            coef_z = coef_z.index_copy(-1, cols, pos * lo_slope + neg * up_slope[:, None, :])
        else:
            pos, neg = coef.clamp(min=0.0), coef.clamp(max=0.0)
            lo_s, lo_i, up_s, up_i = smooth_relaxation(kind, low, up)
            term = pos * lo_i[:, None, :] + neg * up_i[:, None, :]
            coef_z = pos * lo_s[:, None, :] + neg * up_s[:, None, :]
        const = const + term.sum(-1)
        slack = slack + term.detach().abs().sum(-1)
        if betas is not None and j in betas:
            split = torch.nonzero((doms.signs[j] != 0).any(0)).flatten()
            if len(split):
                push = betas[j][..., split].clamp(min=0.0) * doms.signs[j][:, None, split].to(coef.dtype)
                coef_z = coef_z.index_add(-1, split, -push)
        k = j
    c_abs = coef.detach().abs()
    value = const + coef.clamp(min=0.0) @ net.lo + coef.clamp(max=0.0) @ net.hi
    slack = slack + c_abs @ x_max[0] + const.detach().abs()
    return Backward(value - REL_SLACK * (1.0 + slack), coef, act_coef)


def _pool_backward(coef: torch.Tensor, const: torch.Tensor, pool: torch.Tensor, kind: str, low: torch.Tensor,
                   up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Coefficients on the pooled outputs ``(B, m, W)`` -> on the activations ``(B, m, n)`` (lower bound)."""
    a_lo, a_hi = act_bounds(kind, low, up)
    win_lo, win_hi = a_lo[:, pool], a_hi[:, pool]  # (B, W, w)
    best = win_lo.argmax(-1)  # (B, W)
    top_lo = win_lo.gather(-1, best[..., None])[..., 0]
    others_hi = win_hi.scatter(-1, best[..., None], float("-inf")).amax(-1)
    dominated = top_lo >= others_hi  # (B, W)
    umax = win_hi.amax(-1)
    pos, neg = coef.clamp(min=0.0), coef.clamp(max=0.0)
    onto_best = pos + torch.where(dominated[:, None, :], neg, torch.zeros_like(neg))
    const = const + (torch.where(dominated[:, None, :], torch.zeros_like(neg), neg) * umax[:, None, :]).sum(-1)
    index = pool[torch.arange(pool.shape[0])[None, :], best]  # (B, W) flat index of each window's best entry
    out = torch.zeros((*coef.shape[:-1], low.shape[-1]), dtype=coef.dtype)
    out = out.scatter_add(-1, index[:, None, :].expand_as(onto_best), onto_best)
    return out, const


# ---------------------------------------------------------------------------------------------------------------
# Bounds of all hidden layers
# ---------------------------------------------------------------------------------------------------------------
def clamp_splits(doms: Domains, k: int) -> None:
    """Split ReLUs of layer ``k`` get ``lower >= 0`` (active) / ``upper <= 0`` (inactive), in place."""
    signs = doms.signs[k]
    doms.lower[k] = torch.where(signs > 0, doms.lower[k].clamp(min=0.0), doms.lower[k])
    doms.upper[k] = torch.where(signs < 0, doms.upper[k].clamp(max=0.0), doms.upper[k])


def interval_layer(net: TorchNet, doms: Domains, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds of ``z_k`` from the bounds of layer ``k - 1`` (or the input box)."""
    if k == 0:
        h_lo, h_hi = net.lo[None], net.hi[None]
    else:
        h_lo, h_hi = post_bounds(net, doms, k - 1)
    b = net.biases[k]
    center, radius = (h_hi + h_lo) / 2, (h_hi - h_lo) / 2
    mid = net.times_wt(center, k) + b
    rad = net.times_wt(radius, k, absolute=True)
    scale = net.times_wt(torch.maximum(h_lo.abs(), h_hi.abs()), k, absolute=True) + b.abs()
    slack = REL_SLACK * (1.0 + scale)
    return mid - rad - slack, mid + rad + slack


def refine_rows(net: TorchNet, doms: Domains, k: int) -> torch.Tensor:
    """Neurons of layer ``k`` worth a backward pass: for a ReLU the ones unstable in some domain (stable ones
    are relaxed exactly already), for a smooth activation all of them."""
    if net.acts[k] != "relu":
        return torch.arange(doms.lower[k].shape[1])
    return torch.nonzero(((doms.lower[k] < 0) & (doms.upper[k] > 0)).any(0)).flatten()


def layer_rows(n: int, index: torch.Tensor) -> torch.Tensor:
    """``[+e_i; -e_i]`` for ``i`` in ``index``: the rows whose lower bounds give lower / upper bounds."""
    eye = torch.zeros((len(index), n), dtype=torch.float64)
    eye[torch.arange(len(index)), index] = 1.0
    return torch.cat([eye, -eye])


def compute_bounds(net: TorchNet, doms: Domains, start: int = 0, alphas: dict[int, dict[int, torch.Tensor]] | None = None,
                   index: dict[int, torch.Tensor] | None = None, deadline: float | None = None) -> Domains:  # fmt: skip
    """New domains whose layers ``>= start`` hold CROWN bounds (intersected with the old ones and the interval
    bounds, split neurons clamped). ``alphas[k]``: per start layer ``k`` the lower slopes used for its bounds,
    rows matching ``layer_rows(n_k, index[k])``; ``index[k]`` defaults to :func:`refine_rows`."""
    out = Domains(list(doms.lower), list(doms.upper), list(doms.signs))
    for k in range(start, net.hidden):
        i_lo, i_hi = interval_layer(net, out, k)
        out.lower[k], out.upper[k] = torch.maximum(out.lower[k], i_lo), torch.minimum(out.upper[k], i_hi)
        clamp_splits(out, k)
        if k == 0:
            continue
        idx = index[k] if index is not None and k in index else refine_rows(net, out, k)
        if len(idx) == 0:
            continue
        rows = layer_rows(net.weights[k].shape[0], idx)
        widest = max(w.shape[1] for w in net.weights[: k + 1])
        chunk = max(1, MAX_ELEMENTS // max(1, out.size * widest))
        values = []
        for s in range(0, len(rows), chunk):
            check_deadline(deadline)
            a = None if alphas is None or k not in alphas else {j: t[:, s : s + chunk] for j, t in alphas[k].items()}
            values.append(backward(net, k, rows[s : s + chunk], out, a).value)
        value = torch.cat(values, dim=1)
        m = len(idx)
        low, up = out.lower[k].clone(), out.upper[k].clone()
        low[:, idx] = torch.maximum(low[:, idx], value[:, :m])
        up[:, idx] = torch.minimum(up[:, idx], -value[:, m:])
        out.lower[k], out.upper[k] = low, up
        clamp_splits(out, k)
    return out


def root_domains(net: TorchNet) -> Domains:
    """One domain: the whole box, no splits, infinite bounds (to be filled by :func:`compute_bounds`)."""
    sizes = [w.shape[0] for w in net.weights[:-1]]
    return Domains(
        [torch.full((1, n), -np.inf, dtype=torch.float64) for n in sizes],
        [torch.full((1, n), np.inf, dtype=torch.float64) for n in sizes],
        [torch.zeros((1, n), dtype=torch.int8) for n in sizes],
    )


def infeasible(doms: Domains) -> torch.Tensor:
    """``(B,)``: domains whose bounds cross somewhere (an empty sub-domain)."""
    bad = torch.zeros(doms.size, dtype=torch.bool)
    for low, up in zip(doms.lower, doms.upper, strict=True):
        bad |= (low > up).any(-1)
    return bad


# ---------------------------------------------------------------------------------------------------------------
# alpha-CROWN
# ---------------------------------------------------------------------------------------------------------------
def init_alphas(net: TorchNet, doms: Domains, rows: int) -> dict[int, torch.Tensor]:
    """CROWN's adaptive lower slopes as a starting point, one per (domain, row, neuron) of each ReLU layer."""
    return {
        k: (doms.upper[k] > -doms.lower[k]).to(torch.float64)[:, None, :].expand(-1, rows, -1).clone()
        for k in net.relus()
    }


def optimize_intermediate(net: TorchNet, doms: Domains, spec: torch.Tensor, iterations: int, lr: float = 0.25,
                          deadline: float | None = None, intermediate: bool = True) -> tuple[Domains, dict[int, torch.Tensor], torch.Tensor]:  # fmt: skip
    """Full alpha-CROWN on one (or few) domains with CROWN bounds: separate slopes for every intermediate layer's bounds (rows:
    the neurons CROWN left unstable; skipped unless ``intermediate``) and for the output ``spec`` ``(m, K)``,
    optimised jointly for the output bound; bounds are kept at their best over the iterations (each is sound). Returns the domains, the output
    slopes and the output bound ``(B, m)``."""
    base = doms  # already CROWN bounds
    hidden = net.hidden
    index = {k: refine_rows(net, base, k) for k in range(1, hidden)}
    inter: dict[int, dict[int, torch.Tensor]] = {}
    for k in range(1, hidden if intermediate else 1):
        inter[k] = {j: a.expand(-1, 2 * len(index[k]), -1).clone().requires_grad_(True)
                    for j, a in init_alphas(net, base, 1).items() if j < k}  # fmt: skip
    out_alpha = {j: a.clone().requires_grad_(True) for j, a in init_alphas(net, base, len(spec)).items()}
    params = [t for d in inter.values() for t in d.values()] + list(out_alpha.values())
    best_doms = base
    best_value = backward(net, hidden, spec, base, {j: a.detach() for j, a in out_alpha.items()}).value.detach()
    best_alpha = {j: a.detach().clone() for j, a in out_alpha.items()}
    if not params:
        return best_doms, best_alpha, best_value
    opt = Adam([(params, lr)])
    last = 0.0
    for _ in range(iterations):
        began = time.monotonic()
        if deadline is not None and began + 1.5 * last > deadline:
            break  # the next iteration would not finish in time
        try:
            current = compute_bounds(net, best_doms, 1, inter, index, deadline) if inter else best_doms
        except Expired:
            break
        result = backward(net, hidden, spec, current, out_alpha).value
        loss = -result.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in params:
                p.clamp_(0.0, 1.0)
            best_doms = Domains([t.detach() for t in current.lower], [t.detach() for t in current.upper],
                                list(current.signs))  # fmt: skip
            improved = result.detach() > best_value
            best_value = torch.maximum(best_value, result.detach())
            for j, a in out_alpha.items():
                best_alpha[j] = torch.where(improved[..., None], a.detach(), best_alpha[j])
        last = time.monotonic() - began
    return best_doms, best_alpha, best_value
