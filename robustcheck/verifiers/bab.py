"""Batched branch and bound over unstable ReLUs with alpha-beta-CROWN bounds (:mod:`robustcheck.verifiers.crown`)
and an exact solver on the leaves.

The question is the engine's query: is there an input of the box with ``spec @ y <= rhs`` (``spec`` ``(m, K)``;
every row)? A sub-domain is closed when some row's sound lower bound exceeds ``rhs``, or when its bounds are
contradictory. Each round takes the ``batch`` open domains with the lowest bounds, splits each on one ReLU chosen
by a BaBSR-style score (how much of the bound the neuron's triangle intercept costs, ``|min(c, 0)| * (-l u /
(u - l))``), and bounds all children in one batched computation: split neurons clamped (later layers' bounds
recomputed by CROWN only with ``refresh``: measured on the 9x200 MLP and the oval21 nets it cost 10-30 times a
bound step for no better bound per domain; the split constraints' multipliers carry the split instead), then
the output bound maximised over the ReLU lower slopes (alpha, in [0, 1])
and the split constraints' multipliers (beta >= 0) by a few projected Adam steps, starting from the parent's.
Every evaluation is a sound bound, so the best one is kept, and a child keeps its parent's bound as a floor.
Sigmoid / tanh neurons are split by halving their input interval (each half relaxed on its own).

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
    smooth_relaxation,
)

#: narrowest pre-activation interval of a sigmoid / tanh neuron that branch and bound still halves
SMOOTH_MIN_WIDTH = 1e-4

#: the leaf solver: ``(lower, upper, signs, seconds) -> (status, x)`` for one domain (numpy per layer).
LeafSolver = Callable[[list[np.ndarray], list[np.ndarray], list[np.ndarray], float], tuple[str, "np.ndarray | None"]]


@dataclass
class BabOptions:
    """Branch and bound settings."""

    batch: int = 64
    iterations: int = 8
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    refresh: bool = False
    leaf_unstable: int = 0
    max_domains: int = 200_000
    #: ReLUs per domain whose children are bounded before choosing the split (FSB); 1: the BaBSR score alone.
    #: Measured on oval21 (cifar_base img4631, cifar_wide img19, 100-120 s): 4 candidates closed the same
    #: bound gap in the same time with ~25 % fewer domains, so the cheaper score stays the default
    candidates: int = 1


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
class Pool:
    """Open domains with their bounds, slopes, multipliers and chosen split."""

    doms: Domains
    value: torch.Tensor  # (B,) best row margin (max over rows of lower - rhs)
    alphas: dict[int, torch.Tensor]  # (B, m, n_k)
    betas: dict[int, torch.Tensor]  # (B, m, n_k)
    choice: torch.Tensor  # (B, 2): layer, neuron (-1: nothing to split)

    def take(self, index: torch.Tensor) -> Pool:
        return Pool(self.doms.select(index), self.value[index], {k: a[index] for k, a in self.alphas.items()},
                    {k: b[index] for k, b in self.betas.items()}, self.choice[index])  # fmt: skip

    @staticmethod
    def cat(parts: list[Pool]) -> Pool:
        parts = [p for p in parts if p.doms.size]
        return Pool(Domains.cat([p.doms for p in parts]), torch.cat([p.value for p in parts]),
                    {k: torch.cat([p.alphas[k] for p in parts]) for k in parts[0].alphas},
                    {k: torch.cat([p.betas[k] for p in parts]) for k in parts[0].betas},
                    torch.cat([p.choice for p in parts]))  # fmt: skip


def ranked_splits(net: TorchNet, doms: Domains, result: Backward, count: int) -> torch.Tensor:
    """``(B, count, 2)``: per domain the ``count`` open neurons (layer, neuron) with the best scores, best first;
    ``(-1, -1)`` where fewer are open. Open: an unsplit unstable ReLU (BaBSR-style score) or a sigmoid / tanh
    neuron whose input interval is wider than :data:`SMOOTH_MIN_WIDTH` (its relaxation's gap, weighted)."""
    batch = doms.size
    scores, where = [], []
    for k in range(net.hidden):
        low, up = doms.lower[k], doms.upper[k]
        coef = result.act_coef.get(k)
        if net.acts[k] == "relu":
            open_ = (low < 0) & (up > 0) & (doms.signs[k] == 0)
            span = torch.where(open_, up - low, torch.ones_like(up))
            intercept = torch.where(open_, -low * up / span, torch.zeros_like(up))
            if coef is not None:
                score = (coef.clamp(max=0.0).abs().sum(1) + 1e-3 * coef.abs().sum(1)) * intercept
            else:
                score = intercept
            # a small width term breaks ties between neurons the bound does not see (earlier layers first)
            score = score + 1e-6 * intercept / (1 + k)
        else:
            # a smooth neuron's interval is halved: score its relaxation's gap at the midpoint, weighted
            open_ = (up - low) > SMOOTH_MIN_WIDTH
            lo_s, lo_i, up_s, up_i = smooth_relaxation(net.acts[k], low, up)
            mid = (low + up) / 2
            gap = ((up_s - lo_s) * mid + up_i - lo_i).clamp(min=0.0)
            score = (coef.abs().sum(1) if coef is not None else 1.0) * gap + 1e-6 * gap / (1 + k)
        scores.append(torch.where(open_, score, torch.full_like(score, -1.0)))
        where.append(torch.stack([torch.full((low.shape[1],), k), torch.arange(low.shape[1])], dim=1))
    choice = torch.full((batch, count, 2), -1, dtype=torch.int64)
    if not scores:
        return choice
    score, table = torch.cat(scores, dim=1), torch.cat(where)
    top, index = score.topk(min(count, score.shape[1]), dim=1)
    picked = table[index]  # (B, count, 2)
    picked[top < 0] = -1
    choice[:, : picked.shape[1]] = picked
    return choice


def _strong_choice(net: TorchNet, doms: Domains, spec: torch.Tensor, rhs: torch.Tensor, alphas: dict[int, torch.Tensor],
                   betas: dict[int, torch.Tensor], result: Backward, count: int) -> torch.Tensor:  # fmt: skip
    """Filtered smart branching (FSB, De Palma et al. 2021): of the ``count`` best-scored ReLUs per domain, the one
    whose worse child has the best bound, each child bounded once with the parent's slopes and multipliers
    (no optimisation): a cheap look-ahead that ranks splits by what they really buy. ``(B, 2)``."""
    ranked = ranked_splits(net, doms, result, count)
    if count <= 1 or not doms.size:
        return ranked[:, 0]
    rows = torch.arange(doms.size)
    worst = torch.full((doms.size, count), float("-inf"), dtype=torch.float64)
    with torch.no_grad():
        for c in range(ranked.shape[1]):
            layer, neuron = ranked[:, c, 0], ranked[:, c, 1]
            valid = layer >= 0
            if not bool(valid.any()):
                break
            margins = []
            for sign in (1, -1):
                child = Domains([t.clone() for t in doms.lower], [t.clone() for t in doms.upper],
                                [t.clone() for t in doms.signs])  # fmt: skip
                _apply_split(net, child, layer, neuron, torch.full((doms.size,), sign, dtype=torch.int8))
                value = (backward(net, net.hidden, spec, child, alphas, betas).value - rhs).amax(-1)
                margins.append(value)
            worst[:, c] = torch.where(valid, torch.minimum(*margins), worst[:, c])
    best = worst.argmax(dim=1)
    return ranked[rows, best]


def optimise(net: TorchNet, doms: Domains, spec: torch.Tensor, rhs: torch.Tensor, alphas: dict[int, torch.Tensor],
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
    value, a, b, res = optimise(net, root, spec_t, rhs_t, start_alpha, start_beta, opts, deadline, 0)
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
    pool = Pool(root, value, a, b, _strong_choice(net, root, spec_t, rhs_t, a, b, res, opts.candidates))
    found = _candidates(net, root, res, spec_t, rhs_t, point_check)
    if found is not None:
        return BabResult("sat", found, bound=result.bound)
    last_batch, last_count = 0.0, 1
    while pool.doms.size:
        batch_start = time.monotonic()
        # a batch costs about its size times the last one's cost per parent: start none that would end late
        if batch_start + last_batch * min(opts.batch, pool.doms.size) / last_count > deadline:
            result.message = f"timeout with {pool.doms.size} open domains"
            return result
        if pool.doms.size > opts.max_domains:
            result.message = f"gave up: {pool.doms.size} open domains"
            return result
        # leaves: nothing left to split, or few enough open ReLUs for the exact solver
        leafy = pool.choice[:, 0] < 0
        if len(relus) == net.hidden:  # (smooth neurons are split, never sent to the exact solver)
            leafy |= _open_count(net, pool.doms) <= opts.leaf_unstable
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
        try:
            children, res = bound_children(net, parents, spec_t, rhs_t, opts, deadline)
        except Expired:
            result.message = f"timeout with {pool.doms.size} open domains"
            return result
        result.nodes += children.doms.size
        keep = torch.nonzero(~(children.value > 0) & ~infeasible(children.doms)).flatten()
        children, kept = children.take(keep), res.take(keep)
        children.choice = _strong_choice(net, children.doms, spec_t, rhs_t, children.alphas, children.betas, kept,
                                         opts.candidates)  # fmt: skip
        if children.doms.size:
            found = _candidates(net, children.doms, kept, spec_t, rhs_t, point_check)
            if found is not None:
                return BabResult("sat", found, result.nodes, result.leaves, result.leaf_seconds, bound=result.bound)
        pool = Pool.cat([rest, children]) if children.doms.size or rest.doms.size else children
        result.bound = float(pool.value.min()) if pool.doms.size else 0.0
        result.history.append((result.bound, pool.doms.size))
        last_batch, last_count = time.monotonic() - batch_start, count
    result.status = "unsat"
    return result


def _open_count(net: TorchNet, doms: Domains) -> torch.Tensor:
    count = torch.zeros(doms.size, dtype=torch.int64)
    for k in net.relus():
        count += ((doms.lower[k] < 0) & (doms.upper[k] > 0) & (doms.signs[k] == 0)).sum(1)
    return count


def _apply_split(net: TorchNet, doms: Domains, layer: torch.Tensor, neuron: torch.Tensor, sign: torch.Tensor) -> None:
    """In place, per domain ``i`` with ``layer[i] >= 0``: a ReLU forced active (``sign`` +1, ``lower >= 0``) or
    inactive (-1, ``upper <= 0``) and its sign recorded; a smooth neuron's interval cut at its midpoint (+1: the
    upper half, -1: the lower half). Either child's bounds hold on its part of the parent, so the bound
    computations stay sound without any multiplier (beta only tightens ReLU splits)."""
    rows = torch.arange(doms.size)
    for k in torch.unique(layer[layer >= 0]).tolist():
        sel = rows[layer == k]
        col = neuron[sel]
        low, up = doms.lower[k][sel, col], doms.upper[k][sel, col]
        if net.acts[k] == "relu":
            doms.signs[k][sel, col] = sign[sel]
            doms.lower[k][sel, col] = torch.where(sign[sel] > 0, low.clamp(min=0.0), low)
            doms.upper[k][sel, col] = torch.where(sign[sel] < 0, up.clamp(max=0.0), up)
        else:
            mid = (low + up) / 2
            doms.lower[k][sel, col] = torch.where(sign[sel] > 0, mid, low)
            doms.upper[k][sel, col] = torch.where(sign[sel] < 0, mid, up)


def bound_children(net: TorchNet, parents: Pool, spec: torch.Tensor, rhs: torch.Tensor, opts: BabOptions,
                   deadline: float) -> tuple[Pool, Backward]:  # fmt: skip
    """Both children of every parent (:func:`split_domains`; ``parents`` first halves, then second halves), their
    margins optimised (:func:`optimise`; ``spec`` shared or per child), and the backward pass at the result.
    Raises :class:`Expired` when ``refresh`` runs out of time."""
    children = split_domains(net, parents)
    if opts.refresh:
        first = int(parents.choice[:, 0].min())
        children.doms = compute_bounds(net, children.doms, first + 1, deadline=deadline)
    value, alphas, betas, res = optimise(net, children.doms, spec, rhs, children.alphas, children.betas, opts, deadline,
                                         opts.iterations)  # fmt: skip
    # a parent's bound holds on both its halves: a child keeps the better of the two (a smooth neuron's relaxation
    # on half the interval is not always tighter everywhere)
    value = torch.maximum(value, parents.value.repeat(2))
    return Pool(children.doms, value, alphas, betas, children.choice), res


def split_domains(net: TorchNet, parents: Pool) -> Pool:
    """Two children per parent: its chosen ReLU forced active (+1) / inactive (-1), or its chosen smooth
    neuron's interval halved (upper half / lower half); slopes and multipliers inherited."""
    both = parents.take(torch.cat([torch.arange(parents.doms.size)] * 2))
    half = parents.doms.size
    sign = torch.cat([torch.ones(half, dtype=torch.int8), -torch.ones(half, dtype=torch.int8)])
    layer, neuron = both.choice[:, 0], both.choice[:, 1]
    doms = both.doms
    doms.signs = [s.clone() for s in doms.signs]
    doms.lower = [t.clone() for t in doms.lower]
    doms.upper = [t.clone() for t in doms.upper]
    _apply_split(net, doms, layer, neuron, sign)
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
