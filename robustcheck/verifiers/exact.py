"""Exact replay of the bound step: CROWN bounds recomputed in exact rational arithmetic.

The float64 bounds of :mod:`robustcheck.verifiers.crown` are sound up to a rounding allowance that is argued, not
checked. When they prove a property, :func:`replay` recomputes the proof with no rounding at all: every float64
number is a dyadic rational ``n / 2^e``, sums and products of dyadic rationals are dyadic rationals, so Python's
unbounded integers carry the whole computation exactly (the same rationals Z3's QF_LRA arithmetic would use, but
as vectorised integer arithmetic: a Z3 term per product would be orders of magnitude slower).

What is replayed, layer by layer from the input box:

- every hidden pre-activation's bounds: the interval bound and the CROWN bound (adaptive lower slope, triangle
  upper line), both exact, intersected; stored rounded outwards to float64 so numbers stay small;
- each proved disjunct's output rows, with CROWN's slopes and with the lower slopes the float64 run optimised
  (alpha-CROWN): any lower slope in ``[0, 1]`` gives a sound line, so the optimised ones are a certificate.

An upper line ``a <= s (z - l)`` is sound on ``[l, u]`` whenever ``s (u - l) >= u``; ``s`` is the float64 quotient
rounded up until that holds exactly. The replay confirms a disjunct when some row's exact lower bound exceeds the
engine's threshold (``rhs`` plus the float32 margin). Intermediate bounds are plain CROWN (the float64 run may
have tightened them with alpha-CROWN), so a replay can fail where the float64 proof held: the engine then treats
the disjunct as open and lets branch and bound or Z3 decide it.

Cost: about one integer multiply-add per weight per replayed row; :func:`replay_cost` estimates it so callers skip
networks where it would take too long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from robustcheck.verifiers.bounds import LayerBounds
from robustcheck.verifiers.network import Network

#: integer multiply-adds a replay may take by default (estimated for the 9x200 MNIST MLP: about 5e8; it takes 12 s)
DEFAULT_MAX_OPS = 1_000_000_000
#: time of one multiply-add of the estimate, rounded up (measured 3-7e-8 s; zero columns skipped make it an upper bound)
SECONDS_PER_OP = 1e-7
#: share of the time left a replay may take
TIME_SHARE = 0.25


@dataclass
class Dyadic:
    """An exact array ``num / 2^exp``: ``num`` an object array of Python ints, ``exp`` a Python int."""

    num: np.ndarray
    exp: int

    @classmethod
    def of(cls, values: np.ndarray) -> Dyadic:
        """The float64 array ``values``, exactly."""
        flat = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(flat)):
            raise ValueError("exact replay needs finite numbers")
        ratios = [float(v).as_integer_ratio() for v in flat.ravel()]
        exp = max((d.bit_length() - 1 for _, d in ratios), default=0)
        num = np.empty(len(ratios), dtype=object)
        num[:] = [n << (exp - d.bit_length() + 1) for n, d in ratios]
        return cls(num.reshape(flat.shape), exp)

    def aligned(self, exp: int) -> np.ndarray:
        """``num`` scaled to a larger exponent ``exp`` (same values)."""
        return self.num if exp == self.exp else self.num * (1 << (exp - self.exp))

    def __add__(self, other: Dyadic) -> Dyadic:
        exp = max(self.exp, other.exp)
        return Dyadic(self.aligned(exp) + other.aligned(exp), exp)

    def __mul__(self, other: Dyadic) -> Dyadic:
        return Dyadic(self.num * other.num, self.exp + other.exp)

    def __matmul__(self, other: Dyadic) -> Dyadic:
        # only the columns some row uses: rows start one-hot and inactive neurons zero whole columns, and a
        # big-integer product costs the same whether a factor is zero or not
        used = np.flatnonzero((self.num != 0).any(axis=tuple(range(self.num.ndim - 1))))
        if len(used) == self.num.shape[-1]:
            return Dyadic(self.num @ other.num, self.exp + other.exp)
        return Dyadic(self.num[..., used] @ other.num[used], self.exp + other.exp)

    def sum(self, axis: int) -> Dyadic:
        return Dyadic(self.num.sum(axis=axis), self.exp)

    def floor(self) -> np.ndarray:
        """The largest float64 values ``<=`` each entry."""
        return _rounded(self, -1)

    def ceil(self) -> np.ndarray:
        """The smallest float64 values ``>=`` each entry."""
        return _rounded(self, 1)


def _rounded(value: Dyadic, direction: int) -> np.ndarray:
    denominator = 1 << value.exp
    out = np.empty(value.num.shape, dtype=np.float64)
    flat = out.reshape(-1)
    for i, n in enumerate(value.num.reshape(-1)):
        x = n / denominator  # correctly rounded (Python int division)
        exact = Fraction(n, denominator)
        if direction < 0 and Fraction(x) > exact:
            x = math.nextafter(x, -math.inf)
        elif direction > 0 and Fraction(x) < exact:
            x = math.nextafter(x, math.inf)
        flat[i] = x
    return out


def _upper_slopes(low: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Slopes ``s >= u / (u - l)`` (float64, checked exactly) for the unstable neurons' upper lines; 0 elsewhere."""
    slopes = np.zeros_like(low)
    for i in np.flatnonzero((low < 0) & (up > 0)):
        lo, hi = float(low[i]), float(up[i])
        s = hi / (hi - lo)
        while Fraction(s) * (Fraction(hi) - Fraction(lo)) < Fraction(hi):
            s = math.nextafter(s, math.inf)
        slopes[i] = s
    return slopes


