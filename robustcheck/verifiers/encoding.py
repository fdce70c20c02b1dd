"""Exact encodings of "is there an input in the box whose logits satisfy ``A y <= c``?" for a canonical ReLU network.

Z3 (the default engine, QF_LRA): every weight is an exact rational (``Fraction`` of the float64 value, which for
Linear/Conv weights is exactly the float32 parameter); ReLUs whose sign the bounds fix are replaced by ``a = z``
or dropped; each *unstable* ReLU gets a case split ``(z >= 0 and a = z) or (z <= 0 and a = 0)`` plus its bounds
and the triangle ``a <= u (z - l) / (u - l)`` as redundant lemmas that prune the search. The lemma constants are
the bounds rounded *outwards* to multiples of ``2**-LEMMA_BITS`` (a looser but still valid relaxation): with the
53-bit fractions of the float64 bounds Z3's simplex was about 5x slower on digits-mlp.
:func:`naive_z3_query` is the textbook encoding (every ReLU an ``If``, no bounds) for comparison.

MILP (scipy's HiGHS ``milp``): the same residual problem with a binary per unstable ReLU (big-M from the bounds:
``a >= z, a <= z - l (1 - d), a <= u d``, ``d = 1`` active). HiGHS works in floating point with feasibility
tolerances of about 1e-7, so its "infeasible" is not a proof in exact arithmetic: ``c`` is padded with
:data:`MILP_PAD` (so near-misses count as feasible), the tests cross-check it against Z3, and the engine labels a
MILP-only SAFE as such or has Z3 confirm it (:attr:`robustcheck.verifiers.engine.Options.confirm_milp`).

Max pooling (after a ReLU) is exact in both: Z3 gets ``m >= a_i`` for every window entry and ``or(m = a_i)``
over the entries whose upper bound reaches the window's largest lower bound; the MILP a binary per such entry
(``m <= a_i + (U - l_i)(1 - s_i)``, ``sum s_i = 1``). Smooth activations are not encoded (queries on such
networks are refused by the engine).

Every query returns a :class:`QueryResult`: ``"unsat"`` (no such input), ``"sat"`` with the input found (float64,
within the box), or ``"unknown"`` (timeout / solver gave up).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Any

import numpy as np

from robustcheck.verifiers.bounds import LayerBounds, backward_linear, output_lower, split_bounds
from robustcheck.verifiers.network import Network

#: extra slack added to ``c`` in MILP queries, covering HiGHS's floating-point feasibility tolerances.
MILP_PAD = 1e-5


@dataclass
class QueryResult:
    """Outcome of one solver query; ``x`` is the flat input found for ``"sat"``."""

    status: str
    x: np.ndarray | None = None
    seconds: float = 0.0
    engine: str = "z3"
    #: branch and bound only: sub-domains visited and leaves sent to Z3
    nodes: int = 0
    z3_calls: int = 0
    message: str = ""


class _OutOfTime(Exception):
    """Building an encoding took the whole time budget."""


def _import_z3() -> Any:
    import z3

    return z3


def rational(value: float | Fraction) -> Any:
    """The exact rational value of a float (or a ``Fraction``) as a Z3 real (``RealVal(float)`` would go through
    a decimal string)."""
    z3 = _import_z3()
    frac = value if isinstance(value, Fraction) else Fraction(float(value))
    if frac.denominator == 1:
        return z3.RealVal(frac.numerator)
    return z3.RealVal(f"{frac.numerator}/{frac.denominator}")


#: grid of the rounded lemma constants (bounds and triangle): multiples of 2**-LEMMA_BITS.
LEMMA_BITS = 10


def _dyadic(value: float, direction: int) -> Fraction:
    """``value`` rounded down (``direction`` -1) or up (+1) to a multiple of ``2**-LEMMA_BITS``, exactly."""
    scaled = float(value) * 2**LEMMA_BITS
    step = math.floor(scaled) if direction < 0 else math.ceil(scaled)
    return Fraction(int(step), 2**LEMMA_BITS)


class Z3Network:
    """Exact rational copies of a network's weights, made once and reused by every query on it."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.weights: list[list[list[tuple[int, Any]]]] = []
        self.biases: list[list[Any]] = []
        for affine in net.affines:
            rows = []
            for row in affine.weight:
                nz = np.flatnonzero(row)
                rows.append([(int(i), rational(row[i])) for i in nz])
            self.weights.append(rows)
            self.biases.append([rational(b) for b in affine.bias])


