"""Batched branch and bound over unstable ReLUs with alpha-beta-CROWN bounds (:mod:`robustcheck.verifiers.crown`)
and an exact solver on the leaves.

The question is the engine's query: is there an input of the box with ``spec @ y <= rhs`` (``spec`` ``(m, K)``;
every row)? A sub-domain is closed when some row's sound lower bound exceeds ``rhs``, or when its bounds are
contradictory. Each round takes the ``batch`` open domains with the lowest bounds, splits each on one ReLU chosen
by a BaBSR-style score (how much of the bound the neuron's triangle intercept costs, ``|min(c, 0)| * (-l u /
(u - l))``), and bounds all children in one batched computation: split neurons clamped, later layers' bounds
recomputed by CROWN (``refresh``), then the output bound maximised over the ReLU lower slopes (alpha, in [0, 1])
and the split constraints' multipliers (beta >= 0) by a few projected Adam steps, starting from the parent's.
Every evaluation is a sound bound, so the best one is kept.

Candidates: the box corner minimising each open domain's linear bound is run through the network; a point with
``spec @ y <= rhs`` is returned (``"sat"``; the engine re-validates it on the float model). Domains with at most
``leaf_unstable`` open ReLUs (or none left to split) go to ``leaf`` (Z3 or HiGHS, exact on the sub-domain with
its splits as constraints). The domains partition the box, so "unsat" on every one is a proof.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from robustcheck.verifiers.crown import (
    Adam,
    Backward,
    Domains,
    Expired,
    TorchNet,
    backward,
    compute_bounds,
    infeasible,
)

#: the leaf solver: ``(lower, upper, signs, seconds) -> (status, x)`` for one domain (numpy per layer).
LeafSolver = Callable[[list[np.ndarray], list[np.ndarray], list[np.ndarray], float], tuple[str, "np.ndarray | None"]]


@dataclass
class BabOptions:
    """Branch and bound settings."""

    batch: int = 64
    iterations: int = 8
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    refresh: bool = True
    leaf_unstable: int = 0
    max_domains: int = 200_000


@dataclass
class BabResult:
    status: str  # "unsat" / "sat" / "unknown"
    x: np.ndarray | None = None
    nodes: int = 0
    leaves: int = 0
    leaf_seconds: float = 0.0
    message: str = ""
    bound: float = float("-inf")
    history: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class _Pool:
    """Open domains with their bounds, slopes, multipliers and chosen split."""

    doms: Domains
    value: torch.Tensor  # (B,) best row margin (max over rows of lower - rhs)
    alphas: dict[int, torch.Tensor]  # (B, m, n_k)
    betas: dict[int, torch.Tensor]  # (B, m, n_k)
    choice: torch.Tensor  # (B, 2): layer, neuron (-1: nothing to split)

    def take(self, index: torch.Tensor) -> _Pool:
        return _Pool(self.doms.select(index), self.value[index], {k: a[index] for k, a in self.alphas.items()},
                     {k: b[index] for k, b in self.betas.items()}, self.choice[index])  # fmt: skip

    @staticmethod
    def cat(parts: list[_Pool]) -> _Pool:
        parts = [p for p in parts if p.doms.size]
        return _Pool(Domains.cat([p.doms for p in parts]), torch.cat([p.value for p in parts]),
                     {k: torch.cat([p.alphas[k] for p in parts]) for k in parts[0].alphas},
                     {k: torch.cat([p.betas[k] for p in parts]) for k in parts[0].betas},
                     torch.cat([p.choice for p in parts]))  # fmt: skip


def _scores(net: TorchNet, doms: Domains, result: Backward) -> torch.Tensor:
    """``(B, 2)``: per domain the ReLU to split next (layer, neuron), or ``(-1, -1)`` when none is open."""
    batch = doms.size
    best_score = torch.full((batch,), -1.0, dtype=torch.float64)
    choice = torch.full((batch, 2), -1, dtype=torch.int64)
    for k in net.relus():
        low, up = doms.lower[k], doms.upper[k]
        open_ = (low < 0) & (up > 0) & (doms.signs[k] == 0)
        if not bool(open_.any()):
            continue
        coef = result.act_coef.get(k)
        span = torch.where(open_, up - low, torch.ones_like(up))
        intercept = torch.where(open_, -low * up / span, torch.zeros_like(up))
        if coef is not None:
            score = (coef.clamp(max=0.0).abs().sum(1) + 1e-3 * coef.abs().sum(1)) * intercept
        else:
            score = intercept
        # a small width term breaks ties between neurons the bound does not see (earlier layers first)
        score = torch.where(open_, score + 1e-6 * intercept / (1 + k), torch.full_like(score, -1.0))
        value, index = score.max(dim=1)
        better = value > best_score
        best_score = torch.where(better, value, best_score)
        choice[better, 0] = k
        choice[better, 1] = index[better]
    return choice


def _bound(net: TorchNet, doms: Domains, spec: torch.Tensor, rhs: torch.Tensor, alphas: dict[int, torch.Tensor],
           betas: dict[int, torch.Tensor], opts: BabOptions, deadline: float,
           iterations: int) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor], Backward]:  # fmt: skip
    """Optimise slopes and multipliers for the margin ``max_rows(lower - rhs)``; returns the best margin per
    domain, the parameters that gave it and the backward pass at them."""
    hidden = net.hidden
    alpha = {k: a.clone().requires_grad_(True) for k, a in alphas.items()}
    beta = {k: b.clone().requires_grad_(True) for k, b in betas.items()}
    with torch.no_grad():
        best_value = (backward(net, hidden, spec, doms, alpha, beta).value - rhs).amax(-1)
    best_alpha = {k: a.detach().clone() for k, a in alpha.items()}
    best_beta = {k: b.detach().clone() for k, b in beta.items()}
    params = [*alpha.values(), *beta.values()]
    if params and iterations > 0:
        opt = Adam([(list(alpha.values()), opts.lr_alpha), (list(beta.values()), opts.lr_beta)])
        last = 0.0
        for _ in range(iterations):
            began = time.monotonic()
            if began + 2.5 * last > deadline:  # this step and the final evaluation must fit
                break
            value = (backward(net, hidden, spec, doms, alpha, beta).value - rhs).amax(-1)
            # only domains still open need improving; closed ones keep their parameters
            loss = -(value.clamp(max=1e-3)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for a in alpha.values():
                    a.clamp_(0.0, 1.0)
                for b in beta.values():
                    b.clamp_(min=0.0)
                improved = value.detach() > best_value
                best_value = torch.where(improved, value.detach(), best_value)
                for k, a in alpha.items():
                    best_alpha[k] = torch.where(improved[:, None, None], a.detach(), best_alpha[k])
                for k, b in beta.items():
                    best_beta[k] = torch.where(improved[:, None, None], b.detach(), best_beta[k])
            last = time.monotonic() - began
    with torch.no_grad():
        result = backward(net, hidden, spec, doms, best_alpha, best_beta, keep_coef=True)
        value = (result.value - rhs).amax(-1)
    return torch.maximum(value, best_value), best_alpha, best_beta, result


def branch_and_bound(net: TorchNet, root: Domains, spec: np.ndarray, rhs: np.ndarray, deadline: float,
                     opts: BabOptions | None = None, alphas: dict[int, torch.Tensor] | None = None,
                     leaf: LeafSolver | None = None,
                     point_check: Callable[[np.ndarray], np.ndarray] | None = None) -> BabResult:  # fmt: skip
    """Decide "some input of the box with ``spec @ y <= rhs``" (see the module docstring) before ``deadline``
    (a ``time.monotonic()`` value). ``root`` holds one domain with CROWN bounds; ``alphas`` optional starting
    slopes ``(1, m, n_k)``; ``point_check(x)`` ``(P, n) -> (P,)`` max-row violation of candidate points on the
    encoded network (<= 0: a solution)."""
    opts = opts or BabOptions()
    spec_t = torch.as_tensor(spec, dtype=torch.float64)
    rhs_t = torch.as_tensor(rhs, dtype=torch.float64)
    m = len(spec_t)
    relus = net.relus()
    start_alpha = {k: (alphas[k] if alphas and k in alphas else
                       (root.upper[k] > -root.lower[k]).to(torch.float64)[:, None, :].expand(-1, m, -1)).clone()
                   for k in relus}  # fmt: skip
    start_beta = {k: torch.zeros((1, m, root.lower[k].shape[1]), dtype=torch.float64) for k in relus}
    value, a, b, res = _bound(net, root, spec_t, rhs_t, start_alpha, start_beta, opts, deadline, 0)
    result = BabResult("unknown", bound=float(value[0]))
    if bool(value[0] > 0):
        result.status = "unsat"
        return result
    if not root.lower:  # no hidden layer: nothing to split, the exact solver decides
        if leaf is None:
            result.message = "no exact solver for a linear network"
            return result
        status, x = leaf([], [], [], deadline - time.monotonic())
        return BabResult(status if status in ("sat", "unsat") else "unknown", x, 1, 1, message=status)
    pool = _Pool(root, value, a, b, _scores(net, root, res))
    found = _candidates(net, root, res, spec_t, rhs_t, point_check)
    if found is not None:
        return BabResult("sat", found, bound=result.bound)
    last_batch = 0.0
    while pool.doms.size:
        batch_start = time.monotonic()
        if batch_start + 0.5 * last_batch > deadline:
            result.message = f"timeout with {pool.doms.size} open domains"
            return result
        if pool.doms.size > opts.max_domains:
            result.message = f"gave up: {pool.doms.size} open domains"
            return result
        # leaves: nothing left to split, or few enough open ReLUs for the exact solver
        leafy = (pool.choice[:, 0] < 0) | (_open_count(net, pool.doms) <= opts.leaf_unstable)
        if bool(leafy.any()):
            idx = torch.nonzero(leafy).flatten()
            if leaf is None:
                result.message = "a sub-domain has no ReLU left to split and no exact solver is available"
                return result
            for i in idx.tolist():
                left = deadline - time.monotonic()
                if left <= 0:
                    result.message = "timeout in a leaf query"
                    return result
                t0 = time.monotonic()
                status, x = leaf([t[i].numpy() for t in pool.doms.lower], [t[i].numpy() for t in pool.doms.upper],
                                 [t[i].numpy() for t in pool.doms.signs], left)  # fmt: skip
                result.leaves += 1
                result.leaf_seconds += time.monotonic() - t0
                if status == "sat":
                    return BabResult("sat", x, result.nodes, result.leaves, result.leaf_seconds, bound=result.bound)
                if status != "unsat":
                    result.message = f"leaf solver: {status}"
                    return result
            pool = pool.take(torch.nonzero(~leafy).flatten())
            if not pool.doms.size:
                break
        # the worst domains first
        count = min(opts.batch, pool.doms.size)
        order = torch.argsort(pool.value)
        parents, rest = pool.take(order[:count]), pool.take(order[count:])
        children = _split(parents)
        try:
            if opts.refresh:
                first = int(parents.choice[:, 0].min())
                children.doms = compute_bounds(net, children.doms, first + 1, deadline=deadline)
        except Expired:
            result.message = f"timeout with {pool.doms.size} open domains"
            return result
        value, a, b, res = _bound(net, children.doms, spec_t, rhs_t, children.alphas, children.betas, opts, deadline,
                                  opts.iterations)  # fmt: skip
        result.nodes += children.doms.size
        closed = (value > 0) | infeasible(children.doms)
        children = _Pool(children.doms, value, a, b, _scores(net, children.doms, res))
        keep = torch.nonzero(~closed).flatten()
        if len(keep):
            found = _candidates(net, children.doms.select(keep), Backward(res.value[keep], res.input_coef[keep], {}),
                                spec_t, rhs_t, point_check)  # fmt: skip
            if found is not None:
                return BabResult("sat", found, result.nodes, result.leaves, result.leaf_seconds, bound=result.bound)
        pool = _Pool.cat([rest, children.take(keep)]) if len(keep) or rest.doms.size else children.take(keep)
        result.bound = float(pool.value.min()) if pool.doms.size else 0.0
        result.history.append((result.bound, pool.doms.size))
        last_batch = time.monotonic() - batch_start
    result.status = "unsat"
    return result


def _open_count(net: TorchNet, doms: Domains) -> torch.Tensor:
    count = torch.zeros(doms.size, dtype=torch.int64)
    for k in net.relus():
        count += ((doms.lower[k] < 0) & (doms.upper[k] > 0) & (doms.signs[k] == 0)).sum(1)
    return count


def _split(parents: _Pool) -> _Pool:
    """Two children per parent: its chosen ReLU forced active (+1) / inactive (-1); slopes and multipliers
    inherited."""
    both = parents.take(torch.cat([torch.arange(parents.doms.size)] * 2))
    half = parents.doms.size
    sign = torch.cat([torch.ones(half, dtype=torch.int8), -torch.ones(half, dtype=torch.int8)])
    layer, neuron = both.choice[:, 0], both.choice[:, 1]
    doms = both.doms
    doms.signs = [s.clone() for s in doms.signs]
    doms.lower = [t.clone() for t in doms.lower]
    doms.upper = [t.clone() for t in doms.upper]
    rows = torch.arange(2 * half)
    for k in torch.unique(layer).tolist():
        sel = rows[layer == k]
        doms.signs[k][sel, neuron[sel]] = sign[sel]
        low, up = doms.lower[k][sel, neuron[sel]], doms.upper[k][sel, neuron[sel]]
        doms.lower[k][sel, neuron[sel]] = torch.where(sign[sel] > 0, low.clamp(min=0.0), low)
        doms.upper[k][sel, neuron[sel]] = torch.where(sign[sel] < 0, up.clamp(max=0.0), up)
    return both


def _candidates(net: TorchNet, doms: Domains, res: Backward, spec: torch.Tensor, rhs: torch.Tensor,
                point_check: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray | None:  # fmt: skip
    """The box corners minimising each domain's linear bound (one per row); the first that satisfies every row
    on the encoded network, if any."""
    if point_check is None or not doms.size:
        return None
    coef = res.input_coef  # (B, m, n)
    corners = torch.where(coef > 0, net.lo, net.hi).reshape(-1, coef.shape[-1]).numpy()
    violation = point_check(corners)
    hits = np.flatnonzero(violation <= 0)
    return corners[hits[0]] if len(hits) else None
