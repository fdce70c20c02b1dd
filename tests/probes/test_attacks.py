"""robustcheck.probes.foolbox_attacks: the foolbox probes, their metrics, re-check and foolbox traps."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robustcheck.api import Artifact, Defense, RunContext
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.loading import load_data
from robustcheck.errors import InputError, ProbeTimeout, RequirementError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.ops.metrics import epsilon_key
from robustcheck.plugins import create_defense, create_probe
from robustcheck.probes import foolbox_attacks
from robustcheck.probes.foolbox_attacks import FoolboxAttack

N = 16
LINF = [0.0, 0.05, 0.1, 0.2]
L2 = [0.0, 0.5, 1.0, 2.0]
#: each probe with few steps and an epsilon grid that fools some, but not all, samples of digits-mlp
PROBES: dict[str, dict[str, Any]] = {
    "fgsm": {"epsilons": LINF},
    "pgd-linf": {"epsilons": LINF, "steps": 10, "rel_stepsize": 0.25},
    "pgd-l2": {"epsilons": L2, "steps": 10, "rel_stepsize": 0.25},
    "deepfool": {"epsilons": L2, "steps": 10},
    "cw-l2": {"epsilons": L2, "steps": 20, "binary_search_steps": 3, "stepsize": 0.05},
    "boundary": {"epsilons": L2, "steps": 30},
}
RECORD_COLUMNS = [
    "index",
    "label",
    "prediction",
    "confidence",
    "correct",
    "min_epsilon",
    "adv_prediction",
    "adv_confidence",
    "perturbation",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds contention (10x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_data("digits").head(N)


@pytest.fixture
def mlp() -> ImageClassifier:
    return load_model("digits-mlp")


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every ``_attack`` call: the surrogate it crafted on, the inputs and the adversarials."""
    calls: list[dict[str, Any]] = []
    original = FoolboxAttack._attack

    def spy(self, surrogate, x, y, shown=None):
        clipped, success = original(self, surrogate, x, y, shown)
        calls.append({"surrogate": surrogate, "x": x, "y": y, "clipped": clipped, "success": success})
        return clipped, success

    monkeypatch.setattr(FoolboxAttack, "_attack", spy)
    return calls


