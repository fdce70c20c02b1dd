"""Intermediate bounds tightened by branch and bound (:mod:`robustcheck.verifiers.refine`): sound, exact when every
tree finishes, kept within their deadline, and used by the engine."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from robustcheck.verifiers import crown, encoding, engine, refine
from robustcheck.verifiers.bounds import LayerBounds, crown_bounds
from robustcheck.verifiers.engine import Engine, FloatModel, Options
from robustcheck.verifiers.network import Affine, Network
from robustcheck.verifiers.vnnlib import robustness_property


def deep_net(seed: int, width: int = 12, depth: int = 4, inputs: int = 5) -> Network:
    """A random ReLU MLP deep enough for CROWN's relaxation errors to compound."""
    rng = np.random.default_rng(seed)
    sizes = [inputs] + [width] * depth + [3]
    affines = [
        Affine.exact(
            rng.normal(size=(sizes[k + 1], sizes[k])) / np.sqrt(sizes[k]),
            rng.normal(size=sizes[k + 1]) * 0.1,
            f"fc{k}",
        )  # fmt: skip
        for k in range(len(sizes) - 1)
    ]
    return Network(affines, (inputs,), f"deep{seed}")


def root_bounds(net: Network, lo: np.ndarray, hi: np.ndarray) -> tuple[crown.TorchNet, crown.Domains]:
    tnet = crown.TorchNet.of(net, lo, hi)
    return tnet, crown.compute_bounds(tnet, crown.root_domains(tnet))


def exact_range(
    net: Network, k: int, j: int, lo: np.ndarray, hi: np.ndarray, doms: crown.Domains
) -> tuple[float, float]:
    """min / max of hidden layer ``k``'s pre-activation ``j`` over the box, by HiGHS MILP on the cut network."""
    prefix = Network(net.affines[: k + 1], net.input_shape)
    bounds = LayerBounds([t[0].numpy() for t in doms.lower[:k]], [t[0].numpy() for t in doms.upper[:k]])
    values = []
    for sign in (1.0, -1.0):
        spec = np.zeros((1, prefix.affines[-1].weight.shape[0]))
        spec[0, j] = sign
        result = encoding.milp_query(prefix, lo, hi, bounds, spec, np.array([1e9]), 60)
        assert result.status == "sat"  # the objective's minimiser (rhs is no constraint)
        values.append(float(prefix.forward(result.x[None])[0, j]))
    return values[0], values[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_bounds_contain_every_sampled_point_and_reach_the_milp_optimum(seed: int) -> None:
    net = deep_net(seed)
    lo, hi = np.full(5, -1.0), np.full(5, 1.0)
    tnet, root = root_bounds(net, lo, hi)
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [lo + (hi - lo) * rng.random((4000, 5)), np.where(rng.random((4000, 5)) < 0.5, lo, hi)]
    )
    for k in (1, 2):
        before = (root.lower[k][0].clone(), root.upper[k][0].clone())
        root, info = refine.refine_layer(tnet, root, k, time.monotonic() + 60)
        low, up = root.lower[k][0].numpy(), root.upper[k][0].numpy()
        z = net.pre_activations(x)[k]
        assert np.all(z >= low) and np.all(z <= up)
        assert np.all(low >= before[0].numpy()) and np.all(up <= before[1].numpy())
        assert info.neurons > 0 and info.width_after < info.width_before and info.seconds < 60
        # few ReLUs to split: the still unstable neurons' bounds come close to the MILP optima (measured: total
        # width 0.9-2.8 % above theirs; a finished tree's last bound is beta-CROWN's after a few Adam steps)
        refined_width = exact_width = 0.0
        for j in torch.nonzero((before[0] < 0) & (before[1] > 0)).flatten().tolist():
            exact_lo, exact_hi = exact_range(net, k, j, lo, hi, root)
            assert low[j] <= exact_lo + 1e-9 and up[j] >= exact_hi - 1e-9
            if exact_lo < 0 < exact_hi:
                refined_width += up[j] - low[j]
                exact_width += exact_hi - exact_lo
        assert exact_width > 0 and refined_width <= 1.05 * exact_width
        root = crown.compute_bounds(tnet, root, k + 1)


def test_refinement_keeps_its_deadline_and_stays_sound_when_cut_short() -> None:
    net = deep_net(3, width=40, depth=3, inputs=20)
    lo, hi = np.full(20, -1.0), np.full(20, 1.0)
    tnet, root = root_bounds(net, lo, hi)
    began = time.monotonic()
    out, info = refine.refine_layer(tnet, root, 2, began + 0.5)
    assert time.monotonic() - began < 1.5
    x = lo + (hi - lo) * np.random.default_rng(0).random((5000, 20))
    z = net.pre_activations(x)[2]
    assert np.all(z >= out.lower[2][0].numpy()) and np.all(z <= out.upper[2][0].numpy())
    assert np.all(out.lower[2][0].numpy() >= root.lower[2][0].numpy())


def test_layer_without_unstable_neurons_is_returned_unchanged() -> None:
    net = deep_net(4)
    x = np.zeros(5)
    tnet, root = root_bounds(net, x - 1e-6, x + 1e-6)
    out, info = refine.refine_layer(tnet, root, 1, time.monotonic() + 5)
    assert info.neurons == 0 and out is root


def test_engine_refines_only_what_a_first_branch_and_bound_pass_leaves_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = deep_net(4)
    model = FloatModel.from_network(net)
    x = np.zeros(5)
    label = int(net.forward(x[None])[0].argmax())
    prop = robustness_property(x - 0.2, x + 0.2, label, 3)
    base = dict(timeout=20, semantics="real", use_attack=False, threads=1)
    # alpha-CROWN leaves disjuncts open; the first branch and bound pass decides them: no refinement
    quick = Engine(net, model, Options(**base)).verify(prop)
    assert quick.status == "safe" and quick.stage == "z3" and "refine" not in quick.stage_seconds
    # with no time for that pass, refined intermediate bounds prove every disjunct on their own
    monkeypatch.setattr(engine, "QUICK_SHARE", 0.0)
    refined = Engine(net, model, Options(**base)).verify(prop)
    assert refined.status == "safe" and refined.stage == "bounds" and "refine" in refined.stage_seconds
    assert "layer(s) 1" in refined.message and "tightened by branch and bound" in refined.message
    assert not refined.replayed
    off = Engine(net, model, Options(refine_share=0.0, **base)).verify(prop)
    assert off.status == "safe" and off.stage == "z3" and "refine" not in off.stage_seconds
    # the verdict agrees with an independent exact solver on every disjunct
    bounds = crown_bounds(net, prop.lo, prop.hi)
    for spec, rhs in prop.disjuncts:
        assert encoding.milp_query(net, prop.lo, prop.hi, bounds, spec, rhs, 30).status == "unsat"
