"""The verification engine: attack, then bounds, then an exact solver on the residual, per property.

1. **Attack** (stage ``attack``): PGD inside the input box (plus the manipulation grid points when there are
   few) on the *float32* model; any point that violates the property there is a counterexample. When the
   bounds (stage 2) leave a disjunct open, a second, wider PGD (more restarts and steps, halving step size,
   at most ``strong_share`` of the time left) runs before the solver.
2. **Bounds** (stage ``bounds``): interval + CROWN bounds on every pre-activation; a disjunct ``A y <= c`` is
   impossible when some row's lower bound exceeds ``c + tol``, where ``tol = |A| err`` and ``err`` bounds the
   float32 model's deviation from the real-valued network (:func:`~robustcheck.verifiers.rounding.float32_error`).
   Proving with this margin makes SAFE hold for the float32 model too, not only for its real-valued idealisation.
3. **Solver** (stage ``z3`` or ``milp``): one query per remaining disjunct (one per competing class), stable ReLUs
   fixed, unstable ones split (:mod:`robustcheck.verifiers.encoding`). The query asks for ``A y <= c + tol``:
   unsat proves the disjunct with the float margin (``"real"`` semantics: only the margin for the float64
   rounding of the merged weights, so SAFE holds for the exact composition of the file's float weights). A solver point is rounded to float32 (inside the box) and
   re-run on the float32 model: it is reported UNSAFE only if it violates the property there (for classification:
   another class strictly above the true one). Otherwise a second query asks for ``A y <= c - tol`` (a violation
   beyond any float error): unsat means the property only fails within rounding distance of the decision
   boundary (UNKNOWN, "boundary"); a point found is re-run again.
   With the ``milp`` engine an "unsat" is HiGHS's floating-point infeasibility (``c`` padded by
   :data:`~robustcheck.verifiers.encoding.MILP_PAD`), not an exact proof: the SAFE it gives says so in its
   message, unless ``confirm_milp`` has Z3 re-prove each such disjunct exactly (then a Z3 timeout is UNKNOWN).
   With ``branching`` (default) each Z3 query runs inside a branch and bound over the unstable ReLUs
   (:func:`~robustcheck.verifiers.encoding.z3_branch_and_bound`): CROWN closes most sub-domains, the corner that
   minimises a sub-domain's linear bound is tried as a solution, and Z3 decides the leaves (every ReLU fixed).

4. **Refinement** (stage ``refine``, with the ``crown`` bounds on networks with two or more hidden layers): when a
   first branch and bound pass with :data:`QUICK_SHARE` of the time left does not decide, the intermediate bounds
   are tightened layer by layer by branch and bound (:mod:`robustcheck.verifiers.refine`, at most
   ``refine_share`` of the time left), alpha-CROWN runs again on them, and what stays open goes back to the
   solver stage with the rest of the time.

Every property has a deadline: solver queries get what is left, and a spent deadline yields UNKNOWN.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from robustcheck.threads import default_threads
from robustcheck.verifiers import bab, crown, encoding, exact, refine
from robustcheck.verifiers.bounds import LayerBounds
from robustcheck.verifiers.network import Network
from robustcheck.verifiers.rounding import spec_error
from robustcheck.verifiers.vnnlib import Property

STATUSES = ("safe", "unsafe", "unknown", "error")
ENGINES = ("z3", "milp")
_TIMEOUT = "per-property timeout"
#: multiply-adds per alpha-CROWN step above which intermediate bounds keep CROWN's slopes (only the output's are
#: optimised): the 9x200 MLP (~0.8e9; 20 steps in ~5 s on one core, its hard instances' bounds halve) is below,
#: the oval21 conv nets (> 4e9) above
INTERMEDIATE_ALPHA_COST = 1_500_000_000
_BOUNDARY = "boundary: violations exist only within float rounding of the decision boundary"


@dataclass
class Options:
    """Engine settings: solver ``engine``, bound ``bounds`` method, per-property ``timeout`` (seconds), PGD effort,
    and what SAFE means (``semantics``)."""

    engine: str = "z3"
    bounds: str = "crown"
    timeout: float = 30.0
    pgd_steps: int = 40
    pgd_restarts: int = 3
    seed: int = 0
    use_attack: bool = True
    #: "float32": proofs keep a rigorous margin for the float32 model's rounding (SAFE holds for the float32
    #: model); "real": the real-valued network with the float32 weights (VNN-COMP's semantics).
    semantics: str = "float32"
    #: Z3 engine: branch and bound over unstable ReLUs (CROWN on each sub-domain, Z3 on the leaves) instead of
    #: one monolithic query with a case split per unstable ReLU.
    branching: bool = True
    #: MILP engine: have Z3 (exact) re-prove every disjunct HiGHS declares infeasible before SAFE. Off, a MILP
    #: SAFE rests on HiGHS's floating-point tolerances (the outcome's message says so).
    confirm_milp: bool = False
    #: alpha-CROWN iterations on the disjuncts plain CROWN leaves open (0: none)
    alpha_iterations: int = 20
    #: branch and bound: domains bounded per batch (0: by network size, see :func:`auto_batch`), alpha/beta
    #: steps per batch, and the number of open ReLUs at which a sub-domain goes to the exact solver
    bab_batch: int = 0
    bab_iterations: int = 8
    leaf_unstable: int = 0
    #: random points (half of them box corners) tried before PGD
    samples: int = 256
    #: second attack, run only when the bounds leave a disjunct open: restarts, steps (halving step size) and
    #: the share of the time left it may take
    strong_restarts: int = 31
    strong_steps: int = 100
    strong_share: float = 0.1
    #: share of the time left that tightening intermediate bounds by branch and bound may take when the bounds and
    #: a first branch and bound pass (:data:`QUICK_SHARE` of the time) leave a disjunct open
    #: (:mod:`~robustcheck.verifiers.refine`; 0: off)
    refine_share: float = 0.5
    #: replay a proof by bounds in exact rational arithmetic when it costs at most this many integer
    #: multiply-adds (0: never); a disjunct the replay does not confirm goes to the solver
    replay_ops: int = exact.DEFAULT_MAX_OPS
    #: threads for the bound computations (0: the machine's default share)
    threads: int = 0


#: share of the time left for a first branch and bound pass before intermediate bounds are refined
QUICK_SHARE = 0.1

#: hidden neurons times domains per branch-and-bound batch at which bigger batches stop paying off on a CPU
BATCH_NEURONS = 460_000


def auto_batch(net: Network) -> int:
    """Domains per branch-and-bound batch: 64 for wide networks, more for small ones (measured on the 9x200 MNIST
    MLP: 256 a batch bounds 1.5 times the domains per second that 64 does, one thread)."""
    hidden = sum(a.weight.shape[0] for a in net.affines[:-1])
    return max(64, min(512, BATCH_NEURONS // max(1, hidden)))


@dataclass
class Outcome:
    """Verdict on one property.

    Attributes:
        status: ``safe`` / ``unsafe`` / ``unknown`` / ``error``.
        stage: what decided: ``attack``, ``bounds``, ``z3``, ``milp`` (or ``timeout`` / ``boundary`` notes in
            ``message`` for unknowns).
        counterexample: flat float32 input that violates the property on the float32 model (``unsafe`` only).
        output: the float32 model's outputs at the counterexample.
        unstable: ReLUs whose sign the bounds left open.
        stage_seconds: time spent per stage.
    """

    status: str
    stage: str
    seconds: float = 0.0
    counterexample: np.ndarray | None = None
    output: np.ndarray | None = None
    unstable: int = 0
    message: str = ""
    queries: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: a SAFE of the bounds whose proof was recomputed in exact rational arithmetic
    replayed: bool = False


@dataclass
class OpenDisjunct:
    """A disjunct ``spec @ y <= rhs`` (``spec`` ``(m, K)``, ``rhs`` ``(m,)``) the bounds left open.

    Attributes:
        tol: ``(m,)`` proof margin added to ``rhs`` (the float32 model's error bound, or under ``"real"``
            semantics the float64 rounding of the encoded weights).
        float_err: ``(m,)`` bound of the float32 model's deviation from the encoded network (logit units).
        gap: ``max(lower bound of spec @ y - rhs)``: how far the bounds were from excluding it.
    """

    spec: np.ndarray
    rhs: np.ndarray
    tol: np.ndarray
    float_err: np.ndarray
    gap: float
    index: int = -1


class _Expired(Exception):
    """The property's deadline passed inside a stage that cannot return partial results."""


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _Expired