@dataclass
class _Relaxation:
    """One hidden layer's sound bounds ``[lower, upper]`` (float64) and the pieces of its ReLU relaxation that do
    not depend on the coefficients: the upper lines' slopes ``s`` and their intercepts ``-s l`` (exact)."""

    lower: np.ndarray
    upper: np.ndarray
    unstable: np.ndarray
    slope: np.ndarray
    intercept: Dyadic

    @classmethod
    def of(cls, lower: np.ndarray, upper: np.ndarray) -> _Relaxation:
        unstable = (lower < 0) & (upper > 0)
        slope = _upper_slopes(lower, upper)
        # -s l exactly: two dyadics multiplied (never through a float product)
        intercept = Dyadic.of(-slope) * Dyadic.of(np.where(unstable, lower, 0.0))
        return cls(lower, upper, unstable, slope, intercept)


@dataclass
class _Layer:
    weight: Dyadic
    bias: Dyadic


class ExactNetwork:
    """A ReLU chain's weights as exact dyadic integers (built once per network, kept in ``net.meta``)."""

    def __init__(self, net: Network) -> None:
        if not net.is_relu_chain:
            raise ValueError("exact replay covers ReLU networks without pooling")
        self.layers = [_Layer(Dyadic.of(a.weight), Dyadic.of(a.bias)) for a in net.affines]

    @classmethod
    def of(cls, net: Network) -> ExactNetwork:
        cached = net.meta.get("_exact")
        if cached is None:
            cached = net.meta["_exact"] = cls(net)
        return cached


def replay_cost(net: Network, rows: int, hint: LayerBounds | None = None) -> int:
    """Integer multiply-adds of a replay (an upper estimate): the hidden neurons' bounds (with ``hint``, one row
    per neuron plus one per neuron it leaves unstable; without, two per neuron) and ``rows`` output rows, each
    substituted back to the input."""
    sizes = [a.weight.size for a in net.affines]
    total = rows * sum(sizes)
    for k in range(1, len(sizes) - 1):
        n = net.affines[k].weight.shape[0]
        count = 2 * n if hint is None else n + int(((hint.lower[k] < 0) & (hint.upper[k] > 0)).sum())
        total += count * sum(sizes[: k + 1])
    return total


def _backward(exact: ExactNetwork, k: int, rows: Dyadic, layers: list[_Relaxation], box: Dyadic,
              alphas: dict[int, np.ndarray] | None = None) -> Dyadic:  # fmt: skip
    """Exact lower bounds ``(m,)`` of ``rows @ z_k`` (``rows`` ``(m, n_k)``; ``k = len(layers)`` for the output)
    over the box (``box`` ``(2, n)``: lower and upper corner), given the relaxations of the layers below ``k``;
    ``alphas[j]`` ``(m, n_j)`` optional lower slopes for layer ``j`` (else CROWN's adaptive ones)."""
    coef = rows
    const = Dyadic(np.zeros(rows.num.shape[0], dtype=object), 0)
    for j in range(k, 0, -1):
        layer = exact.layers[j]
        const = const + coef @ layer.bias
        coef = coef @ layer.weight
        relax = layers[j - 1]
        if alphas is not None and (j - 1) in alphas:
            alpha = np.clip(alphas[j - 1], 0.0, 1.0)
        else:
            alpha = (relax.upper > -relax.lower).astype(np.float64)
        negative = coef.num < 0
        # a negative coefficient on an unstable neuron takes the upper line a <= s z - s l: it adds -coef s l
        taken = Dyadic(np.where(relax.unstable & negative, coef.num, 0), coef.exp)
        const = const + (taken * relax.intercept).sum(1)
        slope = np.where(
            relax.lower >= 0, 1.0, np.where(relax.unstable, np.where(negative, relax.slope, alpha), 0.0)
        )
        coef = coef * Dyadic.of(slope)
    const = const + coef @ exact.layers[0].bias
    coef = coef @ exact.layers[0].weight
    corner = Dyadic(np.where(coef.num > 0, box.num[0], box.num[1]), box.exp)
    return const + (coef * corner).sum(1)