# ---------------------------------------------------------------------------------------------------
# every probe: metrics, records, artifacts, and an independent re-check of the adversarials
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_results_are_consistent(
    name: str, mlp: ImageClassifier, digits: ImageDataset, captured: list
) -> None:
    params = PROBES[name]
    probe = create_probe(name, **params)
    result = probe(mlp, digits, seed=0, batch_size=10)  # two batches: 10 + 6
    epsilons = params["epsilons"]
    metrics = result.metrics

    assert result.status == "ok" and result.seed == 0 and result.seconds > 0
    assert 0.0 <= result.score <= 1.0 and result.score == metrics["auc"]
    assert metrics["samples"] == N and metrics["norm"] == probe.norm and metrics["adaptive"] is None
    assert list(metrics["robust_accuracy"]) == [epsilon_key(e) for e in epsilons]
    curve = list(metrics["robust_accuracy"].values())
    assert curve[0] == metrics["clean_accuracy"]  # eps = 0 changes nothing
    assert all(a >= b for a, b in zip(curve, curve[1:], strict=False)), curve  # non-increasing
    assert curve[-1] < curve[0], f"{name} fooled nobody: the test grid is too small"
    assert metrics["foolbox_disagreements"] == 0

    records = result.records
    gradient = "gradients" in probe.requires  # gradient attacks record whether each input gradient is all zero
    assert list(records.columns) == RECORD_COLUMNS + (["zero_gradient"] if gradient else []) and len(records) == N
    assert ("zero_gradient_fraction" in metrics) is gradient and metrics["bounds"] == [0.0, 1.0]
    if gradient:
        assert not records["zero_gradient"].any() and metrics["zero_gradient_fraction"] == 0.0
    assert records["index"].tolist() == list(range(N)) and records["label"].tolist() == digits.y.tolist()
    assert records["confidence"].between(0, 1).all() and records["adv_confidence"].between(0, 1).all()

    # independent re-check, from the adversarials foolbox produced
    assert len(captured) == 2 and all(c["surrogate"] is mlp for c in captured)
    clipped = torch.cat([c["clipped"] for c in captured], dim=1)
    assert clipped.shape == (len(epsilons), N, *digits.shape)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    p = 2 if probe.norm == "l2" else math.inf
    for k, eps in enumerate(epsilons):
        norms = (clipped[k] - digits.x).flatten(1).norm(p=p, dim=1)
        assert (norms <= eps + 1e-4).all(), (eps, norms.max())
    with torch.no_grad():
        clean = mlp(digits.x).argmax(1)
        adv = torch.stack([mlp(clipped[k]).argmax(1) for k in range(len(epsilons))])
    correct = clean == digits.y
    assert (
        records["prediction"].tolist() == clean.tolist() and records["correct"].tolist() == correct.tolist()
    )
    held = (correct & (adv == digits.y)).numpy()
    robust = np.logical_and.accumulate(held, axis=0)
    assert curve == pytest.approx(robust.mean(axis=1).tolist())
    for i, row in records.iterrows():
        broken = np.flatnonzero(~held[:, i])
        k = int(broken[0]) if len(broken) else len(epsilons) - 1
        assert row["adv_prediction"] == int(adv[k, i])
        if len(broken):
            assert row["min_epsilon"] == epsilons[k]
        else:
            assert math.isnan(row["min_epsilon"])
        assert row["perturbation"] == pytest.approx(float((clipped[k, i] - digits.x[i]).norm(p=p)), abs=1e-5)
    fooled = correct.numpy() & ~robust[-1]
    assert metrics["attack_success_rate"] == pytest.approx(fooled.sum() / correct.sum().item())

    # artifacts: clean / adversarial / perturbation for the first fooled samples
    expected = records[records["correct"] & records["min_epsilon"].notna()].head(4)
    assert len(result.artifacts) == len(expected) > 0
    for artifact, (_, row) in zip(result.artifacts, expected.iterrows(), strict=True):
        assert isinstance(artifact, Artifact) and artifact.title.startswith(f"sample {row['index']} ")
        assert len(artifact.images) == len(artifact.captions) == 3
        adv_image = torch.from_numpy(artifact.images[1])
        assert int(mlp(adv_image[None]).argmax()) == row["adv_prediction"] != row["label"]
        assert all(img.shape == digits.shape and img.min() >= 0 and img.max() <= 1 for img in artifact.images)
        assert len(artifact.png_images()) == 3


def test_same_seed_same_result(mlp: ImageClassifier, digits: ImageDataset) -> None:
    probe = create_probe("pgd-linf", **PROBES["pgd-linf"])
    a, b = probe(mlp, digits, seed=3), probe(mlp, digits, seed=3)
    assert a.metrics == b.metrics
    assert a.records.equals(b.records)


def test_pgd_linf_with_enough_steps_is_at_least_as_strong_as_fgsm(
    mlp: ImageClassifier, digits: ImageDataset
) -> None:
    fgsm = create_probe("fgsm", epsilons=LINF)(mlp, digits, seed=0).metrics["robust_accuracy"]
    pgd = create_probe("pgd-linf", epsilons=LINF, steps=40, rel_stepsize=0.1, random_start=False)(
        mlp, digits, seed=0
    )
    for key, value in pgd.metrics["robust_accuracy"].items():
        assert value <= fgsm[key]


def test_probe_on_a_normalised_cnn() -> None:
    model = load_model("digits-cnn")
    data = load_data("digits-rgb32").head(8)
    result = create_probe("pgd-linf", epsilons=[0, 0.1], steps=5)(model, data, seed=0)
    assert result.metrics["clean_accuracy"] == 1.0 and result.metrics["robust_accuracy"]["0.1"] < 1.0


# ---------------------------------------------------------------------------------------------------
# foolbox traps
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pgd-linf", "deepfool"])
def test_parameters_and_modes_are_left_untouched(
    name: str, mlp: ImageClassifier, digits: ImageDataset
) -> None:
    params = list(mlp.parameters())
    params[-1].requires_grad_(False)
    mlp.train()
    mlp.module[1].eval()  # mixed modes
    modes = {n: m.training for n, m in mlp.named_modules()}
    weights = [p.detach().clone() for p in params]
    create_probe(name, **PROBES[name])(mlp, digits, seed=0)
    assert all(p.grad is None for p in params)
    assert [p.requires_grad for p in params] == [True] * (len(params) - 1) + [False]
    assert {n: m.training for n, m in mlp.named_modules()} == modes
    assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=True))


