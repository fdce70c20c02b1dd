"""caption-gan and caption-pgd: bounds, both modes end to end, determinism, refusal of classifiers."""

from __future__ import annotations

import json

import pytest
import torch

from robustcheck.api import Table
from robustcheck.attacks.caption_attacks import CaptionGAN, CaptionPGD, PerturbationGenerator, plan_targets
from robustcheck.captioning import CaptionDataset, digits_scenes
from robustcheck.errors import InputError, RequirementError, UsageError
from robustcheck.loading import create_probe, load_model
from robustcheck.runner import Runner, RunSpec

SMALL_GAN = {
    "steps": 12,
    "batch_size": 16,
    "train_samples": 100,
    "epsilons": [16 / 255, 64 / 255],
    "examples": 2,
}


@pytest.fixture(scope="module")
def captioner():  # noqa: ANN201 - an ImageCaptioner
    return load_model("digits-captioner")


@pytest.fixture(scope="module")
def scenes() -> CaptionDataset:
    return digits_scenes("test", n=12)


def test_generator_output_respects_eps_exactly() -> None:
    torch.manual_seed(0)
    gen = PerturbationGenerator(1, 8)
    with torch.no_grad():  # blow the last layer up so tanh saturates: the bound must still hold
        gen.out[-1].weight.mul_(1e4)
    x, target = torch.rand(6, 1, 16, 48), torch.rand(6, 1, 16, 48)
    eps = torch.tensor([0.0, 1 / 255, 8 / 255, 16 / 255, 0.1, 64 / 255])
    delta = gen(x, target, eps)
    assert delta.shape == x.shape
    assert (delta.abs().flatten(1).amax(1) <= eps).all()
    assert delta[0].abs().max() == 0.0 and delta[-1].abs().max() > 0.9 * eps[-1]


def test_targets_differ_from_clean_and_carry_the_keyword() -> None:
    clean = ["one two", "three four", "one two", "five six seven"]
    plan = plan_targets(clean, clean, torch.Generator().manual_seed(0), None)
    assert all(clean[int(j)] != c for j, c in zip(plan.target, clean, strict=True))
    for c, word, j in zip(clean, plan.keyword, plan.keyword_target, strict=True):
        assert word not in c.split() and word in clean[int(j)].split()
    fixed = plan_targets(clean, clean, torch.Generator().manual_seed(0), "one")
    assert fixed.keyword_target[0] == -1 and fixed.keyword_target[1] in (0, 2)  # "one" is already in sample 0


def test_classifier_is_refused_with_a_clear_message() -> None:
    classifier = load_model("digits-mlp")
    for probe in (create_probe("caption-gan"), create_probe("caption-pgd")):
        with pytest.raises(RequirementError, match="needs a captioner"):
            probe.check_requirements(classifier)
    with pytest.raises(UsageError, match="mode"):
        CaptionGAN(mode="sideways")
    with pytest.raises(UsageError, match="epsilons"):
        CaptionPGD(epsilons=[])


def test_data_without_captions_is_refused(captioner) -> None:  # noqa: ANN001
    from robustcheck.data import ImageDataset

    plain = ImageDataset(torch.rand(4, 1, 16, 48), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="has no captions"):
        CaptionPGD(steps=1)(captioner, plain)


def test_gan_both_modes_end_to_end_and_deterministic(captioner, scenes: CaptionDataset) -> None:  # noqa: ANN001
    first = CaptionGAN(**SMALL_GAN)(captioner, scenes, seed=3)
    second = CaptionGAN(**SMALL_GAN)(captioner, scenes, seed=3)
    m = first.metrics
    assert first.status == "ok" and first.score == pytest.approx(1 - m["targeted_success"])
    for key in (
        "targeted_success",
        "keyword_success",
        "bleu1_target",
        "bleu4_target",
        "bleu4_clean",
        "l2",
        "linf",
        "ms_per_image",
    ):
        assert key in m and m[key] is not None, key
    assert m["transfer_model"] == "digits-captioner-b" and 0 <= m["transfer_targeted_success"] <= 1
    assert m["targeted_success_vs_eps"]["0"] == 0.0 and m["keyword_success_vs_eps"]["0"] == 0.0
    assert m["linf"] <= 64 / 255 + 1e-6
    assert first.records["linf"].max() <= 64 / 255 + 1e-6
    assert set(first.records["mode"]) == {"targeted", "keyword"}
    # one forward pass per image: generator attacks are far cheaper than a training step
    assert m["train_steps"] == 12 and m["ms_per_image"] < 1000 * m["train_seconds"] / 12
    assert len(first.artifacts) == 4 and all(len(a.images) == 3 for a in first.artifacts)
    assert isinstance(first.tables[0], Table) and len(first.tables[0].frame) == 2
    json.dumps(m)  # metrics are plain JSON
    # same seed, same numbers
    assert first.metrics["targeted_success_vs_eps"] == second.metrics["targeted_success_vs_eps"]
    assert first.records["adversarial_caption"].tolist() == second.records["adversarial_caption"].tolist()
    assert first.records["l2"].tolist() == pytest.approx(second.records["l2"].tolist())


def test_pgd_steers_captions_and_rises_with_eps(captioner, scenes: CaptionDataset) -> None:  # noqa: ANN001
    result = CaptionPGD(epsilons=[8 / 255, 64 / 255], steps=20, transfer_model=None, examples=1)(
        captioner, scenes, seed=0
    )
    m = result.metrics
    assert "transfer_targeted_success" not in m
    targeted, keyword = m["targeted_success_vs_eps"], m["keyword_success_vs_eps"]
    assert targeted["0"] == 0.0 and keyword["0"] == 0.0
    assert targeted["0.25098"] >= targeted["0.0313725"] and targeted["0.25098"] > 0
    assert keyword["0.25098"] >= targeted["0.25098"]
    assert result.records["linf"].max() <= 64 / 255 + 1e-6


def test_audit_runs_the_gan_through_the_runner(tmp_path) -> None:  # noqa: ANN001
    spec = RunSpec(
        model="digits-captioner",
        probe="caption-gan",
        params={**SMALL_GAN, "mode": "targeted", "steps": 4},
        samples=8,
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