def _interval(exact: ExactNetwork, k: int, low: np.ndarray, up: np.ndarray) -> tuple[Dyadic, Dyadic]:
    """Exact interval bounds of ``z_k`` from bounds ``[low, up]`` of its input."""
    w = exact.layers[k].weight
    pos = Dyadic(np.where(w.num > 0, w.num, 0), w.exp)
    neg = Dyadic(np.where(w.num < 0, w.num, 0), w.exp)
    a, b = Dyadic.of(low), Dyadic.of(up)
    bias = exact.layers[k].bias
    return pos @ a + neg @ b + bias, pos @ b + neg @ a + bias


def _tighten(exact: ExactNetwork, k: int, bound: Dyadic, index: np.ndarray, sign: float, layers: list[_Relaxation],
             box: Dyadic) -> Dyadic:  # fmt: skip
    """``bound`` (a lower bound of ``z_k`` if ``sign`` is 1, an upper one if -1) with the CROWN bound where
    better, at the neurons ``index``."""
    if not len(index):
        return bound
    rows = np.zeros((len(index), len(bound.num)))
    rows[np.arange(len(index)), index] = sign
    value = _backward(exact, k, Dyadic.of(rows), layers, box)
    if sign < 0:
        value = Dyadic(-value.num, value.exp)
    exp = max(bound.exp, value.exp)
    num = bound.aligned(exp).copy()
    old, new = num[index], value.aligned(exp)
    num[index] = np.where(new * int(sign) > old * int(sign), new, old)
    return Dyadic(num, exp)


@dataclass
class Replay:
    """Hidden-layer bounds recomputed exactly (stored rounded outwards to float64) over the box ``[lo, hi]``."""

    exact: ExactNetwork
    box: Dyadic
    layers: list[_Relaxation]

    @property
    def lower(self) -> list[np.ndarray]:
        return [layer.lower for layer in self.layers]

    @property
    def upper(self) -> list[np.ndarray]:
        return [layer.upper for layer in self.layers]

    def output_lower(self, spec: np.ndarray, alphas: dict[int, np.ndarray] | None = None) -> Dyadic:
        """Exact lower bounds ``(m,)`` of ``spec @ y`` (``spec`` ``(m, K)``)."""
        return _backward(self.exact, len(self.layers), Dyadic.of(spec), self.layers, self.box, alphas)

    def proves(
        self, spec: np.ndarray, threshold: np.ndarray, alphas: dict[int, np.ndarray] | None = None
    ) -> bool:
        """Whether some row's exact lower bound exceeds its ``threshold`` (with CROWN's slopes or ``alphas``)."""
        limit = Dyadic.of(threshold)
        for slopes in [None, alphas] if alphas else [None]:
            value = self.output_lower(spec, slopes)
            exp = max(value.exp, limit.exp)
            if bool(np.any(value.aligned(exp) > limit.aligned(exp))):
                return True
        return False


def replay(net: Network, lo: np.ndarray, hi: np.ndarray, hint: LayerBounds | None = None) -> Replay:
    """Every hidden pre-activation's bounds over ``[lo, hi]`` in exact arithmetic: interval and CROWN bounds
    intersected, layer by layer. CROWN runs only for the neurons the interval leaves unstable, and with the
    float64 bounds ``hint`` only on the sides that matter: a neuron ``hint`` calls active needs its exact lower
    bound, one it calls inactive its upper bound (the replay never trusts ``hint``'s values)."""
    exact = ExactNetwork.of(net)
    box = Dyadic.of(np.stack([lo, hi]))
    layers: list[_Relaxation] = []
    for k in range(len(net.affines) - 1):
        below_lo, below_hi = (
            (lo, hi) if k == 0 else (np.maximum(layers[-1].lower, 0.0), np.maximum(layers[-1].upper, 0.0))
        )
        low, up = _interval(exact, k, below_lo, below_hi)
        open_ = np.flatnonzero((low.num < 0) & (up.num > 0)) if k > 0 else np.zeros(0, dtype=np.int64)
        if len(open_):
            want_low = open_ if hint is None else open_[hint.upper[k][open_] > 0]
            want_up = open_ if hint is None else open_[hint.lower[k][open_] < 0]
            low = _tighten(exact, k, low, want_low, 1.0, layers, box)
            up = _tighten(exact, k, up, want_up, -1.0, layers, box)
        layers.append(_Relaxation.of(low.floor(), up.ceil()))
    return Replay(exact, box, layers)