@dataclass
class _State:
    """Per-property bound state shared by the stages: the torch network over the box, the root domain's bounds
    (CROWN, then alpha-CROWN) and the output slopes per disjunct."""

    prop: Property
    net: Network
    tnet: crown.TorchNet
    root: crown.Domains
    method: str
    alphas: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    lowers: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, net: Network, prop: Property, method: str, bounds: LayerBounds | None = None,
              deadline: float | None = None) -> _State:  # fmt: skip
        tnet = crown.TorchNet.of(net, prop.lo, prop.hi)
        root = crown.root_domains(tnet)
        if bounds is not None:
            root.lower = [torch.as_tensor(b, dtype=torch.float64)[None].clone() for b in bounds.lower]
            root.upper = [torch.as_tensor(b, dtype=torch.float64)[None].clone() for b in bounds.upper]
        elif method == "interval":
            for k in range(tnet.hidden):
                root.lower[k], root.upper[k] = crown.interval_layer(tnet, root, k)
        else:
            try:
                root = crown.compute_bounds(tnet, root, deadline=deadline)
            except crown.Expired:
                raise _Expired from None
        return cls(prop, net, tnet, root, method)

    def layer_bounds(self) -> LayerBounds:
        return LayerBounds([t[0].numpy().copy() for t in self.root.lower], [t[0].numpy().copy() for t in self.root.upper])

    def has_relaxation(self) -> bool:
        return self.tnet.hidden > 0

    def magnitudes(self) -> list[np.ndarray]:
        """Bounds on ``|input of affines[k]|``: the box, then each hidden layer's output (after pooling)."""
        out = [np.maximum(np.abs(self.prop.lo), np.abs(self.prop.hi))]
        for k in range(self.tnet.hidden):
            low, up = crown.post_bounds(self.tnet, self.root, k)
            out.append(torch.maximum(low.abs(), up.abs())[0].numpy())
        return out

    def output_lower(self, index: int, spec: np.ndarray) -> np.ndarray:
        """Sound lower bounds of ``spec @ y`` over the box (the best of CROWN, the optimised slopes and the
        interval bounds of the last layer)."""
        spec_t = torch.as_tensor(spec, dtype=torch.float64)
        with torch.no_grad():
            value = crown.backward(self.tnet, self.tnet.hidden, spec_t, self.root).value[0].numpy()
            if self.method == "interval":
                value = np.full_like(value, -np.inf)
            if index in self.alphas:
                value = np.maximum(value, crown.backward(self.tnet, self.tnet.hidden, spec_t, self.root,
                                                         self.alphas[index]).value[0].numpy())  # fmt: skip
            value = np.maximum(value, self._interval_output(spec))
        if index in self.lowers:
            value = np.maximum(value, self.lowers[index])
        return value

    def _interval_output(self, spec: np.ndarray) -> np.ndarray:
        low, up = crown.post_bounds(self.tnet, self.root, self.tnet.hidden - 1) if self.tnet.hidden else (
            self.tnet.lo[None], self.tnet.hi[None])  # fmt: skip
        w, b = self.tnet.weights[-1], self.tnet.biases[-1]
        comb = torch.as_tensor(spec, dtype=torch.float64) @ w
        value = comb.clamp(min=0) @ low[0] + comb.clamp(max=0) @ up[0] + torch.as_tensor(spec) @ b
        scale = comb.abs() @ torch.maximum(low.abs(), up.abs())[0] + torch.as_tensor(spec).abs() @ b.abs()
        return (value - crown.REL_SLACK * (1 + scale)).numpy()

    def optimize(self, residual: list[OpenDisjunct], iterations: int, deadline: float) -> None:
        """alpha-CROWN for the open disjuncts together (their rows stacked): tighter root bounds and slopes."""
        rows = [d for d in residual if len(d.spec)]
        if not rows:
            return
        spec = torch.as_tensor(np.concatenate([d.spec for d in rows]), dtype=torch.float64)
        # per-row slopes for every intermediate bound cost (rows x the widths below) per step: only where cheap
        cost = sum(2 * len(crown.refine_rows(self.tnet, self.root, k)) * sum(w.numel() for w in self.tnet.weights[:k])
                   for k in range(1, self.tnet.hidden))  # fmt: skip
        try:
            doms, alphas, values = crown.optimize_intermediate(self.tnet, self.root, spec, iterations, deadline=deadline,
                                                               intermediate=cost <= INTERMEDIATE_ALPHA_COST)  # fmt: skip
        except crown.Expired:
            raise _Expired from None
        self.root = doms
        start = 0
        for d in rows:
            stop = start + len(d.spec)
            self.alphas[d.index] = {k: a[:, start:stop] for k, a in alphas.items()}
            self.lowers[d.index] = values[0, start:stop].numpy()
            start = stop

    def alphas_for(self, index: int) -> dict[int, torch.Tensor] | None:
        return self.alphas.get(index)