def _affine_expr(z3: Any, terms: list[tuple[int, Any]], bias: Any, inputs: list[Any]) -> Any:
    parts = [
        coef * inputs[i]
        for i, coef in terms
        if not (z3.is_rational_value(inputs[i]) and inputs[i].as_fraction() == 0)
    ]
    return z3.Sum(*parts, bias) if parts else bias


def _input_vars(z3: Any, lo: np.ndarray, hi: np.ndarray, solver: Any) -> tuple[list[Any], list[int]]:
    """One real per free input (fixed inputs, ``lo == hi``, become constants)."""
    inputs, free = [], []
    for i, (low, high) in enumerate(zip(lo, hi, strict=True)):
        if low == high:
            inputs.append(rational(low))
            continue
        var = z3.Real(f"x_{i}")
        solver.add(var >= rational(low), var <= rational(high))
        inputs.append(var)
        free.append(i)
    return inputs, free


def _output_constraints(
    z3: Any, solver: Any, cache: Z3Network, acts: list[Any], spec: np.ndarray, rhs: np.ndarray
) -> None:
    """Add ``spec @ y <= rhs`` with ``y = W_L a + b_L`` (only the logits a row uses are built)."""
    needed = np.flatnonzero(np.any(spec != 0, axis=0))
    logits = {int(k): _affine_expr(z3, cache.weights[-1][k], cache.biases[-1][k], acts) for k in needed}
    for row, bound in zip(spec, rhs, strict=True):
        solver.add(
            z3.Sum(*[rational(row[k]) * logits[int(k)] for k in np.flatnonzero(row)]) <= rational(bound)
        )


