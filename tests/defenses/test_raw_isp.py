"""The raw-isp defense (RGB -> Bayer RAW -> RGB), its camera model, the learned networks and EOT."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from robustcheck.data.builtin import digits_rgb32
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.foolbox import foolbox_cifar10, foolbox_imagenet
from robustcheck.defenses.raw_isp import ClassicPipeline, LearnedPipeline, RawISP
from robustcheck.errors import InputError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops import camera
from robustcheck.plugins import create_defense, create_probe
from robustcheck.probes.foolbox_attacks import MeanLogits, expectation_over_draws
from robustcheck.run.runner import Runner, RunSpec
from robustcheck.zoo import digits_cnn
from robustcheck.zoo import raw_isp as learned

EPS_4 = 4 / 255


def _images(
    n: int = 2, h: int = 6, w: int = 8, seed: int = 0, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return low + (high - low) * x


def _model(c: int = 3, h: int = 6, w: int = 8) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 4)), input_shape=(c, h, w), name="lin"
    )


# ---------------------------------------------------------------------------------------------------
# Bayer layout
# ---------------------------------------------------------------------------------------------------
def test_a_red_pixel_lands_on_the_r_site() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0] = 1.0  # pure red everywhere
    raw = camera.mosaic(x)[0, 0]
    expected = torch.zeros(4, 4)
    expected[::2, ::2] = 1.0  # RGGB: red at even rows and even columns only
    assert torch.equal(raw, expected)
    single = torch.zeros(1, 3, 4, 4)
    single[0, 0, 2, 2] = 1.0  # one red pixel on an R site survives; one at a G site does not
    single[0, 0, 2, 3] = 1.0
    assert camera.mosaic(single)[0, 0, 2, 2] == 1.0 and camera.mosaic(single)[0, 0, 2, 3] == 0.0


def test_green_and_blue_sites_and_the_packed_order() -> None:
    x = torch.stack([torch.full((4, 4), v) for v in (0.1, 0.5, 0.9)]).unsqueeze(0)  # R, G, B
    raw = camera.mosaic(x)[0, 0]
    assert torch.allclose(raw[::2, ::2], torch.tensor(0.1))
    assert torch.allclose(raw[::2, 1::2], torch.tensor(0.5)) and torch.allclose(
        raw[1::2, ::2], torch.tensor(0.5)
    )
    assert torch.allclose(raw[1::2, 1::2], torch.tensor(0.9))
    packed = camera.pack(camera.mosaic(x))
    assert packed.shape == (1, 4, 2, 2)
    assert torch.allclose(packed[0, :, 0, 0], torch.tensor([0.1, 0.5, 0.5, 0.9]))  # R, Gr, Gb, B
    assert torch.equal(camera.unpack(packed), camera.mosaic(x))


def test_quad_mosaic_puts_each_pixel_on_one_rggb_quad() -> None:
    x = _images(1, 3, 5)  # odd sizes are fine for a sensor at twice the resolution
    raw = camera.quad_mosaic(x)
    assert raw.shape == (1, 1, 6, 10)
    packed = camera.pack(raw)
    torch.testing.assert_close(packed[:, 0], x[:, 0])
    torch.testing.assert_close(packed[:, 1], x[:, 1])
    torch.testing.assert_close(packed[:, 2], x[:, 1])
    torch.testing.assert_close(packed[:, 3], x[:, 2])
    torch.testing.assert_close(camera.demosaic(raw, "2x2"), x)


@pytest.mark.parametrize("method", ["2x2", "bilinear"])
def test_demosaicing_a_flat_colour_gives_it_back(method: str) -> None:
    colour = torch.tensor([0.2, 0.6, 0.4]).view(1, 3, 1, 1)
    x = colour.expand(1, 3, 8, 8).contiguous()
    raw = camera.quad_mosaic(x) if method == "2x2" else camera.mosaic(x)
    torch.testing.assert_close(camera.demosaic(raw, method), x)


def test_colour_matrices_and_gains() -> None:
    cam = camera.DEFAULT_CAMERA
    torch.testing.assert_close(cam.rgb_to_cam().sum(1), torch.ones(3))  # white stays white
    torch.testing.assert_close(cam.rgb_to_cam() @ cam.cam_to_rgb(), torch.eye(3), atol=1e-6, rtol=0)
    grey = torch.linspace(0.05, 0.95, 19).view(1, 1, 1, -1).expand(1, 3, 1, 19)
    torch.testing.assert_close(camera.tone_curve(camera.inverse_tone_curve(grey)), grey, atol=1e-6, rtol=0)
    # below the highlight inflection the inverse gains are exact inverses of the forward gains
    dim = torch.full((1, 3, 2, 2), 0.3)
    inverse = camera.safe_invert_gains(dim)
    torch.testing.assert_close(inverse[0, :, 0, 0] * cam.gains(), torch.full((3,), 0.3))
    # a saturated pixel keeps its saturation instead of becoming a mid-grey RAW value
    torch.testing.assert_close(camera.safe_invert_gains(torch.ones(1, 3, 1, 1)), torch.ones(1, 3, 1, 1))


# ---------------------------------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "load",
    [lambda: digits_rgb32().head(64), foolbox_cifar10, lambda: foolbox_imagenet(size=96)],
    ids=["digits", "cifar", "imagenet"],
)
def test_classic_round_trip_is_near_identity(load) -> None:
    x = load().x
    out = ClassicPipeline()(x)
    assert out.shape == x.shape
    psnr = camera.psnr(x, out)
    assert psnr.min() >= 35.0, psnr.tolist()  # every image, not just on average
    torch.testing.assert_close(out, camera.round_trip(x))


def test_bilinear_sensor_round_trip_on_smooth_digits() -> None:
    x = digits_rgb32().head(64).x
    psnr = camera.psnr(x, camera.round_trip(x, method="bilinear"))
    assert psnr.mean() >= 35.0  # smooth images; the bilinear sensor blurs natural images (documented)


def test_round_trip_outputs_stay_in_bounds() -> None:
    x = torch.cat([_images(4), torch.zeros(1, 3, 6, 8), torch.ones(1, 3, 6, 8)])
    for pipeline in (
        ClassicPipeline(),
        ClassicPipeline(noise=1e-3),
        ClassicPipeline(demosaic="bilinear"),
        LearnedPipeline(),
    ):
        out = pipeline(x)
        assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    torch.testing.assert_close(ClassicPipeline()(torch.ones(1, 3, 2, 2)), torch.ones(1, 3, 2, 2))


def test_bounds_other_than_the_unit_interval() -> None:
    model = ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 8, 2)), bounds=(0, 255), name="bytes"
    )
    transform = create_defense("raw-isp:mode=classic").transform(model)
    x = _images() * 255
    torch.testing.assert_close(transform(x), camera.round_trip(x / 255) * 255)


# ---------------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("level", "shot"), [(0.3, 1e-3), (0.6, 1e-4)])
def test_noise_statistics_match_the_model(level: float, shot: float) -> None:
    raw = torch.full((400_000,), level, dtype=torch.float64)
    noisy = camera.add_sensor_noise(raw, shot, generator=torch.Generator().manual_seed(0))
    read = math.exp(2.18 * math.log(shot) + 1.20)
    assert camera.read_noise_for(shot) == pytest.approx(read)
    variance = shot * level + read
    assert noisy.mean().item() == pytest.approx(level, abs=4 * math.sqrt(variance / len(raw)))
    assert noisy.var().item() == pytest.approx(variance, rel=0.02)
    # explicit read noise, and no noise at all
    only_read = camera.add_sensor_noise(raw, 0.0, read_noise=1e-4, generator=torch.Generator().manual_seed(1))
    assert only_read.var().item() == pytest.approx(1e-4, rel=0.02)
    assert camera.add_sensor_noise(raw, 0.0) is raw


def test_noise_grows_with_the_signal() -> None:
    """Shot noise: brighter RAW values are noisier (heteroscedastic), unlike plain Gaussian noise."""
    raw = torch.cat([torch.full((100_000,), 0.1), torch.full((100_000,), 0.8)])
    noisy = camera.add_sensor_noise(raw, 1e-3, generator=torch.Generator().manual_seed(0))
    assert noisy[100_000:].var() > 4 * noisy[:100_000].var()


def test_noisy_defense_is_seeded() -> None:
    x = _images(2, 8, 8)
    a, b = (
        create_defense("raw-isp:mode=classic,noise=0.001,seed=3"),
        create_defense("raw-isp:mode=classic,noise=0.001,seed=3"),
    )
    model = _model(3, 8, 8)
    ta, tb = a.transform(model), b.transform(model)
    first = ta(x)
    torch.testing.assert_close(first, tb(x), rtol=0, atol=0)  # same seed, same draws
    assert not torch.equal(ta(x), first)  # later calls draw anew
    other = create_defense("raw-isp:mode=classic,noise=0.001,seed=4").transform(model)
    assert not torch.equal(other(x), first)
    assert camera.psnr(x, first).mean() < 35.0  # the noise is really there


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["2x2", "bilinear"])
def test_gradcheck_through_the_classic_pipeline(method: str) -> None:
    x = _images(1, 4, 4, seed=1, low=0.15, high=0.85).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: camera.round_trip(t, method=method), (x,), eps=1e-6, atol=1e-5)
    # the defense module (bounds rescaling, input checks) too, in gradcheck's fast mode
    assert torch.autograd.gradcheck(
        ClassicPipeline(demosaic=method), (x,), eps=1e-6, atol=1e-5, fast_mode=True
    )


def test_gradients_stay_finite_at_saturated_pixels() -> None:
    x = torch.cat([torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4), _images(1, 4, 4)]).requires_grad_(True)
    out = create_defense("raw-isp:mode=classic").transform(_model(3, 4, 4))(x)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_learned_mode_has_exact_gradients() -> None:
    model = _model(3, 8, 8)
    defended = create_defense("raw-isp").apply(model)
    assert defended.gradients == "exact" and RawISP.gradients == "exact"
    x = _images(2, 8, 8).requires_grad_(True)
    defended(x)[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# learned mode
# ---------------------------------------------------------------------------------------------------
def test_learned_mode_is_deterministic_and_close_to_identity() -> None:
    x = digits_rgb32().head(32).x
    model = digits_cnn()
    first = create_defense("raw-isp:mode=learned").transform(model)(x)
    second = create_defense("raw-isp:mode=learned").transform(model)(x)
    assert torch.equal(first, second)
    assert camera.psnr(x, first).mean() >= 34.0
    noisy = create_defense("raw-isp:mode=learned,noise=0.001,seed=5")
    torch.testing.assert_close(noisy.transform(model)(x), noisy.transform(model)(x), rtol=0, atol=0)


def test_shipped_weights_are_small_and_load_safely() -> None:
    assert learned.WEIGHTS_PATH.stat().st_size < 3_000_000
    state = torch.load(learned.WEIGHTS_PATH, weights_only=True)
    assert set(state) == set(learned.LearnedCamera().state_dict())


def test_bad_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(InputError, match="do not fit the learned RAW camera"):
        create_defense("raw-isp", weights=str(bad)).transform(_model())


def test_train_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="raw-isp-learned"):
        learned.train("raw-isp-other")


@pytest.mark.slow
def test_training_reproduces_the_shipped_weights(tmp_path: Path) -> None:
    path, psnr = learned.train(out_dir=tmp_path, verbose=False)
    assert path == tmp_path / "raw-isp-learned.pt" and psnr >= 34.0
    trained, shipped = (
        torch.load(path, weights_only=True),
        torch.load(learned.WEIGHTS_PATH, weights_only=True),
    )
    for key, value in shipped.items():
        torch.testing.assert_close(trained[key], value, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# errors and parameters
# ---------------------------------------------------------------------------------------------------
def test_greyscale_input_says_how_to_convert() -> None:
    grey = torch.rand(2, 1, 8, 8)
    for spec in ("raw-isp:mode=classic", "raw-isp:mode=learned"):
        with pytest.raises(InputError, match=r"needs RGB images.*x\.repeat\(1, 3, 1, 1\).*digits-rgb32"):
            create_defense(spec).transform(ImageClassifier(nn.Flatten(), name="grey"))(grey)
        with pytest.raises(
            InputError, match=r"model 'grey8'.*has 1"
        ):  # at apply time when the shape is known
            create_defense(spec).apply(_model_named("grey8", (1, 8, 8)))


def _model_named(name: str, shape: tuple[int, int, int]) -> ImageClassifier:
    c, h, w = shape
    return ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 2)), input_shape=shape, name=name)


def test_odd_sizes() -> None:
    odd = torch.rand(1, 3, 7, 8)
    with pytest.raises(InputError, match=r"even image height and width.*7x8.*demosaic='2x2'"):
        create_defense("raw-isp:mode=classic,demosaic=bilinear").transform(ImageClassifier(nn.Flatten()))(odd)
    with pytest.raises(InputError, match="even image height and width"):
        create_defense("raw-isp:mode=classic,demosaic=bilinear").apply(_model_named("odd", (3, 7, 8)))
    with pytest.raises(ValueError, match="even height and width"):
        camera.unprocess(odd, method="bilinear")
    # a sensor at twice the resolution has whole quads for any image size
    assert ClassicPipeline()(odd).shape == odd.shape and LearnedPipeline()(odd).shape == odd.shape


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"mode": "fancy"}, "'mode' must be one of classic, learned"),
        ({"noise": -0.1}, "'noise' must be a number >= 0 and <= 0.1"),
        ({"noise": 0.5}, "<= 0.1, got 0.5"),
        ({"demosaic": "ahd"}, "'demosaic' must be one of 2x2, bilinear"),
        (
            {"mode": "learned", "demosaic": "bilinear"},
            "^defense 'raw-isp': demosaic='bilinear' applies to mode='classic' only",
        ),
        ({"mode": "classic", "weights": "x.pt"}, "^defense 'raw-isp': weights apply to mode='learned' only"),
        ({"noise": "high"}, "'noise' must be a number"),
        ({"iso": 100}, "has no parameter 'iso'"),
    ],
)
def test_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        create_defense("raw-isp", **params)


def test_defaults() -> None:
    defense = create_defense("raw-isp")
    assert isinstance(defense, RawISP)
    assert defense.params == {"mode": "learned", "noise": 0.0, "seed": 0, "demosaic": "2x2", "weights": ""}


# ---------------------------------------------------------------------------------------------------
# EOT and the harness
# ---------------------------------------------------------------------------------------------------
def test_mean_logits_over_draws() -> None:
    model = create_defense("raw-isp:mode=classic,noise=0.001").apply(_model(3, 8, 8))
    calls: list[int] = []
    model.module.model.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    eot = expectation_over_draws(model, 5)
    x = _images(3, 8, 8)
    out = eot(x)
    assert out.shape == (3, 4) and calls == [15]  # one batch of 5 draws x 3 images
    assert eot.bounds == model.bounds and eot.input_shape == model.input_shape and "EOT x5" in eot.name
    # on a deterministic model the mean of identical logits is the logits
    plain = _model(3, 8, 8)
    torch.testing.assert_close(MeanLogits(plain, 4)(x), plain(x))
    with pytest.raises(UsageError, match="'eot' must be an integer >= 1, got 0"):
        create_probe("fgsm", eot=0)


def test_eot_attack_through_a_noisy_defense() -> None:
    model, data = digits_cnn(), digits_rgb32().head(4)
    defended = create_defense("raw-isp:mode=classic,noise=0.0003").apply(model)
    probe = create_probe("fgsm", epsilons=[0.0, 8 / 255], eot=4, examples=0)
    result = probe(defended, data, seed=0, bare_model=model)
    assert result.status == "ok" and result.metrics["adaptive"] is True
    curve = list(result.metrics["robust_accuracy"].values())
    assert curve[1] <= curve[0]


def test_jpeg_defense_runs_in_the_harness() -> None:
    runner = Runner(quiet=True)
    specs = [
        RunSpec(
            "digits-cnn",
            "fgsm",
            {"epsilons": [0.0, EPS_4], "adaptive": a, "examples": 0},
            defense="jpeg",
            samples=8,
        )
        for a in (False, True)
    ]
    runner.check(specs)
    for spec, adaptive in zip(specs, (False, True), strict=True):
        outcome = runner.execute(spec)
        assert outcome.result.status == "ok", outcome.result.message
        assert (
            outcome.result.metrics["adaptive"] is adaptive
            and outcome.result.metrics["clean_accuracy"] >= 0.75
        )


def test_noisy_raw_defense_in_the_harness_is_reproducible() -> None:
    runner = Runner(quiet=True)
    spec = RunSpec(
        "digits-cnn",
        "fgsm",
        {"epsilons": [0.0, EPS_4], "examples": 0},
        defense="raw-isp:mode=classic,noise=0.0003",
        samples=8,
    )
    first, second = runner.execute(spec), runner.execute(spec)
    assert first.result.status == "ok", first.result.message
    assert first.result.metrics["clean_accuracy"] >= 0.75
    # same seed, same numbers: the noisy defense draws from its own seeded generator
    assert first.result.metrics["robust_accuracy"] == second.result.metrics["robust_accuracy"]
    assert first.result.records.equals(second.result.records)


def test_greyscale_model_fails_before_running() -> None:
    runner = Runner(quiet=True)
    with pytest.raises(InputError, match="needs RGB images"):
        runner.check([RunSpec("digits-mlp", "fgsm", {"epsilons": [0.0, 0.1]}, defense="raw-isp", samples=4)])


def test_dataset_conversion_hint_works() -> None:
    """The conversion the error message suggests really produces data the defense accepts."""
    grey = ImageDataset(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    rgb = ImageDataset(grey.x.repeat(1, 3, 1, 1), grey.y)
    assert ClassicPipeline()(rgb.x).shape == (2, 3, 8, 8)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 (slow): the comparison, measured through the probes
# ---------------------------------------------------------------------------------------------------
CIFAR_DEFENSES = ("raw-isp:mode=classic", "raw-isp:mode=learned", "jpeg:quality=75", "bit-depth:bits=4")


def _fgsm_at_4(
    model: ImageClassifier, data: ImageDataset, defense: str | None, adaptive: bool
) -> tuple[float, float]:
    """(clean accuracy, robust accuracy at 4/255) of FGSM through ``defense`` (crafted on the bare model
    unless ``adaptive``)."""
    target = create_defense(defense).apply(model) if defense else model
    probe = create_probe("fgsm", epsilons=[0.0, EPS_4], adaptive=adaptive, examples=0)
    metrics = probe(target, data, seed=0, bare_model=model if defense else None).metrics
    return metrics["clean_accuracy"], list(metrics["robust_accuracy"].values())[1]


@pytest.mark.slow
def test_cifar_raw_defense_against_the_baselines(cifar_model) -> None:
    model, held_out = cifar_model
    data = held_out.head(200)  # class-balanced (the fixture interleaves the classes)
    bare_clean, bare_robust = _fgsm_at_4(model, data, None, adaptive=True)
    table = {
        d: (*_fgsm_at_4(model, data, d, adaptive=False), _fgsm_at_4(model, data, d, adaptive=True)[1])
        for d in CIFAR_DEFENSES
    }
    print(f"\nbare: clean {bare_clean:.3f}, FGSM 4/255 {bare_robust:.3f}")
    for defense, (clean, non_adaptive, adaptive) in table.items():
        print(f"{defense:24s} clean {clean:.3f}  non-adaptive {non_adaptive:.3f}  adaptive {adaptive:.3f}")
    classic, learned_mode = table["raw-isp:mode=classic"], table["raw-isp:mode=learned"]
    # the classic noise-free round trip is near-identity: no cost, and no protection
    assert abs(classic[0] - bare_clean) <= 0.01 and abs(classic[1] - bare_robust) <= 0.03
    # the learned camera removes much of a transferred perturbation (the paper's non-adaptive setting) ...
    assert learned_mode[1] >= bare_robust + 0.15
    # ... and much less of one computed through it: report adaptive numbers, never only the non-adaptive
    assert learned_mode[2] < learned_mode[1]