class FloatModel:
    """The model the verdicts are about, evaluated as-is (float32 torch), on flat inputs ``(B, n)``.

    ``fn`` maps a float tensor ``(B, n)`` to outputs ``(B, K)`` (differentiable for PGD); ``dtype`` is the
    precision counterexamples are rounded to before re-validation.
    """

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype = torch.float32
    ) -> None:
        self.fn, self.dtype = fn, dtype

    @classmethod
    def from_classifier(cls, model: Any) -> FloatModel:
        shape = tuple(model.input_shape)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return model(x.reshape(len(x), *shape))

        model.eval()
        return cls(fn)

    @classmethod
    def from_module(cls, module: torch.nn.Module, full_shape: tuple[int, ...]) -> FloatModel:
        """An ONNX-style module fed one input of ``full_shape`` (batch dim included when it has one)."""
        batched = len(full_shape) >= 2 and full_shape[0] == 1

        def fn(x: torch.Tensor) -> torch.Tensor:
            if batched:
                return module(x.reshape(len(x), *full_shape[1:])).reshape(len(x), -1)
            return torch.stack([module(row.reshape(full_shape)).reshape(-1) for row in x])

        return cls(fn)

    @classmethod
    def from_network(cls, net: Network) -> FloatModel:
        """The real-valued network itself in float64 (for hidden-layer regions, where no float32 model exists)."""
        weights = [(torch.from_numpy(a.weight), torch.from_numpy(a.bias)) for a in net.affines]
        acts = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
        pools = [None if p is None else torch.from_numpy(p) for p in net.pools]

        def fn(x: torch.Tensor) -> torch.Tensor:
            h = x
            for k, (w, b) in enumerate(weights):
                h = h @ w.T + b
                if k < len(weights) - 1:
                    h = acts[net.acts[k]](h)
                    if pools[k] is not None:
                        h = h[:, pools[k]].amax(-1)
            return h

        return cls(fn, torch.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.fn(torch.as_tensor(np.atleast_2d(x)).to(self.dtype)).double().numpy()


# ---------------------------------------------------------------------------------------------------------------
# Property checks on concrete points
# ---------------------------------------------------------------------------------------------------------------
def violation(prop: Property, y: np.ndarray) -> np.ndarray:
    """Per row of ``y`` ``(B, K)``: ``min over disjuncts of max over rows (A y - c)`` (violated iff <= 0 / < 0)."""
    y = np.atleast_2d(y)
    values = [
        np.max(y @ spec.T - rhs, axis=1) if len(spec) else np.full(len(y), -np.inf)
        for spec, rhs in prop.disjuncts
    ]
    return np.min(np.stack(values), axis=0)


def violates(prop: Property, y: np.ndarray) -> np.ndarray:
    """Whether each output row violates the property (strictly for classification robustness)."""
    v = violation(prop, y)
    return v < 0 if prop.strict else v <= 0


def round_into_box(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """``x`` rounded to ``dtype`` and moved (by at most an ulp) so that ``lo <= x <= hi`` holds in float64."""
    low = np.asarray(lo, dtype)
    low = np.where(low.astype(np.float64) < lo, np.nextafter(low, dtype(np.inf)), low)
    high = np.asarray(hi, dtype)
    high = np.where(high.astype(np.float64) > hi, np.nextafter(high, dtype(-np.inf)), high)
    return np.clip(np.asarray(x, dtype), low, np.maximum(low, high))


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: attack
# ---------------------------------------------------------------------------------------------------------------
def pgd_attack(model: FloatModel, prop: Property, options: Options, start: np.ndarray | None, deadline: float,
               extra_points: np.ndarray | None = None, decay: bool = False) -> np.ndarray | None:  # fmt: skip
    """PGD (sign steps of ``2.5 * width / pgd_steps``) minimising :func:`violation` over the box ``prop.lo`` /
    ``prop.hi`` ``(n,)``, from ``start`` ``(n,)`` (default the centre) and ``pgd_restarts`` uniform points;
    ``extra_points`` ``(P, n)`` (the manipulation grid) are checked first. Returns a flat counterexample,
    rounded into the box in the model's precision and re-validated on the model, or ``None``. With ``decay``
    the step halves after each third of the steps (coarse moves first, then fine ones near a box face)."""
    lo, hi = prop.lo, prop.hi
    if extra_points is not None and len(extra_points):
        points = round_into_box(extra_points, lo, hi, _np_dtype(model))
        found = np.flatnonzero(violates(prop, model(points)))
        if len(found):
            return points[found[0]]
    free = hi > lo
    if not free.any():
        point = round_into_box(lo[None], lo, hi, _np_dtype(model))
        return point[0] if violates(prop, model(point))[0] else None
    gen = torch.Generator().manual_seed(options.seed)
    found = _random_points(model, prop, options.samples, gen)
    if found is not None:
        return found
    lo_t, hi_t = torch.as_tensor(lo, dtype=model.dtype), torch.as_tensor(hi, dtype=model.dtype)
    width = hi_t - lo_t
    starts = [torch.as_tensor(start if start is not None else (lo + hi) / 2, dtype=model.dtype)]
    starts += [
        lo_t + width * torch.rand(len(lo), generator=gen, dtype=model.dtype)
        for _ in range(options.pgd_restarts)
    ]
    x = torch.stack(starts).clamp(lo_t, hi_t)
    steps = max(1, options.pgd_steps)
    step_size = 2.5 * width / steps
    specs = [
        (torch.as_tensor(s, dtype=model.dtype), torch.as_tensor(r, dtype=model.dtype))
        for s, r in prop.disjuncts
        if len(s)
    ]
    if not specs:
        return round_into_box(x[0].detach().numpy(), lo, hi, _np_dtype(model))
    for i in range(steps + 1):
        x = x.detach().requires_grad_(True)
        y = model.fn(x)
        per = torch.stack([(y @ s.T - r).max(dim=1).values for s, r in specs]).min(dim=0).values
        bad = (per < 0) if prop.strict else (per <= 0)
        if bool(bad.any()):
            candidate = round_into_box(
                x[int(torch.nonzero(bad)[0, 0])].detach().double().numpy(), lo, hi, _np_dtype(model)
            )
            if violates(prop, model(candidate[None]))[0]:
                return candidate
        if time.monotonic() > deadline:
            return None
        (grad,) = torch.autograd.grad(per.sum(), x)
        size = step_size * 0.5 ** min(2, (3 * i) // steps) if decay else step_size
        x = torch.max(torch.min(x.detach() - size * grad.sign(), hi_t), lo_t)
    return None


def _random_points(model: FloatModel, prop: Property, count: int, gen: torch.Generator) -> np.ndarray | None:
    """Uniform points and box corners (half each) of the box, checked on the model in chunks."""
    if count <= 0:
        return None
    lo, hi = torch.as_tensor(prop.lo), torch.as_tensor(prop.hi)
    n = len(lo)
    for start in range(0, count, 128):
        size = min(128, count - start)
        u = torch.rand((size, n), generator=gen, dtype=torch.float64)
        corners = torch.where(torch.rand((size, n), generator=gen, dtype=torch.float64) < 0.5, lo, hi)
        pts = torch.where(torch.arange(size)[:, None] % 2 == 0, lo + (hi - lo) * u, corners).numpy()
        pts = round_into_box(pts, prop.lo, prop.hi, _np_dtype(model))
        hits = np.flatnonzero(violates(prop, model(pts)))
        if len(hits):
            return pts[hits[0]]
    return None


def _np_dtype(model: FloatModel) -> Any:
    return np.float64 if model.dtype == torch.float64 else np.float32


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------
class Engine:
    """Runs properties against one network; caches the exact-rational weights for Z3."""

    def __init__(self, net: Network, model: FloatModel, options: Options | None = None) -> None:
        self.net, self.model = net, model
        self.options = options or Options()
        if self.options.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.options.engine!r}: use one of {ENGINES}")
        if self.options.semantics not in ("float32", "real"):
            raise ValueError(f"unknown semantics {self.options.semantics!r}: use 'float32' or 'real'")
        self._z3: encoding.Z3Network | None = None
        self._state: _State | None = None
        #: branch and bound of the current property: sub-domains bounded and leaves sent to the exact solver
        self._bab_nodes = self._bab_leaves = 0

    def z3_network(self) -> encoding.Z3Network:
        """The network's exact rational weights for Z3, built on first use."""
        if self._z3 is None:
            self._z3 = encoding.Z3Network(self.net)
        return self._z3

    def verify(self, prop: Property, *, start: np.ndarray | None = None, grid: np.ndarray | None = None,
               timeout: float | None = None) -> Outcome:  # fmt: skip
        """Decide ``prop`` within ``timeout`` seconds (default ``options.timeout``)."""
        began = time.monotonic()
        deadline = began + (self.options.timeout if timeout is None else timeout)
        times: dict[str, float] = {}
        threads = torch.get_num_threads()
        # PGD runs on a handful of points: thread-pool hand-offs would cost more than the arithmetic
        torch.set_num_threads(1)
        try:
            outcome = self._verify(prop, start, grid, deadline, times)
        except MemoryError as exc:
            outcome = Outcome("error", "none", message=f"out of memory: {exc}")
        except _Expired:
            outcome = Outcome("unknown", "none", message=_TIMEOUT)
        finally:
            torch.set_num_threads(threads)
            self._state = None
        outcome.seconds = time.monotonic() - began
        outcome.stage_seconds = times
        return outcome

    def _verify(self, prop: Property, start: np.ndarray | None, grid: np.ndarray | None, deadline: float,
                times: dict[str, float]) -> Outcome:  # fmt: skip
        opts = self.options
        if opts.use_attack:
            t0 = time.monotonic()
            cex = pgd_attack(self.model, prop, opts, start, deadline, grid)
            times["attack"] = time.monotonic() - t0
            if cex is not None:
                return self._unsafe(prop, cex, "attack")
        torch.set_num_threads(opts.threads or default_threads())
        t0 = time.monotonic()
        self._bab_nodes = self._bab_leaves = 0
        self._state = _State.build(self.net, prop, opts.bounds, deadline=deadline)
        _check_deadline(deadline)
        bounds = self._state.layer_bounds()
        closed: list[OpenDisjunct] = []
        residual = self.open_disjuncts(prop, bounds, closed)
        unstable = bounds.num_unstable()
        if residual and opts.alpha_iterations > 0 and opts.bounds == "crown" and self._state.has_relaxation():
            self._state.optimize(residual, opts.alpha_iterations, deadline)
            bounds = self._state.layer_bounds()
            closed.clear()
            residual = self.open_disjuncts(prop, bounds, closed)
        times["bounds"] = time.monotonic() - t0
        if residual and opts.use_attack and opts.strong_restarts > 0:
            # the bounds leave something open: a longer, wider attack before the (costly) refinement and search
            t0 = time.monotonic()
            strong = replace(opts, pgd_restarts=opts.strong_restarts, pgd_steps=opts.strong_steps,
                             seed=opts.seed + 1, samples=0)
            budget = t0 + opts.strong_share * max(0.0, deadline - t0)
            cex = pgd_attack(self.model, prop, strong, start, budget, decay=True)
            times["attack"] = times.get("attack", 0.0) + time.monotonic() - t0
            if cex is not None:
                return self._unsafe(prop, cex, "attack")
        how, replayed = "", False
        if closed:
            t0 = time.monotonic()
            reopened, how = self._replay(prop, closed, deadline)
            times["replay"] = time.monotonic() - t0
            replayed = not reopened and not how
            residual = sorted(residual + reopened, key=lambda d: d.gap)
        if not residual:
            how = " (replayed in exact rational arithmetic)" if replayed else how
            return Outcome("safe", "bounds", unstable=unstable, message="bounds prove every disjunct" + how,
                           replayed=replayed)  # fmt: skip
        t0 = time.monotonic()
        try:
            if opts.refine_share > 0 and opts.bounds == "crown" and self._state.tnet.hidden > 1:
                # branch and bound first with a small share of the time: what it decides quickly (most
                # counterexamples, small gaps) needs no refinement
                quick = self._solve(prop, bounds, residual, t0 + QUICK_SHARE * (deadline - t0), unstable)
                if quick.status != "unknown" or _TIMEOUT not in quick.message:
                    return quick
                t1 = time.monotonic()
                residual, refined = self._refine(prop, residual, deadline)
                times["refine"] = time.monotonic() - t1
                bounds = self._state.layer_bounds()
                if refined and not residual:
                    layers = ", ".join(str(r.layer) for r in refined)
                    return Outcome("safe", "bounds", unstable=unstable,
                                   message=f"bounds prove every disjunct (intermediate bounds of layer(s) {layers} "
                                           "tightened by branch and bound; float64, rounding allowance included, "
                                           "not replayed exactly)")  # fmt: skip
            return self._solve(prop, bounds, residual, deadline, unstable)
        finally:
            times[opts.engine] = time.monotonic() - t0 - times.get("refine", 0.0)

    def open_disjuncts(self, prop: Property, bounds: LayerBounds,
                       closed: list[OpenDisjunct] | None = None) -> list[OpenDisjunct]:  # fmt: skip
        """The disjuncts of ``prop`` that ``bounds`` (over its box) do not exclude with the proof margin, the
        most nearly violated first; the excluded ones are appended to ``closed`` if given."""
        state = self._state if self._state is not None and self._state.prop is prop else None
        if state is None:
            state = _State.build(self.net, prop, self.options.bounds, bounds)
        magnitudes = state.magnitudes()
        # the real-valued network itself (hidden regions) or VNN-COMP semantics: no float32 margin in proofs,
        # only one for the float64 rounding of merged / probed weights (unit 0)
        real = self.model.dtype == torch.float64 or self.options.semantics == "real"
        # every disjunct's rows in one pass: the error bounds are per row, and each pass walks every weight
        specs = [spec for spec, _ in prop.disjuncts if len(spec)]
        errors: list[np.ndarray] = []
        tols: list[np.ndarray] = []
        if specs:
            stacked = np.concatenate(specs)
            float_all = spec_error(self.net, stacked, bounds.lower, bounds.upper, magnitudes)
            tol_all = spec_error(self.net, stacked, bounds.lower, bounds.upper, magnitudes, 0.0) if real else float_all
            cuts = np.cumsum([len(spec) for spec in specs])[:-1]
            errors, tols = np.split(float_all, cuts), np.split(tol_all, cuts)
        residual = []
        row = 0
        for index, (spec, rhs) in enumerate(prop.disjuncts):
            if not len(spec):  # no output condition: violated by any input
                residual.append(OpenDisjunct(spec, rhs, np.zeros(0), np.zeros(0), -math.inf))
                continue
            float_err, tol = errors[row], tols[row]
            row += 1
            lower = state.output_lower(index, spec)
            disjunct = OpenDisjunct(spec, rhs, tol, float_err, float(np.max(lower - rhs)), index)
            if not np.any(lower > rhs + tol):
                residual.append(disjunct)
            elif closed is not None:
                closed.append(disjunct)
        return sorted(residual, key=lambda d: d.gap)

    def _refine(self, prop: Property, residual: list[OpenDisjunct],
                deadline: float) -> tuple[list[OpenDisjunct], list[refine.Refinement]]:  # fmt: skip
        """Tighten the intermediate bounds layer by layer (:func:`~robustcheck.verifiers.refine.refine_layer`)
        while disjuncts stay open, within ``refine_share`` of the time left (each layer at most half of what is
        left of it); after each layer, CROWN for the deeper ones and alpha-CROWN again. Returns the disjuncts
        still open and what each refined layer did."""
        state = self._state
        assert state is not None
        stop = time.monotonic() + self.options.refine_share * max(0.0, deadline - time.monotonic())
        done: list[refine.Refinement] = []
        for k in range(1, state.tnet.hidden):
            left = stop - time.monotonic()
            if left <= 0:
                break
            root, info = refine.refine_layer(state.tnet, state.root, k, time.monotonic() + left / 2)
            if not info.neurons:
                continue
            done.append(info)
            try:
                state.root = crown.compute_bounds(state.tnet, root, k + 1, deadline=deadline)
            except crown.Expired:
                raise _Expired from None
            state.optimize(residual, self.options.alpha_iterations, deadline)
            residual = self.open_disjuncts(prop, state.layer_bounds())
            if not residual:
                break
        return residual, done

    def _replay(self, prop: Property, closed: list[OpenDisjunct], deadline: float) -> tuple[list[OpenDisjunct], str]:
        """Recompute the float64 proofs of ``closed`` in exact arithmetic (:mod:`~robustcheck.verifiers.exact`):
        ``(disjuncts the replay does not confirm, why there was no replay)``; both empty: every one confirmed."""
        if self.options.replay_ops <= 0:
            return [], " (float64, rounding allowance included; exact replay off)"
        if not self.net.is_relu_chain:
            return [], " (float64, rounding allowance included; no exact replay for pooling or smooth activations)"
        state = self._state
        slopes = {d.index: {k: a[0].numpy() for k, a in state.alphas[d.index].items()}
                  for d in closed if state is not None and d.index in state.alphas}  # fmt: skip
        rows = sum(len(d.spec) * (2 if d.index in slopes else 1) for d in closed)
        hint = state.layer_bounds() if state is not None else None
        cost = exact.replay_cost(self.net, rows, hint)
        if cost > self.options.replay_ops:
            return [], (f" (float64, rounding allowance included; exact replay skipped: about {cost:.0e} integer "
                        f"multiply-adds, limit {self.options.replay_ops:.0e})")  # fmt: skip
        if cost * exact.SECONDS_PER_OP > exact.TIME_SHARE * (deadline - time.monotonic()):
            return [], " (float64, rounding allowance included; no time left for an exact replay)"
        replayed = exact.replay(self.net, prop.lo, prop.hi, hint)
        return [d for d in closed if not replayed.proves(d.spec, d.rhs + d.tol, slopes.get(d.index))], ""

    def _query(self, prop: Property, bounds: LayerBounds, spec: np.ndarray, rhs: np.ndarray, seconds: float, *,
               proof: bool = False, index: int = -1) -> encoding.QueryResult:  # fmt: skip
        """One solver query "some input in the box with ``spec @ y <= rhs``" within ``seconds``; with ``proof``
        and ``confirm_milp``, a MILP "unsat" is re-checked by Z3 in the time left."""
        if self.options.branching:
            return self._bab_query(prop, bounds, spec, rhs, seconds, index)
        return self._leaf_query(prop, bounds, spec, rhs, seconds, None, proof)

    def _leaf_query(self, prop: Property, bounds: LayerBounds, spec: np.ndarray, rhs: np.ndarray, seconds: float,
                    splits: dict[tuple[int, int], int] | None, proof: bool) -> encoding.QueryResult:  # fmt: skip
        """The exact solver on the box (or a sub-domain of it given by ``splits``)."""
        if any(a != "relu" for a in self.net.acts):
            return encoding.QueryResult("unknown", engine=self.options.engine, message="smooth activations")
        if self.options.engine == "milp":
            began = time.monotonic()
            result = encoding.milp_query(self.net, prop.lo, prop.hi, bounds, spec, rhs, seconds)
            if not (proof and self.options.confirm_milp and result.status == "unsat"):
                return result
            seconds -= time.monotonic() - began
            if seconds <= 0:
                return encoding.QueryResult("unknown", engine="milp")
        return encoding.z3_query(self.z3_network(), prop.lo, prop.hi, bounds, spec, rhs, seconds, splits=splits)

    def _bab_query(self, prop: Property, bounds: LayerBounds, spec: np.ndarray, rhs: np.ndarray, seconds: float,
                   index: int) -> encoding.QueryResult:  # fmt: skip
        """alpha-beta-CROWN branch and bound with the exact solver on the leaves."""
        began = time.monotonic()
        state = self._state if self._state is not None and self._state.prop is prop else None
        if state is None:
            state = _State.build(self.net, prop, self.options.bounds, bounds)
        opts = self.options

        def leaf(lower: list[np.ndarray], upper: list[np.ndarray], signs: list[np.ndarray],
                 left: float) -> tuple[str, np.ndarray | None]:  # fmt: skip
            splits = {(k, int(j)): int(sg[j]) for k, sg in enumerate(signs) for j in np.flatnonzero(sg)}
            result = self._leaf_query(prop, LayerBounds(lower, upper), spec, rhs, left, splits, True)
            return result.status, result.x

        def point_check(x: np.ndarray) -> np.ndarray:
            return np.max(self.net.forward(x) @ spec.T - rhs, axis=1)

        batch = opts.bab_batch or auto_batch(self.net)
        options = bab.BabOptions(batch=batch, iterations=opts.bab_iterations, leaf_unstable=opts.leaf_unstable)
        result = bab.branch_and_bound(state.tnet, state.root, spec, rhs, began + seconds, options,
                                      state.alphas_for(index), leaf, point_check)  # fmt: skip
        self._bab_nodes += result.nodes
        self._bab_leaves += result.leaves
        return encoding.QueryResult(result.status, result.x, time.monotonic() - began, opts.engine,
                                    result.nodes, result.leaves, message=result.message)  # fmt: skip

    def _solve(self, prop: Property, bounds: LayerBounds, disjuncts: list[OpenDisjunct], deadline: float,
               unstable: int) -> Outcome:  # fmt: skip
        """Decide the disjuncts the bounds left open: UNSAFE on the first re-validated point, SAFE when the solver
        excludes every one, else UNKNOWN with the reasons."""
        stage = self.options.engine
        notes: list[str] = []
        queries = 0
        for disjunct in disjuncts:
            if not len(disjunct.spec):  # no output condition: any input in the box violates
                point = round_into_box(prop.lo, prop.lo, prop.hi, _np_dtype(self.model))
                return self._unsafe(prop, point, stage, unstable=unstable)
            outcome, note, made = self._decide(prop, bounds, disjunct, deadline, unstable)
            queries += made
            if outcome is not None:
                outcome.queries = queries
                return outcome
            if note is not None:
                notes.append(note)
                if note == _TIMEOUT:
                    break
        if notes:
            return Outcome(
                "unknown", stage, unstable=unstable, message="; ".join(dict.fromkeys(notes)), queries=queries
            )
        if self.options.branching:
            # say what closed the sub-domains: the float64 bounds (sound with their rounding allowance) and, on
            # the leaves, the exact solver
            message = (f"branch and bound closes every open disjunct: {self._bab_nodes} sub-domains bounded in float64 "
                       f"(rounding allowance included), {self._bab_leaves} leaves decided by ")  # fmt: skip
            if stage == "z3":
                message += "z3 (exact rationals)"
            elif self.options.confirm_milp:
                message += "HiGHS, each confirmed by z3"
            else:
                message += "HiGHS (floating-point MILP)" + ("; not an exact proof" if self._bab_leaves else "")
        elif stage == "z3":
            message = "z3 proves every open disjunct"
        elif self.options.confirm_milp:
            message = "HiGHS finds every open disjunct infeasible, each confirmed by z3"
        else:
            message = "HiGHS finds every open disjunct infeasible (floating-point MILP, not an exact proof)"
        return Outcome("safe", stage, unstable=unstable, message=message, queries=queries)

    def _decide(self, prop: Property, bounds: LayerBounds, disjunct: OpenDisjunct, deadline: float,
                unstable: int) -> tuple[Outcome | None, str | None, int]:  # fmt: skip
        """One open disjunct ``spec @ y <= rhs``: ``(UNSAFE outcome or None, why it stays open or None if
        proved, queries made)``.

        First a violation within the proof margin ``tol`` (unsat: proved); if its point does not re-validate on
        the float model, a violation beyond any float error (unsat: only boundary violations exist)."""
        stage = self.options.engine
        spec, rhs = disjunct.spec, disjunct.rhs
        attempts = ((rhs + disjunct.tol, None), (rhs - np.maximum(disjunct.float_err, 1e-9), _BOUNDARY))
        for made, (bound, if_unsat) in enumerate(attempts, start=1):
            left = deadline - time.monotonic()
            if left <= 0:
                return None, _TIMEOUT, made - 1
            result = self._query(prop, bounds, spec, bound, left, proof=if_unsat is None, index=disjunct.index)
            if result.status == "unsat":
                return None, if_unsat, made
            if result.status == "unknown":
                timed_out = time.monotonic() >= deadline or "timeout" in result.message or not result.message
                return None, (_TIMEOUT if timed_out else f"{stage} gave up: {result.message}"), made
            outcome = self._revalidate(prop, result.x, stage, unstable)
            if outcome is not None:
                return outcome, None, made
        return None, "a solver counterexample did not re-validate on the float model", len(attempts)

    def _revalidate(self, prop: Property, x: np.ndarray | None, stage: str, unstable: int) -> Outcome | None:
        """UNSAFE if the solver's point, rounded into the box, violates the property on the float model."""
        if x is None:
            return None
        point = round_into_box(x, prop.lo, prop.hi, _np_dtype(self.model))
        if violates(prop, self.model(point[None]))[0]:
            return self._unsafe(prop, point, stage, unstable=unstable)
        return None

    def _unsafe(self, prop: Property, point: np.ndarray, stage: str, unstable: int = 0) -> Outcome:
        output = self.model(point[None])[0]
        margin = -float(violation(prop, output[None])[0])
        return Outcome("unsafe", stage, counterexample=point, output=output, unstable=unstable,
                       message=f"counterexample re-validated on the float model (violation margin {margin:.3g})")  # fmt: skip


def verify_properties(
    verifier: Engine, props: list[Property], timeout: float
) -> tuple[str, Outcome | None, list[Outcome]]:
    """A VNN-LIB file's verdict over its boxes: ``sat`` (with the counterexample's outcome), ``unsat``,
    ``timeout`` or ``unknown``; all boxes share one ``timeout``."""
    deadline = time.monotonic() + timeout
    outcomes = []
    for prop in props:
        left = deadline - time.monotonic()
        if left <= 0:
            outcomes.append(Outcome("unknown", "none", message="per-property timeout"))
            break
        outcome = verifier.verify(prop, timeout=left)
        outcomes.append(outcome)
        if outcome.status == "unsafe":
            return "sat", outcome, outcomes
    if all(o.status == "safe" for o in outcomes) and len(outcomes) == len(props):
        return "unsat", None, outcomes
    timed_out = any("timeout" in o.message for o in outcomes)
    return ("timeout" if timed_out else "unknown"), None, outcomes