def test_model_in_training_mode_is_attacked_in_eval_mode(digits: ImageDataset) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.9), nn.Linear(32, 10))
    model = ImageClassifier(net, input_shape=(1, 8, 8), name="dropout")
    assert model.training
    a = create_probe("fgsm", epsilons=[0.0, 0.1])(model, digits, seed=0)
    b = create_probe("fgsm", epsilons=[0.0, 0.1])(model, digits, seed=1)
    assert a.records.equals(b.records)  # no dropout noise: the seed does not matter
    assert model.training and net[3].training


def test_inputs_outside_the_model_bounds(mlp: ImageClassifier, digits: ImageDataset) -> None:
    wide = ImageDataset(digits.x * 2, digits.y, digits.classes, name="x2", bounds=(0.0, 2.0))
    with pytest.raises(
        InputError, match=r"input values lie in \[0, 2\], outside the bounds \[0, 1\] of model 'digits-mlp'"
    ):
        create_probe("fgsm")(mlp, wide, seed=0)
    probe = create_probe("boundary", steps=5)
    with pytest.raises(InputError, match=r"outside the bounds \[0, 1\]"):
        probe._attack(mlp, digits.x - 0.5, digits.y)
    # what slips past the range check (NaN) still ends as an InputError, not foolbox's bare AssertionError
    bad = digits.x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(
        InputError, match=r"foolbox rejected the inputs of probe 'pgd-linf'.*model bounds \[0, 1\]"
    ):
        create_probe("pgd-linf")._attack(mlp, bad, digits.y)


def test_import_foolbox_under_warnings_as_errors() -> None:
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "from robustcheck.probes._foolbox import import_foolbox, foolbox_version\n"
        "fb = import_foolbox()\n"
        "assert fb.__version__ == foolbox_version(), (fb.__version__, foolbox_version())\n"
        "print('ok', callable(fb.attacks.LinfPGD), callable(fb.PyTorchModel))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GIT_PYTHON_REFRESH"}
    env["PATH"] = os.path.dirname(sys.executable)  # no git on PATH: GitPython's import-time trap
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok True True"


