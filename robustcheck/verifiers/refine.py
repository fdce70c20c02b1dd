"""Intermediate bounds tightened by branch and bound.

alpha-CROWN bounds each hidden neuron through one linear relaxation of every layer before it, and on deep fully
connected networks the relaxation error compounds (mnist_relu_9_200: 160-200 of the 200 neurons of layers 6-7
stay unstable). The tightest bounds are the MILP optima over the earlier ReLUs; alpha-beta-CROWN's ``bab-refine``
spends most of its time getting them from Gurobi. Here they come from the batched branch and bound that decides
properties (:mod:`robustcheck.verifiers.bab`), run on the network cut after layer ``k``:

- one tree per unstable neuron of layer ``k`` and side: the objective ``+z_k[j]`` (its lower bound) or
  ``-z_k[j]`` (its upper bound), over sub-domains of the ReLUs of layers ``< k``;
- every round splits, in each tree, the ``per_tree`` open domains with the lowest bounds (best first), and bounds
  all children of all trees in one batch with alpha-beta-CROWN;
- a tree's bound is the lowest over its open domains, so it is sound whenever the time runs out. A neuron's trees
  stop when either side proves it stable; a tree with nothing left to split has its exact optimum.

Measured on mnist_relu_9_200 (one thread): layer 1 of idx 225 in 30 s ends at the HiGHS MILP optimum on all 16
bounds checked (HiGHS: 2-7 s per bound, one at a time), mean width 0.82 -> 0.60, and alpha-CROWN then proves all
nine disjuncts (gaps were -13 .. -7); idx 5520 (gaps -60 .. -25) is proved after layers 1 and 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from robustcheck.verifiers import bab
from robustcheck.verifiers.crown import Domains, TorchNet, infeasible, init_alphas


@dataclass
class RefineOptions:
    """Settings: open domains split per tree and round, alpha/beta steps per round, the most children bounded in
    one round, and the float64 numbers the open domains may hold (bounds, splits, slopes, multipliers)."""

    per_tree: int = 4
    iterations: int = 8
    max_batch: int = 4096
    max_elements: int = 40_000_000
    #: stop once the last third of the time spent narrowed the bounds by less than this share of all narrowing
    #: so far (the first rounds take most of the gain: mnist_relu_9_200 idx 3539, layer 1, one thread: mean
    #: width 0.94 -> 0.63 in 12 s with 0.05, 0.61 after 73 s with 0; both bounds prove all nine disjuncts)
    stall: float = 0.05


@dataclass
class Refinement:
    """What refining one layer did: unstable ``neurons`` refined, how many of them became ``stable``, their mean
    bound width before and after, rounds and sub-domains bounded."""

    layer: int
    neurons: int
    stable: int
    width_before: float
    width_after: float
    rounds: int
    domains: int
    seconds: float


def refine_layer(net: TorchNet, root: Domains, k: int, deadline: float,
                 opts: RefineOptions | None = None) -> tuple[Domains, Refinement]:  # fmt: skip
    """``root`` (one domain) with the bounds of hidden layer ``k``'s unstable neurons tightened by branch and bound
    over the ReLUs of layers ``< k`` until ``deadline`` (``time.monotonic()``) or until every tree is done."""
    opts = opts or RefineOptions()
    began = time.monotonic()
    low, up = root.lower[k][0], root.upper[k][0]
    neurons = torch.nonzero((low < 0) & (up > 0) & (root.signs[k][0] == 0)).flatten()
    n = len(neurons)
    if n == 0 or k == 0:
        return root, Refinement(k, n, 0, 0.0, 0.0, 0, 0, 0.0)
    old_low, old_up = low[neurons], up[neurons]
    sub = net.prefix(k)
    trees = 2 * n
    # tree t < n bounds +z[neurons[t]] from below, tree n + t bounds -z[neurons[t]] (its upper bound)
    spec = torch.zeros((trees, 1, len(low)), dtype=torch.float64)
    spec[torch.arange(n), 0, neurons] = 1.0
    spec[n + torch.arange(n), 0, neurons] = -1.0
    zero = torch.zeros(1, dtype=torch.float64)
    settings = bab.BabOptions(iterations=opts.iterations)
    doms = root.prefix(k).select(torch.zeros(trees, dtype=torch.int64))
    alphas = init_alphas(sub, doms, 1)
    betas = {j: torch.zeros_like(a) for j, a in alphas.items()}
    value, alphas, betas, res = bab.optimise(
        sub, doms, spec, zero, alphas, betas, settings, deadline, 2 * opts.iterations
    )
    pool = bab.Pool(doms, value, alphas, betas, bab.ranked_splits(sub, doms, res, 1)[:, 0])
    tree = torch.arange(trees)
    # per tree, the lowest bound of its domains that left the pool (proved positive): still part of its minimum
    floor = torch.full((trees,), float("inf"), dtype=torch.float64)
    done = torch.zeros(trees, dtype=torch.bool)
    per_domain = sum(int(t.shape[1]) for t in root.lower[:k]) * 5
    rounds = bounded = 0
    last = 0.0
    history: list[tuple[float, float]] = []  # (seconds, total width)
    while pool.doms.size:
        start = time.monotonic()
        if start + 1.5 * last > deadline or pool.doms.size * per_domain > opts.max_elements:
            break
        best = _tree_min(pool.value, tree, floor)
        new_low, new_up = _tightened(old_low, old_up, best)
        history.append((start - began, float((new_up - new_low).sum())))
        if _stalled(history, opts.stall):
            break
        index, rank = _rank_in_tree(pool.value, tree)
        # a tree whose lowest domain has nothing left to split has its optimum; a neuron proved stable by either
        # side needs nothing more (its relaxation is exact)
        lowest = index[rank == 0]
        done[tree[lowest[pool.choice[lowest, 0] < 0]]] = True
        stable = best > 0
        done |= stable | stable.roll(n)
        pick = index[rank < opts.per_tree]
        pick = pick[(pool.choice[pick, 0] >= 0) & ~done[tree[pick]]]
        pick = pick[torch.argsort(pool.value[pick])][: opts.max_batch // 2]
        if not len(pick):
            break
        rest = torch.ones(pool.doms.size, dtype=torch.bool)
        rest[pick] = False
        parents, parent_tree = pool.take(pick), tree[pick]
        pool, tree = pool.take(torch.nonzero(rest).flatten()), tree[rest]
        child_tree = parent_tree.repeat(2)
        children, res = bab.bound_children(sub, parents, spec[child_tree], zero, settings, deadline)
        bounded += len(child_tree)
        empty = infeasible(children.doms)
        positive = (children.value > 0) & ~empty
        floor = floor.scatter_reduce(0, child_tree[positive], children.value[positive], "amin")
        keep = torch.nonzero(~empty & ~positive).flatten()
        children, kept = children.take(keep), res.take(keep)
        children.choice = bab.ranked_splits(sub, children.doms, kept, 1)[:, 0]
        if children.doms.size:
            pool, tree = bab.Pool.cat([pool, children]), torch.cat([tree, child_tree[keep]])
        rounds += 1
        last = time.monotonic() - start
    new_low, new_up = _tightened(old_low, old_up, _tree_min(pool.value, tree, floor))
    out = Domains(list(root.lower), list(root.upper), list(root.signs))
    out.lower[k], out.upper[k] = low[None].clone(), up[None].clone()
    out.lower[k][0, neurons], out.upper[k][0, neurons] = new_low, new_up
    width = float((old_up - old_low).mean()), float((new_up - new_low).mean())
    stable = int(((new_low >= 0) | (new_up <= 0)).sum())
    return out, Refinement(k, n, stable, *width, rounds, bounded, time.monotonic() - began)


def _tightened(low: torch.Tensor, up: torch.Tensor, best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The refined neurons' bounds given each tree's lowest bound ``best`` (lower sides first)."""
    # a tree with no domain left would say the box is empty (it is not): it keeps the old bound instead
    best = torch.where(torch.isfinite(best), best, torch.full_like(best, float("-inf")))
    n = len(low)
    return torch.maximum(low, best[:n]), torch.minimum(up, -best[n:])


def _stalled(history: list[tuple[float, float]], share: float) -> bool:
    """Whether the last third of the time narrowed the total width by less than ``share`` of all narrowing."""
    now, width = history[-1]
    if len(history) < 4 or share <= 0:
        return False
    gained = history[0][1] - width
    before = next((w for t, w in reversed(history) if t <= now * 2 / 3), history[0][1])
    return gained <= 0 or before - width < share * gained


def _tree_min(value: torch.Tensor, tree: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """``(trees,)``: each tree's lowest bound, over its domains' ``value`` and its ``floor``."""
    return floor.scatter_reduce(0, tree, value, "amin")


def _rank_in_tree(value: torch.Tensor, tree: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Domain indices grouped by tree, lowest ``value`` first within each, and each one's rank in its tree."""
    order = torch.argsort(value)
    # a stable sort by tree keeps the value order inside each tree
    index = order[torch.argsort(tree[order], stable=True)]
    t = tree[index]
    position = torch.arange(len(t))
    first = torch.ones(len(t), dtype=torch.bool)
    first[1:] = t[1:] != t[:-1]
    return index, position - torch.cummax(torch.where(first, position, torch.zeros_like(position)), 0).values