def _read_model(z3: Any, model: Any, inputs: list[Any], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    x = np.array(lo, dtype=np.float64)
    for i, var in enumerate(inputs):
        if z3.is_rational_value(var):
            continue
        value = model.eval(var, model_completion=True)
        x[i] = float(value.as_fraction())
    return np.clip(x, lo, hi)


def _check(
    z3: Any, solver: Any, inputs: list[Any], lo: np.ndarray, hi: np.ndarray, start: float
) -> QueryResult:
    """Run ``solver`` and turn its verdict into a :class:`QueryResult` (the input point for ``sat``)."""
    verdict = solver.check()
    seconds = time.perf_counter() - start
    if verdict == z3.unsat:
        return QueryResult("unsat", None, seconds)
    if verdict == z3.sat:
        return QueryResult("sat", _read_model(z3, solver.model(), inputs, lo, hi), seconds)
    return QueryResult("unknown", None, seconds)


def _solve_encoding(
    cache: Z3Network,
    lo: np.ndarray,
    hi: np.ndarray,
    spec: np.ndarray,
    rhs: np.ndarray,
    timeout_s: float,
    solver: Any,
    relu: Callable[[int, int, Callable[[], Any]], Any],
    bounds: LayerBounds | None = None,
) -> QueryResult:
    """Encode the network into ``solver`` and decide "some ``x`` in ``[lo, hi]`` with ``spec @ y(x) <= rhs``".

    Each hidden neuron ``j`` of layer ``k`` goes through ``relu(k, j, pre)``: ``pre()`` builds its pre-activation
    term, and ``relu`` adds what it needs to ``solver`` and returns the post-activation term. Building the
    encoding counts against ``timeout_s`` (a large network's encoding alone can take seconds).
    """
    z3 = _import_z3()
    start = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    net = cache.net
    if any(a != "relu" for a in net.acts):
        return QueryResult("unknown", None, 0.0, message="smooth activations are not encoded exactly")
    try:
        inputs, _ = _input_vars(z3, lo, hi, solver)
        acts = inputs
        for k in range(len(net.affines) - 1):
            layer = []
            for j, (terms, bias) in enumerate(zip(cache.weights[k], cache.biases[k], strict=True)):
                if j % 64 == 0 and time.monotonic() > deadline:
                    raise _OutOfTime
                layer.append(relu(k, j, partial(_affine_expr, z3, terms, bias, acts)))
            acts = layer
            if net.pools[k] is not None:
                acts = _z3_maxpool(z3, solver, acts, net.pools[k], k, bounds)
        _output_constraints(z3, solver, cache, acts, spec, rhs)
        left = deadline - time.monotonic()
        if left <= 0:
            raise _OutOfTime
    except _OutOfTime:
        return QueryResult("unknown", None, time.perf_counter() - start, message="timeout while encoding")
    solver.set("timeout", max(1, int(left * 1000)))
    return _check(z3, solver, inputs, lo, hi, start)


def _pool_candidates(pool: np.ndarray, a_lo: np.ndarray | None, a_hi: np.ndarray | None) -> list[list[int]]:
    """Per window the distinct entries that can be its max (upper bound >= the window's largest lower bound)."""
    out = []
    for row in pool:
        members = list(dict.fromkeys(int(i) for i in row))
        if a_lo is not None and a_hi is not None:
            floor = max(a_lo[i] for i in members)
            members = [i for i in members if a_hi[i] >= floor]
        out.append(members)
    return out


def _post_relu_bounds(bounds: LayerBounds | None, k: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if bounds is None:
        return None, None
    return np.maximum(bounds.lower[k], 0.0), np.maximum(bounds.upper[k], 0.0)


def _z3_maxpool(z3: Any, solver: Any, acts: list[Any], pool: np.ndarray, k: int, bounds: LayerBounds | None) -> list[Any]:
    """``m_w = max`` of each window, exactly: ``m >= a_i`` for all entries, ``or(m = a_i)`` over the candidates."""
    a_lo, a_hi = _post_relu_bounds(bounds, k)
    out = []
    for w, candidates in enumerate(_pool_candidates(pool, a_lo, a_hi)):
        if len(candidates) == 1:
            out.append(acts[candidates[0]])
            continue
        m = z3.Real(f"m_{k}_{w}")
        for i in dict.fromkeys(int(i) for i in pool[w]):
            solver.add(m >= acts[i])
        solver.add(z3.Or(*[m == acts[i] for i in candidates]))
        out.append(m)
    return out


def z3_query(
    cache: Z3Network,
    lo: np.ndarray,
    hi: np.ndarray,
    bounds: LayerBounds,
    spec: np.ndarray,
    rhs: np.ndarray,
    timeout_s: float,
    *,
    triangle: bool = True,
    splits: dict[tuple[int, int], int] | None = None,
) -> QueryResult:
    """Is there ``x`` in ``[lo, hi]`` with ``spec @ y(x) <= rhs``? Stable ReLUs fixed, unstable ones split.

    ``splits`` maps ``(layer, neuron)`` to +1 / -1: the query is restricted to inputs where that ReLU is active
    (``z >= 0``) / inactive (``z <= 0``) -- a sub-problem of branch and bound.
    """
    splits = splits or {}
    z3 = _import_z3()
    solver = z3.SolverFor("QF_LRA")

    def relu(k: int, j: int, pre: Callable[[], Any]) -> Any:
        low, high, split = bounds.lower[k][j], bounds.upper[k][j], splits.get((k, j), 0)
        if split:
            solver.add(pre() >= 0 if split > 0 else pre() <= 0)
        if split < 0 or high <= 0:  # (split) inactive; the bounds already hold on the sub-domain
            return z3.RealVal(0)
        if low >= 0 or split > 0:  # stably active (or split active): a = z
            a = z3.Real(f"a_{k}_{j}")
            solver.add(a == pre())  # (bound lemmas on stable neurons only slowed Z3's simplex down)
            return a
        z, a = z3.Real(f"z_{k}_{j}"), z3.Real(f"a_{k}_{j}")
        # lemma constants rounded outwards to a short dyadic grid: still valid (a relaxation), and Z3's
        # simplex is several times faster than with the 53-bit fractions of the float64 bounds
        lj, uj = _dyadic(low, -1), _dyadic(high, 1)
        solver.add(z == pre(), z >= rational(lj), z <= rational(uj), a >= 0, a >= z, a <= rational(uj))
        if triangle:
            slope = uj / (uj - lj)
            solver.add(a <= rational(slope) * z + rational(-slope * lj))
        solver.add(z3.Or(z3.And(z >= 0, a == z), z3.And(z <= 0, a == 0)))
        return a

    return _solve_encoding(cache, lo, hi, spec, rhs, timeout_s, solver, relu, bounds)


def naive_z3_query(
    cache: Z3Network, lo: np.ndarray, hi: np.ndarray, spec: np.ndarray, rhs: np.ndarray, timeout_s: float
) -> QueryResult:
    """The textbook encoding: every ReLU ``a = If(z >= 0, z, 0)``, no bounds, no lemmas (for the benchmark)."""
    z3 = _import_z3()
    solver = z3.Solver()

    def relu(k: int, j: int, pre: Callable[[], Any]) -> Any:
        z, a = z3.Real(f"z_{k}_{j}"), z3.Real(f"a_{k}_{j}")
        solver.add(z == pre(), a == z3.If(z >= 0, z, z3.RealVal(0)))
        return a

    return _solve_encoding(cache, lo, hi, spec, rhs, timeout_s, solver, relu)


def z3_branch_and_bound(
    cache: Z3Network,
    lo: np.ndarray,
    hi: np.ndarray,
    bounds: LayerBounds,
    spec: np.ndarray,
    rhs: np.ndarray,
    timeout_s: float,
    *,
    leaf_unstable: int = 0,
) -> QueryResult:
    """:func:`z3_query` inside a branch and bound over unstable ReLUs.

    Each node fixes some ReLUs active / inactive and recomputes CROWN bounds on that sub-domain
    (:func:`~robustcheck.verifiers.bounds.split_bounds`); a node whose bounds already exclude ``spec @ y <= rhs``
    is closed, and a node with at most ``leaf_unstable`` open ReLUs goes to Z3 with its splits as constraints
    (exact on the sub-domain). The sub-domains partition the box, so "unsat" on every leaf is a proof and a Z3
    point of any leaf is a genuine solution. Branching: the earliest layer first, the widest triangle within it.
    """
    start = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    net = cache.net
    stack: list[dict[tuple[int, int], int]] = [{}]
    nodes = calls = 0
    while stack:
        left = deadline - time.monotonic()
        if left <= 0:
            return QueryResult("unknown", None, time.perf_counter() - start, "z3", nodes, calls)
        splits = stack.pop()
        nodes += 1
        node = split_bounds(net, lo, hi, bounds, splits) if splits else bounds
        if node is None or np.any(output_lower(net, spec, node, lo, hi) > rhs):
            continue
        # the corner minimising this node's linear bound: often a genuine solution, and it picks the branch
        _, coef = backward_linear(net, len(net.affines) - 1, spec.sum(axis=0, keepdims=True), node, lo, hi)
        corner = np.where(coef[0] > 0, lo, hi)
        if np.all(spec @ net.forward(corner)[0] <= rhs):
            return QueryResult("sat", corner, time.perf_counter() - start, "z3", nodes, calls)
        corner_pre = net.pre_activations(corner)
        open_relus = [
            (k, int(j))
            for k in range(len(node.lower))
            for j in np.flatnonzero((node.lower[k] < 0) & (node.upper[k] > 0))
            if (k, int(j)) not in splits
        ]
        if len(open_relus) <= leaf_unstable:
            result = z3_query(cache, lo, hi, node, spec, rhs, left, splits=splits)
            calls += 1
            if result.status == "unsat":
                continue
            return QueryResult(result.status, result.x, time.perf_counter() - start, "z3", nodes, calls)
        k, j = max(
            open_relus, key=lambda kj: (-kj[0], min(node.upper[kj[0]][kj[1]], -node.lower[kj[0]][kj[1]]))
        )
        first = 1 if corner_pre[k][0, j] >= 0 else -1  # the corner's side first (popped last-in first-out)
        stack.append({**splits, (k, j): -first})
        stack.append({**splits, (k, j): first})
    return QueryResult("unsat", None, time.perf_counter() - start, "z3", nodes, calls)


# ---------------------------------------------------------------------------------------------------------------
# MILP
# ---------------------------------------------------------------------------------------------------------------
def milp_query(
    net: Network,
    lo: np.ndarray,
    hi: np.ndarray,
    bounds: LayerBounds,
    spec: np.ndarray,
    rhs: np.ndarray,
    timeout_s: float,
) -> QueryResult:
    """The residual query as a MILP solved by HiGHS; minimises ``sum(spec @ y)`` so a "sat" point violates most."""
    from scipy import sparse
    from scipy.optimize import Bounds as VarBounds
    from scipy.optimize import LinearConstraint, milp

    start = time.perf_counter()
    if any(a != "relu" for a in net.acts):
        return QueryResult("unknown", None, 0.0, "milp", message="smooth activations are not encoded exactly")
    n0 = net.num_inputs
    # variable layout: x, then per hidden layer [z (n), a (n), d (n)] and, with max pooling, [m (W), s (C)]
    candidates = [
        None if pool is None else _pool_candidates(pool, *_post_relu_bounds(bounds, k))
        for k, pool in enumerate(net.pools)
    ]
    offsets, pool_offsets, total = [], [], n0
    for k, size in enumerate(net.hidden_sizes):
        offsets.append(total)
        total += 3 * size
        pool_offsets.append(total)
        if candidates[k] is not None:
            total += len(candidates[k]) + sum(len(c) for c in candidates[k])
    lower = np.full(total, 0.0)
    upper = np.full(total, 0.0)
    integrality = np.zeros(total)
    lower[:n0], upper[:n0] = lo, hi
    rows: list[sparse.spmatrix] = []
    row_lo: list[np.ndarray] = []
    row_hi: list[np.ndarray] = []

    def block(cols: dict[int, sparse.spmatrix], nrows: int, low: np.ndarray, high: np.ndarray) -> None:
        mat = sparse.lil_matrix((nrows, total))
        for col, sub in cols.items():
            mat[:, col : col + sub.shape[1]] = sub
        rows.append(mat.tocsr())
        row_lo.append(low)
        row_hi.append(high)

    prev_col, prev_n = 0, n0
    for k, size in enumerate(net.hidden_sizes):
        base = offsets[k]
        z_col, a_col, d_col = base, base + size, base + 2 * size
        affine = net.affines[k]
        low, up = bounds.lower[k], bounds.upper[k]
        eye = sparse.identity(size, format="csr")
        # z - W a_prev = b
        block({z_col: eye, prev_col: sparse.csr_matrix(-affine.weight)}, size, affine.bias, affine.bias)
        lower[z_col : z_col + size], upper[z_col : z_col + size] = low, up
        active, inactive = low >= 0, up <= 0
        unstable = ~active & ~inactive
        lower[a_col : a_col + size] = np.where(active, np.maximum(low, 0.0), 0.0)
        upper[a_col : a_col + size] = np.where(inactive, 0.0, np.maximum(up, 0.0))
        upper[d_col : d_col + size] = np.where(unstable, 1.0, np.where(active, 1.0, 0.0))
        lower[d_col : d_col + size] = np.where(active, 1.0, 0.0)
        integrality[d_col : d_col + size] = 1
        # a - z: = 0 when active; >= 0 when unstable (a >= z)
        eq = sparse.diags(active.astype(float))
        block({a_col: eq, z_col: -eq}, size, np.zeros(size), np.zeros(size))
        un = sparse.diags(unstable.astype(float))
        block({a_col: un, z_col: -un}, size, np.zeros(size), np.full(size, np.inf))
        # a - z - low d <= -low  (a <= z - low (1 - d))
        lu = np.where(unstable, low, 0.0)
        block({a_col: un, z_col: -un, d_col: sparse.diags(-lu)}, size, np.full(size, -np.inf), -lu)
        # a - up d <= 0
        uu = np.where(unstable, up, 0.0)
        block({a_col: un, d_col: sparse.diags(-uu)}, size, np.full(size, -np.inf), np.zeros(size))
        prev_col, prev_n = a_col, size
        if candidates[k] is not None:
            prev_col, prev_n = _milp_maxpool(
                net.pools[k], candidates[k], a_col, pool_offsets[k], np.maximum(low, 0.0), np.maximum(up, 0.0),
                lower, upper, integrality, rows, row_lo, row_hi, total,
            )
    last = net.affines[-1]
    combined = spec @ last.weight
    block(
        {prev_col: sparse.csr_matrix(combined)},
        len(spec),
        np.full(len(spec), -np.inf),
        rhs - spec @ last.bias + MILP_PAD,
    )
    objective = np.zeros(total)
    objective[prev_col : prev_col + prev_n] = combined.sum(axis=0)
    constraints = LinearConstraint(
        sparse.vstack(rows).tocsr(), np.concatenate(row_lo), np.concatenate(row_hi)
    )
    result = milp(
        objective,
        integrality=integrality,
        bounds=VarBounds(lower, upper),
        constraints=constraints,
        options={"time_limit": max(0.05, float(timeout_s)), "disp": False},
    )
    seconds = time.perf_counter() - start
    if result.status == 2:
        return QueryResult("unsat", None, seconds, "milp")
    if result.status == 1:
        return QueryResult("unknown", None, seconds, "milp", message="timeout")
    if result.x is not None and result.status in (0, 1):
        return QueryResult("sat", np.clip(result.x[:n0], lo, hi), seconds, "milp")
    return QueryResult("unknown", None, seconds, "milp")


def _milp_maxpool(pool: np.ndarray, candidates: list[list[int]], a_col: int, m_col: int, a_lo: np.ndarray,
                  a_hi: np.ndarray, lower: np.ndarray, upper: np.ndarray, integrality: np.ndarray, rows: list[Any],
                  row_lo: list[np.ndarray], row_hi: list[np.ndarray], total: int) -> tuple[int, int]:  # fmt: skip
    """Rows and variables of ``m_w = max_i a_i``: ``m >= a_i`` (all entries), ``m <= a_i + (U - l_i)(1 - s_i)``
    and ``sum s_i = 1`` over the candidates; returns the column and count of the ``m`` variables."""
    from scipy import sparse

    width = len(pool)
    s_col = m_col + width
    ge_r, ge_c, ge_v, le_r, le_c, le_v, le_hi, eq_r, eq_c = [], [], [], [], [], [], [], [], []
    n_ge = n_le = 0
    for w, cands in enumerate(candidates):
        members = list(dict.fromkeys(int(i) for i in pool[w]))
        top = max(a_hi[i] for i in members)
        lower[m_col + w] = max(a_lo[i] for i in members)
        upper[m_col + w] = top
        for i in members:  # m - a_i >= 0
            ge_r += [n_ge, n_ge]
            ge_c += [m_col + w, a_col + i]
            ge_v += [1.0, -1.0]
            n_ge += 1
        for i in cands:  # m - a_i + (U - l_i) s_i <= U - l_i
            big = top - a_lo[i]
            le_r += [n_le, n_le, n_le]
            le_c += [m_col + w, a_col + i, s_col]
            le_v += [1.0, -1.0, big]
            le_hi.append(big)
            eq_r.append(w)
            eq_c.append(s_col)
            upper[s_col] = 1.0
            integrality[s_col] = 1
            s_col += 1
            n_le += 1
    rows.append(sparse.csr_matrix((ge_v, (ge_r, ge_c)), shape=(n_ge, total)))
    row_lo.append(np.zeros(n_ge))
    row_hi.append(np.full(n_ge, np.inf))
    rows.append(sparse.csr_matrix((le_v, (le_r, le_c)), shape=(n_le, total)))
    row_lo.append(np.full(n_le, -np.inf))
    row_hi.append(np.array(le_hi))
    rows.append(sparse.csr_matrix((np.ones(len(eq_r)), (eq_r, eq_c)), shape=(width, total)))
    row_lo.append(np.ones(width))
    row_hi.append(np.ones(width))
    return m_col, width
