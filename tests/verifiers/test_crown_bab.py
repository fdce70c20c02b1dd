"""alpha/beta-CROWN bounds, batched branch and bound, max pooling / sigmoid layers and the VNN-COMP runner."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA

from robustcheck.data.builtin import digits
from robustcheck.verifiers import bab, crown, encoding, vnncomp
from robustcheck.verifiers.bounds import LayerBounds, crown_bounds
from robustcheck.verifiers.engine import Engine, FloatModel, Options, auto_batch
from robustcheck.verifiers.extraction import from_classifier
from robustcheck.verifiers.network import Activation, Affine, MaxPool, Network, ReLU, canonicalize
from robustcheck.verifiers.vnnlib import robustness_property
from robustcheck.zoo import digits_mlp

VNNCOMP = SHARED_DATA / "vnncomp2021"


def random_net(seed: int, acts: tuple[str, ...] = ("relu", "relu"), pool: bool = False) -> Network:
    """A small random network; with ``pool`` the first hidden layer (8 units) is max-pooled in windows of 2."""
    rng = np.random.default_rng(seed)
    sizes = [4, 8, 6, 3]
    layers: list = []
    for k in range(3):
        layers.append(Affine.exact(rng.normal(size=(sizes[k + 1], sizes[k])), rng.normal(size=sizes[k + 1]) * 0.3, f"fc{k}"))
        if k < 2:
            kind = acts[k]
            layers.append(ReLU() if kind == "relu" else Activation(kind))
            if pool and k == 0:
                layers.append(MaxPool(np.arange(8).reshape(4, 2)))
                sizes[1] = 4
    if pool:  # the next layer now takes the 4 pooled values
        layers[3] = Affine.exact(rng.normal(size=(6, 4)), rng.normal(size=6) * 0.3, "fc1")
    return canonicalize(layers, (4,), 4, f"random{seed}")


def samples(lo: np.ndarray, hi: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = np.where(rng.random((count, len(lo))) < 0.5, lo, hi)
    return np.concatenate([lo + (hi - lo) * rng.random((count, len(lo))), corners])


@pytest.mark.parametrize(("acts", "pool"), [(("relu", "relu"), False), (("relu", "relu"), True),
                                             (("sigmoid", "tanh"), False), (("relu", "sigmoid"), True)])  # fmt: skip
def test_torch_crown_and_alpha_bounds_contain_every_sampled_point(acts: tuple[str, ...], pool: bool) -> None:
    for seed in range(4):
        net = random_net(seed, acts, pool)
        lo, hi = np.full(4, -1.0), np.full(4, 1.0)
        tnet = crown.TorchNet.of(net, lo, hi)
        doms = crown.compute_bounds(tnet, crown.root_domains(tnet))
        spec = torch.as_tensor(np.eye(3) - np.roll(np.eye(3), 1, axis=1))
        plain = crown.backward(tnet, tnet.hidden, spec, doms).value[0].numpy()
        tight, _, best = crown.optimize_intermediate(tnet, doms, spec, 15)
        x = samples(lo, hi, 3000, seed)
        for z, low, up in zip(net.pre_activations(x), tight.lower, tight.upper, strict=True):
            assert np.all(z >= low[0].numpy()) and np.all(z <= up[0].numpy())
        y = net.forward(x) @ spec.numpy().T
        assert np.all(y >= best[0].numpy()) and np.all(best[0].numpy() >= plain - 1e-9)


def reference_backward(tnet: crown.TorchNet, spec: torch.Tensor, doms: crown.Domains,
                       alphas: dict[int, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """CROWN's lower bound written out over every neuron of a ReLU chain (no rounding allowance): the plain
    formula the column-restricted, sparse :func:`crown.backward` must reproduce."""
    coef = spec.expand(doms.size, *spec.shape)
    const = torch.zeros(coef.shape[:-1], dtype=torch.float64)
    for k in range(tnet.hidden, -1, -1):
        const = const + coef @ tnet.biases[k]
        coef = coef @ tnet.weights[k]
        if k == 0:
            break
        low, up = doms.lower[k - 1][:, None, :], doms.upper[k - 1][:, None, :]
        unstable = (low < 0) & (up > 0)
        up_slope = torch.where(unstable, up / (up - low), (low >= 0).to(low.dtype))
        up_icpt = torch.where(unstable, -low * up / (up - low), torch.zeros_like(low))
        lo_slope = torch.where(unstable, alphas[k - 1].clamp(0, 1), (low >= 0).to(low.dtype))
        pos, neg = coef.clamp(min=0), coef.clamp(max=0)
        const = const + (neg * up_icpt).sum(-1)
        coef = pos * lo_slope + neg * up_slope
    return const + coef.clamp(min=0) @ tnet.lo + coef.clamp(max=0) @ tnet.hi


def test_sparse_column_restricted_backward_matches_the_plain_formula() -> None:
    rng = np.random.default_rng(0)
    # a 360 x 300 layer 3 % non-zero (stored as CSR: >= 100k entries, sparse enough) between two dense ones
    mask = rng.random((360, 300)) < 0.03
    layers = [Affine.exact(rng.normal(size=(300, 20)) * 0.3, rng.normal(size=300) * 0.1, "fc0"), ReLU(),
              Affine.exact(rng.normal(size=(360, 300)) * mask, rng.normal(size=360) * 0.1, "sparse"), ReLU(),
              Affine.exact(rng.normal(size=(4, 360)) * 0.2, rng.normal(size=4) * 0.1, "out")]  # fmt: skip
    net = canonicalize(layers, (20,), 20, "sparse-net")
    lo, hi = np.full(20, -0.3), np.full(20, 0.3)
    tnet = crown.TorchNet.of(net, lo, hi)
    assert tnet.sparse[1] is not None and tnet.sparse[0] is None and tnet.sparse[2] is None
    dense = crown.TorchNet.of(net, lo, hi)
    dense.sparse = []
    doms = crown.compute_bounds(tnet, crown.root_domains(tnet))
    assert all(((low < 0) & (up > 0)).any() for low, up in zip(doms.lower, doms.upper, strict=True))
    doms = doms.select(torch.zeros(3, dtype=torch.long))
    spec = torch.as_tensor(np.eye(4)[:2] - np.eye(4)[2:])
    alphas = {k: torch.rand((3, 2, n), dtype=torch.float64, generator=torch.Generator().manual_seed(k),
                            requires_grad=True) for k, n in enumerate(net.hidden_sizes)}  # fmt: skip
    value = crown.backward(tnet, tnet.hidden, spec, doms, alphas).value
    plain = reference_backward(tnet, spec, doms, alphas).detach()
    assert torch.all(value <= plain) and torch.allclose(value, plain, rtol=1e-6, atol=1e-6)
    assert torch.allclose(crown.backward(dense, dense.hidden, spec, doms, alphas).value, value, rtol=0, atol=1e-9)
    value.sum().backward()  # gradients reach the slopes through the CSR products
    assert all(a.grad is not None and bool(a.grad.abs().sum() > 0) for a in alphas.values())
    x = samples(lo, hi, 2000, 1)
    assert np.all(net.forward(x) @ spec.numpy().T >= value.detach().min(0).values.numpy())


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_smooth_relaxation_lines_enclose_the_function_on_wide_and_narrow_intervals(kind: str) -> None:
    gen = torch.Generator().manual_seed(1)
    centre = torch.randn(400, generator=gen, dtype=torch.float64) * 4
    width = torch.rand(400, generator=gen, dtype=torch.float64) ** 3 * 40
    low, up = centre - width / 2, centre + width / 2
    lo_s, lo_i, up_s, up_i = crown.smooth_relaxation(kind, low, up)
    z = low[:, None] + (up - low)[:, None] * torch.linspace(0, 1, 20001, dtype=torch.float64)
    f = torch.sigmoid(z) if kind == "sigmoid" else torch.tanh(z)
    assert torch.all(lo_s[:, None] * z + lo_i[:, None] <= f) and torch.all(f <= up_s[:, None] * z + up_i[:, None])
    # tighter than the constant band [min f, max f] (relative mean gap 1; tanh measured 0.56 here)
    gap = ((up_s - lo_s)[:, None] * z + (up_i - lo_i)[:, None]).mean(1)
    assert float(torch.median(gap / (f.amax(1) - f.amin(1) + 1e-9))) < 0.75


def test_maxpool_network_is_exact_in_z3_and_milp_and_matches_enumeration() -> None:
    net = random_net(3, pool=True)
    lo, hi = np.full(4, -0.5), np.full(4, 0.5)
    tnet = crown.TorchNet.of(net, lo, hi)
    doms = crown.compute_bounds(tnet, crown.root_domains(tnet))
    bounds = LayerBounds([t[0].numpy() for t in doms.lower], [t[0].numpy() for t in doms.upper])
    spec = np.array([[1.0, -1.0, 0.0]])
    grid = np.array(list(itertools.product(*[np.linspace(-0.5, 0.5, 9)] * 4)))
    best = float((net.forward(grid) @ spec.T).min())  # an upper estimate of the true minimum
    cache = encoding.Z3Network(net)
    # just above a value some grid point reaches: satisfiable (with a real solution); below the bound: not
    result = encoding.z3_query(cache, lo, hi, bounds, spec, np.array([best + 1e-6]), 20)
    assert result.status == "sat" and float((net.forward(result.x[None]) @ spec[0])[0]) <= best + 1e-6 + 1e-9
    assert encoding.milp_query(net, lo, hi, bounds, spec, np.array([best + 1e-3]), 20).status == "sat"
    floor = float(crown.backward(tnet, tnet.hidden, torch.as_tensor(spec), doms).value[0, 0])
    assert encoding.z3_query(cache, lo, hi, bounds, spec, np.array([floor - 1e-3]), 20).status == "unsat"
    assert encoding.milp_query(net, lo, hi, bounds, spec, np.array([floor - 1e-3]), 20).status == "unsat"


@pytest.mark.parametrize("candidates", [1, 4])
def test_branch_and_bound_agrees_with_milp_on_digits_mlp(candidates: int) -> None:
    model, data = digits_mlp(), digits()
    net = from_classifier(model)
    agreed = 0
    for i in range(3):
        x = data.x[i].reshape(-1).double().numpy()
        lo, hi = np.clip(x - 0.06, 0, 1), np.clip(x + 0.06, 0, 1)
        tnet = crown.TorchNet.of(net, lo, hi)
        root = crown.compute_bounds(tnet, crown.root_domains(tnet))
        bounds = crown_bounds(net, lo, hi)
        for spec, rhs in robustness_property(lo, hi, int(data.y[i]), 10).disjuncts:
            result = bab.branch_and_bound(tnet, root, spec, rhs, time.monotonic() + 20,
                                          bab.BabOptions(candidates=candidates), point_check=lambda p, s=spec, r=rhs: np.max(net.forward(p) @ s.T - r, axis=1))  # fmt: skip
            exact = encoding.milp_query(net, lo, hi, bounds, spec, rhs, 20)
            if "unknown" in (result.status, exact.status):
                continue
            assert result.status == exact.status
            if result.status == "sat":
                assert np.all(net.forward(result.x[None]) @ spec.T <= rhs + 1e-9)
            agreed += 1
    assert agreed >= 20


@pytest.mark.parametrize("batch", [1, 7, 512])
def test_branch_and_bound_verdicts_do_not_depend_on_the_batch_size(batch: int) -> None:
    model, data = digits_mlp(), digits()
    net = from_classifier(model)
    x = data.x[2].reshape(-1).double().numpy()
    lo, hi = np.clip(x - 0.08, 0, 1), np.clip(x + 0.08, 0, 1)
    tnet = crown.TorchNet.of(net, lo, hi)
    root = crown.compute_bounds(tnet, crown.root_domains(tnet))
    bounds = crown_bounds(net, lo, hi)
    for spec, rhs in robustness_property(lo, hi, int(data.y[2]), 10).disjuncts:
        result = bab.branch_and_bound(tnet, root, spec, rhs, time.monotonic() + 20, bab.BabOptions(batch=batch),
                                      point_check=lambda p, s=spec, r=rhs: np.max(net.forward(p) @ s.T - r, axis=1))  # fmt: skip
        assert result.status == encoding.milp_query(net, lo, hi, bounds, spec, rhs, 20).status


def test_auto_batch_grows_for_small_networks_and_keeps_64_for_wide_ones() -> None:
    def mlp(width: int) -> Network:
        return Network([Affine.exact(np.ones((width, 4)), np.zeros(width), "a"),
                        Affine.exact(np.ones((2, width)), np.zeros(2), "b")], (4,))  # fmt: skip

    small, wide = mlp(10), mlp(20_000)
    assert auto_batch(small) == 512 and auto_batch(wide) == 64
    assert auto_batch(from_classifier(digits_mlp())) > 64


def test_engine_decides_maxpool_and_refuses_to_guess_on_sigmoid() -> None:
    net = random_net(5, pool=True)
    model = FloatModel.from_network(net)
    x = np.zeros(4)
    label = int(net.forward(x[None])[0].argmax())
    for eps in (0.01, 0.3, 2.0):
        prop = robustness_property(x - eps, x + eps, label, 3)
        outcome = Engine(net, model, Options(timeout=20)).verify(prop)
        brute = samples(prop.lo, prop.hi, 20000, 0)
        found = bool((net.forward(brute).argmax(1) != label).any())
        assert outcome.status in ("safe", "unsafe")
        if found:
            assert outcome.status == "unsafe"
        if outcome.status == "unsafe":
            assert int(np.argmax(model(outcome.counterexample[None])[0])) != label
    smooth = random_net(6, ("sigmoid", "sigmoid"))
    label = int(smooth.forward(x[None])[0].argmax())
    prop = robustness_property(x - 3.0, x + 3.0, label, 3)
    outcome = Engine(smooth, FloatModel.from_network(smooth), Options(timeout=5, use_attack=False)).verify(prop)
    brute = samples(prop.lo, prop.hi, 20000, 1)
    if (smooth.forward(brute).argmax(1) != label).any():
        assert outcome.status != "safe"


def test_instances_csv_run_writes_results_and_fails_on_a_contradicted_reference(tmp_path: Path) -> None:
    test = SHARED_DATA / "vnncomp-test"
    if not test.exists():
        pytest.skip("shared VNN-COMP test networks are absent")
    csv = tmp_path / "instances.csv"
    csv.write_text("benchmark,onnx,vnnlib,timeout_s,reference\n"
                   f"test,{test / 'test_sat.onnx'},{test / 'test_prop.vnnlib'},30,violated\n"
                   f"test,{test / 'test_unsat.onnx'},{test / 'test_prop.vnnlib'},30,holds\n")  # fmt: skip
    results = vnncomp.run_instances(vnncomp.read_instances(csv), Options(semantics="real"), tmp_path / "out")
    assert [r.verdict for r in results] == ["sat", "unsat"] and not any(r.wrong for r in results)
    assert all(r.result_file is not None and r.result_file.read_text().split()[0] == r.verdict for r in results)
    summary = vnncomp.summarize(results)
    assert sum(s.correct for s in summary) == 2
    # the unsat comes from the bounds, replayed exactly (the sat one has nothing to replay)
    assert [r.replayed for r in results] == [False, True] and sum(s.replayed for s in summary) == 1
    # a reference that disagrees makes the CLI exit 1
    csv.write_text(csv.read_text().replace(",30,holds", ",30,violated"))
    done = subprocess.run([sys.executable, "-m", "robustcheck.cli.main", "verify", "--instances", str(csv),
                           "--results-dir", str(tmp_path / "cli")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "contradict" in done.stdout and (tmp_path / "cli" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist_spec_idx_8098_eps", "prop_0_0.004", "prop_2_0.04", "img1697-eps",
                                  "mnist_spec_idx_7167_eps_0.012", "img8406-eps"])  # fmt: skip
def test_real_dev_set_instances_are_decided_correctly_on_time(name: str, tmp_path: Path) -> None:
    if not (VNNCOMP / "instances.csv").exists():
        pytest.skip("the VNN-COMP 2021 dev set is absent")
    chosen = [i for i in vnncomp.read_instances(VNNCOMP / "instances.csv") if name in i.vnnlib.name][:1]
    result = vnncomp.run_instances(chosen, Options(semantics="real"), tmp_path, timeout=120)[0]
    assert not result.wrong and result.seconds < 120 * 1.05
    if name in ("mnist_spec_idx_7167_eps_0.012", "img8406-eps"):  # the sigmoid MLP, cifar_deep: decided in ~1 s
        assert result.correct, result.message
    assert result.correct, result.message