def test_boundary_attack_survives_samples_without_an_adversarial_start(digits: ImageDataset) -> None:
    class AlwaysZeroUnlessBright(nn.Module):
        """Class 0 everywhere except for a few pixels: random noise never leaves class 0 for label-0 samples."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), 10, device=x.device) + 0 * self.scale
            logits[:, 0] = 1.0
            return logits + torch.nn.functional.one_hot(
                torch.zeros(len(x), dtype=torch.long), 10
            ) * 0.0 * x.flatten(1).sum(1, True)

    model = ImageClassifier(AlwaysZeroUnlessBright(), input_shape=(1, 8, 8), name="const")
    result = create_probe("boundary", steps=5, epsilons=[0.0, 1.0])(model, digits, seed=0)
    zeros = int((digits.y == 0).sum())
    assert zeros > 0
    assert result.metrics["clean_accuracy"] == zeros / N
    assert result.metrics["robust_accuracy"] == {
        "0": zeros / N,
        "1": zeros / N,
    }  # label-0 samples cannot be fooled


def test_timeout_reports_what_finished(mlp: ImageClassifier, digits: ImageDataset) -> None:
    probe = create_probe("fgsm", epsilons=[0.0, 0.1])
    with pytest.raises(ProbeTimeout, match="before the first batch"):
        probe(mlp, digits, deadline=time.monotonic() - 1)
    context = RunContext(batch_size=6)
    context.progress = lambda n: setattr(context, "deadline", time.monotonic() - 1)  # spent after one batch
    result = probe.run(mlp, digits, context)
    assert result.status == "timeout" and "6 of 16 samples attacked" in result.message
    assert result.metrics["samples"] == 6 and len(result.records) == 6


# ---------------------------------------------------------------------------------------------------
# defenses
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adaptive", [True, False])
def test_adaptive_and_non_adaptive_attacks_on_a_defense(
    adaptive: bool, mlp: ImageClassifier, digits: ImageDataset, captured: list
) -> None:
    defended = create_defense("bit-depth:bits=3").apply(mlp)
    probe = create_probe("pgd-linf", adaptive=adaptive, **PROBES["pgd-linf"])
    result = probe(defended, digits, seed=0, bare_model=mlp)
    assert result.metrics["adaptive"] is adaptive
    assert [c["surrogate"] for c in captured] == [defended if adaptive else mlp]
    # the re-check runs the defended model on what was crafted
    clipped = captured[0]["clipped"]
    with torch.no_grad():
        adv = torch.stack([defended(c).argmax(1) for c in clipped])
    correct = torch.tensor(result.records["correct"].tolist())
    expected = np.logical_and.accumulate((correct & (adv == digits.y)).numpy(), axis=0).mean(axis=1)
    assert list(result.metrics["robust_accuracy"].values()) == pytest.approx(expected.tolist())
    if not adaptive:
        assert result.metrics["foolbox_disagreements"] == 0  # not counted: foolbox judged the bare model
    assert all(p.grad is None and p.requires_grad for p in mlp.parameters())


def test_median_filter_defense_runs(mlp: ImageClassifier, digits: ImageDataset) -> None:
    defended = create_defense("median-filter").apply(mlp)
    result = create_probe("fgsm", epsilons=[0.0, 0.1])(defended, digits, seed=0, bare_model=mlp)
    assert 0.0 <= result.score <= 1.0


class Opaque(Defense):
    """A non-differentiable transform (no gradients at all)."""

    name = "opaque"
    gradients = "none"

    def transform(self, model: ImageClassifier) -> nn.Module:
        return nn.Identity()


def test_gradient_attacks_need_gradients(mlp: ImageClassifier, digits: ImageDataset) -> None:
    defended = Opaque().apply(mlp)
    with pytest.raises(
        RequirementError, match="probe 'pgd-linf' needs gradients.*model 'digits-mlp\\+opaque'"
    ):
        create_probe("pgd-linf")(defended, digits, seed=0)
    with pytest.raises(UsageError, match="needs gradients"):
        create_probe("deepfool")(defended, digits)
    result = create_probe("boundary", steps=5, epsilons=[0.0, 2.0])(defended, digits.head(4), seed=0)
    assert result.status == "ok"


# ---------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        (
            "fgsm",
            {"epsilons": [-1]},
            r"probe 'fgsm': parameter 'epsilons' must be a non-empty list of numbers >= 0, got \[-1\]",
        ),
        ("pgd-linf", {"epsilons": [0.1, -0.01]}, "numbers >= 0"),
        ("pgd-l2", {"epsilons": []}, "non-empty"),
        ("pgd-linf", {"epsilons": [0, float("nan")]}, "'epsilons' must be a non-empty list of numbers"),
        ("pgd-l2", {"epsilons": [float("inf")]}, "'epsilons' must be a non-empty list of numbers"),
        ("pgd-linf", {"step": 3}, r"has no parameter 'step' \(did you mean 'steps'\?\)"),
        ("deepfool", {"bogus": 1}, "has no parameter 'bogus'"),
        ("pgd-linf", {"steps": "many"}, "'steps' must be an integer >= 1"),
        ("fgsm", {"epsilons": ["a"]}, "must be a non-empty list of numbers"),
        ("boundary", {"adaptive": "yes"}, "'adaptive' must be true or false"),
    ],
)
def test_bad_parameters(name: str, params: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        create_probe(name, **params)


@pytest.mark.parametrize(
    ("name", "epsilons", "match"),
    [
        (
            "pgd-linf",
            [0, 1e9],
            r"probe 'pgd-linf': epsilon 1e\+09 is outside the range of model 'digits-mlp' \(bounds \[0, 1\]\): "
            r"an Linf epsilon above high - low = 1 is meaningless; use epsilons <= 1$",
        ),
        ("fgsm", [0, 0.1, 1.01], r"probe 'fgsm': epsilon 1.01 is outside the range"),
        (
            "pgd-l2",
            [0, 8.01],
            r"probe 'pgd-l2': epsilon 8.01 .*: an L2 radius above \(high - low\) \* sqrt\(C\*H\*W\) = 8 "
            r"for inputs \(1, 8, 8\) is meaningless; use epsilons <= 8$",
        ),
        ("deepfool", [0, 1e9], r"probe 'deepfool': epsilon 1e\+09 is outside the range"),
        ("boundary", [0, 100], r"probe 'boundary': epsilon 100 is outside the range"),
    ],
)
def test_epsilons_beyond_the_bounds_range_are_refused(
    name: str, epsilons: list[float], match: str, mlp: ImageClassifier, digits: ImageDataset
) -> None:
    probe = create_probe(name, epsilons=epsilons)
    with pytest.raises(UsageError, match=match):
        probe.check_requirements(mlp)
    with pytest.raises(UsageError, match=match):
        probe(mlp, digits, seed=0)
    # the runner refuses before any run
    from robustcheck.run.runner import Runner, RunSpec

    with pytest.raises(UsageError, match=match):
        Runner(None, quiet=True).check([RunSpec("digits-mlp", name, params={"epsilons": epsilons}, samples=4)])


def test_epsilons_up_to_the_bounds_range_are_accepted(mlp: ImageClassifier, digits: ImageDataset) -> None:
    create_probe("pgd-linf", epsilons=[0, 1.0]).check_requirements(mlp)
    create_probe("pgd-l2", epsilons=[0, 8.0]).check_requirements(mlp)
    wide = ImageClassifier(mlp.module, bounds=(0, 255), input_shape=(1, 8, 8), name="wide")
    create_probe("fgsm", epsilons=[0, 8, 255]).check_requirements(wide)
    # L2 without a declared input shape: checked against the data's shape when the probe runs
    shapeless = ImageClassifier(mlp.module, name="shapeless")
    probe = create_probe("pgd-l2", epsilons=[0, 9.0])
    probe.check_requirements(shapeless)
    with pytest.raises(UsageError, match=r"= 8 for inputs \(1, 8, 8\)"):
        probe(shapeless, digits, seed=0)


class RoundedInput(nn.Module):
    """``model(round(4x) / 4)``: the gradient of round is zero, so attacks see a flat loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 4) / 4)


