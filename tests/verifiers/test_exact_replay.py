"""Exact replay of the bound step (robustcheck.verifiers.exact): exact numbers, sound bounds, honest messages."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from robustcheck.verifiers import crown, exact
from robustcheck.verifiers.bounds import crown_bounds
from robustcheck.verifiers.engine import Engine, FloatModel, Options
from robustcheck.verifiers.network import Affine, Network
from robustcheck.verifiers.vnnlib import robustness_property

pytestmark = pytest.mark.usefixtures("single_thread")


def random_net(sizes: list[int], seed: int) -> Network:
    rng = np.random.default_rng(seed)
    affines = [
        Affine.exact(
            (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)).astype(np.float32).astype(np.float64),
            (0.3 * rng.normal(size=n_out)).astype(np.float32).astype(np.float64),
            "random",
        )
        for n_in, n_out in itertools.pairwise(sizes)
    ]
    return Network(affines, (sizes[0],), f"random{seed}")


def value(d: exact.Dyadic) -> list[Fraction]:
    return [Fraction(int(n), 1 << d.exp) for n in d.num.reshape(-1)]


def test_dyadic_numbers_are_the_floats_exactly_and_round_outwards() -> None:
    floats = np.array([0.1, -1e-300, 5e-324, 3.0, -2.5e10, 0.0, 1 / 3])
    d = exact.Dyadic.of(floats)
    assert value(d) == [Fraction(float(f)) for f in floats]
    third = exact.Dyadic.of(np.array([1.0])) * exact.Dyadic.of(np.array([1 / 3]))
    total = exact.Dyadic.of(np.array([0.1])) + third  # 0.1 + fl(1/3): not a float
    assert Fraction(float(total.floor()[0])) <= value(total)[0] <= Fraction(float(total.ceil()[0]))
    assert total.floor()[0] < total.ceil()[0]
    with pytest.raises(ValueError, match="finite"):
        exact.Dyadic.of(np.array([np.inf]))


def test_upper_slopes_are_checked_exactly() -> None:
    rng = np.random.default_rng(0)
    low, up = -rng.uniform(1e-6, 3, 200), rng.uniform(1e-6, 3, 200)
    slopes = exact._upper_slopes(low, up)
    for s, lo, hi in zip(slopes, low, up, strict=True):
        assert Fraction(float(s)) * (Fraction(float(hi)) - Fraction(float(lo))) >= Fraction(float(hi))


@pytest.mark.parametrize("seed", range(4))
def test_replayed_bounds_hold_on_samples_and_match_float_crown(seed: int) -> None:
    net = random_net([12, 16, 16, 16, 4], seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, 12)
    lo, hi = x - 0.05, x + 0.05
    replayed = exact.replay(net, lo, hi)
    tnet = crown.TorchNet.of(net, lo, hi)
    floats = crown.compute_bounds(tnet, crown.root_domains(tnet))
    points = rng.uniform(lo, hi, size=(4000, 12))
    h = points
    for k, affine in enumerate(net.affines[:-1]):
        z = h @ affine.weight.T + affine.bias
        assert (z >= replayed.lower[k]).all() and (z <= replayed.upper[k]).all()
        # the same CROWN bounds, without the float64 rounding allowance
        np.testing.assert_allclose(replayed.lower[k], floats.lower[k][0].numpy(), atol=1e-6)
        np.testing.assert_allclose(replayed.upper[k], floats.upper[k][0].numpy(), atol=1e-6)
        h = np.maximum(z, 0.0)
    spec = np.eye(4)[1:] - np.eye(4)[0]
    low = replayed.output_lower(spec)
    outputs = net.forward(points) @ spec.T
    for r, bound in enumerate(value(low)):
        assert float(bound) <= outputs[:, r].min() + 1e-12
    np.testing.assert_allclose([float(v) for v in value(low)],
                               crown.backward(tnet, 3, torch.tensor(spec), floats).value[0].numpy(), atol=1e-6)  # fmt: skip


def math_below(x: Fraction) -> float:
    f = float(x)
    return f if Fraction(f) < x else math.nextafter(f, -math.inf)


def test_proves_compares_the_exact_bound_with_the_threshold() -> None:
    net = random_net([6, 8, 8, 3], 3)
    lo, hi = np.full(6, 0.2), np.full(6, 0.3)
    replayed = exact.replay(net, lo, hi)
    spec = np.array([[1.0, -1.0, 0.0]])
    bound = value(replayed.output_lower(spec))[0]
    below = np.array([math_below(bound)])
    assert replayed.proves(spec, below)
    assert not replayed.proves(spec, np.array([float(bound) + 1e-9]))
    # optimised slopes are a certificate too: any lower slope in [0, 1] is sound, so they can only help
    slopes = {k: np.full((1, 8), 0.5) for k in range(2)}
    assert replayed.proves(spec, below, slopes)


def test_hint_only_skips_sides_and_costs_less() -> None:
    net = random_net([10, 20, 20, 3], 5)
    lo, hi = np.full(10, 0.1), np.full(10, 0.25)
    full = exact.replay(net, lo, hi)
    hinted = exact.replay(net, lo, hi, crown_bounds(net, lo, hi))
    for k in range(2):
        # the sides a hint skips never decide anything: the same ReLUs are stable either way
        np.testing.assert_array_equal((full.lower[k] < 0) & (full.upper[k] > 0),
                                      (hinted.lower[k] < 0) & (hinted.upper[k] > 0))  # fmt: skip
    assert exact.replay_cost(net, 2, crown_bounds(net, lo, hi)) < exact.replay_cost(net, 2)


def test_engine_safe_by_bounds_says_whether_the_replay_confirmed_it() -> None:
    net = random_net([8, 12, 12, 3], 11)
    x = np.full(8, 0.5)
    label = int(np.argmax(net.forward(x[None])[0]))
    prop = robustness_property(x - 1e-3, x + 1e-3, label, 3)
    model = FloatModel.from_network(net)
    outcome = Engine(net, model, Options(timeout=30, semantics="real")).verify(prop)
    assert (outcome.status, outcome.stage) == ("safe", "bounds")
    assert "replayed in exact rational arithmetic" in outcome.message
    assert "replay" in outcome.stage_seconds
    off = Engine(net, model, Options(timeout=30, semantics="real", replay_ops=0)).verify(prop)
    assert off.status == "safe" and "exact replay off" in off.message
    small = Engine(net, model, Options(timeout=30, semantics="real", replay_ops=10)).verify(prop)
    assert small.status == "safe" and "exact replay skipped" in small.message


def test_a_disjunct_the_replay_does_not_confirm_goes_to_the_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    net = random_net([8, 12, 12, 3], 11)
    x = np.full(8, 0.5)
    label = int(np.argmax(net.forward(x[None])[0]))
    prop = robustness_property(x - 1e-3, x + 1e-3, label, 3)
    monkeypatch.setattr(exact.Replay, "proves", lambda self, spec, threshold, alphas=None: False)
    outcome = Engine(net, FloatModel.from_network(net), Options(timeout=30, semantics="real")).verify(prop)
    assert outcome.status == "safe" and outcome.stage == "z3"
    assert "replayed" not in outcome.message


def test_z3_safety_counts_the_verdicts_the_replay_confirmed() -> None:
    from robustcheck.data.builtin import digits
    from robustcheck.verifiers.z3_safety import Z3Safety
    from robustcheck.zoo import digits_mlp

    data = digits().sample(6, 0)
    on = Z3Safety(eps=0.02)(digits_mlp(), data, seed=0)
    safe = on.records["status"] == "safe"
    assert safe.any() and on.records.loc[safe & (on.records["stage"] == "bounds"), "replayed"].all()
    correct = int(on.records["correct"].sum())
    assert on.metrics["verified_replayed"] == pytest.approx(on.records["replayed"].eq(True).sum() / correct)
    off = Z3Safety(eps=0.02, replay_ops=0)(digits_mlp(), data, seed=0)
    assert off.metrics["verified"] == on.metrics["verified"] and off.metrics["verified_replayed"] == 0.0
