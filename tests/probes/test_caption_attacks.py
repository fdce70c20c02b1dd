"""caption-gan and caption-pgd: bounds, one-pass attacks, both modes end to end, determinism, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from robustcheck.api import RunContext, Table
from robustcheck.data.captions import CaptionDataset, digits_scenes
from robustcheck.errors import InputError, RequirementError, UsageError
from robustcheck.models.captioner import ImageCaptioner
from robustcheck.models.loading import load_model
from robustcheck.plugins import create_probe
from robustcheck.probes.captions.attacks import CaptionGAN, CaptionPGD
from robustcheck.probes.captions.gan import PerturbationGenerator, perturb
from robustcheck.probes.captions.goals import AttackBatch, plan_targets, project
from robustcheck.run.runner import Runner, RunSpec

SMALL_GAN = {
    "steps": 6,
    "batch_size": 8,
    "train_samples": 48,
    "epsilons": [16 / 255, 64 / 255],
    "examples": 2,
}


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: a second thread only adds contention


@pytest.fixture(scope="module")
def captioner() -> ImageCaptioner:
    model = load_model("digits-captioner")
    assert isinstance(model, ImageCaptioner)
    return model


@pytest.fixture(scope="module")
def scenes() -> CaptionDataset:
    return digits_scenes("test", n=10)


def test_generator_output_respects_eps_exactly() -> None:
    torch.manual_seed(0)
    gen = PerturbationGenerator(1, 8)
    with torch.no_grad():  # blow the last layer up so tanh saturates: the bound must still hold
        gen.out[-1].weight.mul_(1e4)
    x, target = torch.rand(6, 1, 16, 48), torch.rand(6, 1, 16, 48)
    eps = torch.tensor([0.0, 1 / 255, 8 / 255, 16 / 255, 0.1, 64 / 255])
    with torch.no_grad():
        delta = gen(x, target, eps)
        adv = perturb(gen, x, target, eps, (0.0, 1.0))
    assert delta.shape == x.shape
    assert (delta.abs().flatten(1).amax(1) <= eps).all()
    assert delta[0].abs().max() == 0.0 and delta[-1].abs().max() > 0.9 * eps[-1]  # saturates at eps
    # the adversarial stays in the ball (up to float rounding of x + delta - x) and in bounds, and is
    # x + delta wherever that is inside the bounds
    assert ((adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    inside = ((x + delta) >= 0) & ((x + delta) <= 1)
    assert torch.equal(adv[inside], (x + delta)[inside])
    assert torch.equal(project(x, x + 1.0, 0.1, (0.0, 1.0)), (x + 0.1).clamp(0, 1))


def test_targets_differ_from_clean_and_carry_the_keyword() -> None:
    clean = ["one two", "three four", "one two", "five six seven"]
    plan = plan_targets(clean, clean, torch.Generator().manual_seed(0), None)
    assert all(clean[int(j)] != c for j, c in zip(plan.target, clean, strict=True))
    for c, word, j in zip(clean, plan.keyword, plan.keyword_target, strict=True):
        assert word not in c.split() and word in clean[int(j)].split()
    again = plan_targets(clean, clean, torch.Generator().manual_seed(0), None)
    assert again.keyword == plan.keyword and (again.target == plan.target).all()  # seeded
    fixed = plan_targets(clean, clean, torch.Generator().manual_seed(0), "one")
    assert fixed.keyword_target[0] == -1 and fixed.keyword_target[1] in (0, 2)  # "one" is already in sample 0
    assert fixed.attacked("keyword").tolist() == [1, 3]
    with pytest.raises(InputError, match="two different captions"):
        plan_targets(["one two"] * 2, ["one two"] * 2, torch.Generator(), None)


def test_classifier_and_bad_params_are_refused(captioner: ImageCaptioner, scenes: CaptionDataset) -> None:
    classifier = load_model("digits-mlp")
    for probe in (create_probe("caption-gan"), create_probe("caption-pgd")):
        with pytest.raises(RequirementError, match="needs a captioner"):
            probe.check_requirements(classifier)
        with pytest.raises(RequirementError, match="needs a captioner"):
            probe.run(classifier, scenes, RunContext())
    with pytest.raises(UsageError, match="mode"):
        CaptionGAN(mode="sideways")
    with pytest.raises(UsageError, match="epsilons"):
        CaptionPGD(epsilons=[])
    with pytest.raises(UsageError, match="one word"):
        CaptionPGD(keyword="seven two")
    with pytest.raises(UsageError, match="not a word of captioner"):
        CaptionPGD(keyword="eleven", steps=1)(captioner, scenes)


def test_data_without_captions_is_refused(captioner: ImageCaptioner) -> None:
    from robustcheck.data.dataset import ImageDataset

    plain = ImageDataset(torch.rand(4, 1, 16, 48), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="has no captions"):
        CaptionPGD(steps=1)(captioner, plain)


def test_gan_both_modes_end_to_end_and_deterministic(
    captioner: ImageCaptioner, scenes: CaptionDataset
) -> None:
    probe = CaptionGAN(**SMALL_GAN)
    first = probe(captioner, scenes, seed=3)
    second = CaptionGAN(**SMALL_GAN)(captioner, scenes, seed=3)
    m = first.metrics
    assert first.status == "ok" and first.score == pytest.approx(1 - m["targeted_success"])
    for key in (
        "keyword_success",
        "bleu1_target",
        "bleu4_target",
        "bleu1_clean",
        "bleu4_clean",
        "l2",
        "linf",
    ):
        assert 0 <= m[key] <= (1 if "bleu" in key or "success" in key else 64), key
    assert m["transfer_model"] == "digits-captioner-b" and 0 <= m["transfer_targeted_success"] <= 1
    assert m["targeted_success_vs_eps"]["0"] == 0.0 and m["keyword_success_vs_eps"]["0"] == 0.0
    assert 0 < m["linf"] <= 64 / 255 + 1e-6 and first.records["linf"].max() <= 64 / 255 + 1e-6
    assert set(first.records["mode"]) == {"targeted", "keyword"}
    clean_rows = first.records[first.records["epsilon"] == 0]
    assert (clean_rows["l2"] == 0).all() and not clean_rows["success"].any()
    assert m["train_steps"] == 6 and m["ms_per_image"] > 0
    assert len(first.artifacts) == 4 and all(len(a.images) == 3 for a in first.artifacts)
    assert isinstance(first.tables[0], Table) and len(first.tables[0].frame) == 2
    json.dumps(m)  # metrics are plain JSON
    # same seed, same numbers
    assert first.metrics["targeted_success_vs_eps"] == second.metrics["targeted_success_vs_eps"]
    assert first.records["adversarial_caption"].tolist() == second.records["adversarial_caption"].tolist()
    assert first.records["l2"].tolist() == second.records["l2"].tolist()

    # at test time the trained generator attacks in one forward pass per batch, never running the encoder
    calls = {"generator": 0, "captioner": 0}
    hooks = [
        probe.generator.register_forward_hook(
            lambda *_: calls.__setitem__("generator", calls["generator"] + 1)
        ),
        captioner.module.register_forward_hook(
            lambda *_: calls.__setitem__("captioner", calls["captioner"] + 1)
        ),
    ]
    try:
        batch = AttackBatch(scenes.x[:5], scenes.x[5:], torch.empty(0), torch.ones_like)
        adv = probe.attack(captioner, batch, 64 / 255)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"generator": 1, "captioner": 0} and not adv.requires_grad
    assert (adv - scenes.x[:5]).abs().max() <= 64 / 255 + 1e-6


def test_pgd_steers_captions_and_rises_with_eps(captioner: ImageCaptioner, scenes: CaptionDataset) -> None:
    result = CaptionPGD(epsilons=[8 / 255, 64 / 255], steps=20, transfer_model=None, examples=1)(
        captioner, scenes, seed=0
    )
    m = result.metrics
    assert "transfer_targeted_success" not in m and "train_steps" not in m
    targeted, keyword = m["targeted_success_vs_eps"], m["keyword_success_vs_eps"]
    assert targeted["0"] == 0.0 and keyword["0"] == 0.0
    assert targeted["0.25098"] >= targeted["0.0313725"] and targeted["0.25098"] > 0
    assert keyword["0.25098"] >= targeted["0.25098"]
    assert result.records["linf"].max() <= 64 / 255 + 1e-6


def test_audit_runs_the_gan_through_the_runner(tmp_path) -> None:  # noqa: ANN001
    spec = RunSpec(
        model="digits-captioner",
        probe="caption-gan",
        params={**SMALL_GAN, "mode": "targeted", "steps": 2, "transfer_model": None},
        samples=6,
    )
    runner = Runner(tmp_path, quiet=True)
    outcomes = runner.run([spec])
    results = runner.write_outputs(outcomes, seed=0)
    run = results["runs"][0]
    assert run["status"] == "ok", run["message"]
    assert (
        run["data"] == "digits-scenes"
        and "targeted_success" in run["metrics"]
        and "keyword_success" not in run["metrics"]
    )
    assert (tmp_path / "report.html").is_file()