@pytest.mark.parametrize("name", ["fgsm", "deepfool"])
def test_zero_input_gradients_are_recorded(name: str, mlp: ImageClassifier, digits: ImageDataset) -> None:
    rounded = ImageClassifier(RoundedInput(mlp), input_shape=(1, 8, 8), name="rounded")
    params = PROBES[name]
    result = create_probe(name, **params)(rounded, digits, seed=0)
    assert result.records["zero_gradient"].tolist() == [True] * N and result.metrics["zero_gradient_fraction"] == 1.0
    # a differentiable model, and the same model through a straight-through (BPDA) defense: no zero gradients
    defended = create_defense("bit-depth:bits=3").apply(mlp)
    result = create_probe(name, **params)(defended, digits, seed=0, bare_model=mlp)
    assert not result.records["zero_gradient"].any() and result.metrics["zero_gradient_fraction"] == 0.0
    # the boundary attack uses no gradients: nothing to record
    assert "zero_gradient" not in create_probe("boundary", **PROBES["boundary"])(rounded, digits.head(4), seed=0).records


def test_zero_gradients_merge_across_shards(mlp: ImageClassifier, digits: ImageDataset) -> None:
    probe = create_probe("fgsm", epsilons=[0.0, 0.1])
    whole = probe(mlp, digits, seed=0)
    parts = [probe(mlp, digits.subset(torch.arange(a, b)), seed=0) for a, b in ((0, 10), (10, N))]
    merged = probe.merge(parts, [0, 10])
    assert merged.metrics == whole.metrics and merged.records.equals(whole.records)


def test_parameters_from_a_spec() -> None:
    probe = create_probe("pgd-linf:steps=3,epsilons=[8/255,0,2/255]")
    assert probe.params["steps"] == 3 and probe.params["epsilons"] == [0.0, 2 / 255, 8 / 255]  # sorted
    assert probe.params["adaptive"] is True and probe.params["examples"] == 4
    assert isinstance(probe, foolbox_attacks.PGDLinf) and probe.name == "pgd-linf"
    assert create_probe("boundary").requires == frozenset()
    assert create_probe("cw-l2").requires == frozenset({"gradients"})
