"""robustcheck.defenses.baselines: bit-depth reduction and median filter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.api import DefendedClassifier
from robustcheck.defenses.baselines import BitDepthReduction, MedianFilter, quantize
from robustcheck.errors import UnknownPluginError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.plugins import create_defense


def _images(n: int = 4, c: int = 3, h: int = 7, w: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _model(c: int = 3, h: int = 7, w: int = 6) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 5)), input_shape=(c, h, w), name="lin"
    )


# ---------------------------------------------------------------------------------------------------
# bit depth
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_bit_depth_quantises_to_2_pow_bits_levels(bits: int) -> None:
    x = torch.cat([torch.linspace(0, 1, 1001), torch.tensor([0.0, 1.0])]).view(1, 1, 1, -1)
    q = create_defense(f"bit-depth:bits={bits}").transform(_model(1, 1, 1))(x)
    levels = 2**bits - 1
    values = torch.unique(q)
    assert len(values) == 2**bits
    torch.testing.assert_close(values, torch.arange(levels + 1, dtype=torch.float32) / levels)
    assert q.min() >= 0.0 and q.max() <= 1.0
    # each value is rounded to its nearest level
    assert (q - x).abs().max() <= 0.5 / levels + 1e-6


def test_bit_depth_gradients_are_straight_through() -> None:
    x = _images().requires_grad_(True)
    weights = torch.randn_like(x)
    (quantize(x, 3) * weights).sum().backward()
    x_id = x.detach().clone().requires_grad_(True)
    (x_id * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_id.grad)
    # through a defended classifier: the same input gradient as the bare model at the quantised point
    model = _model()
    defended = create_defense("bit-depth:bits=2").apply(model)
    assert defended.gradients == "approximate"
    xd = _images().requires_grad_(True)
    defended(xd)[:, 1].sum().backward()
    xq = quantize(_images(), 2).requires_grad_(True)
    model(xq)[:, 1].sum().backward()
    torch.testing.assert_close(xd.grad, xq.grad)


def test_defended_classifier_keeps_the_model_metadata() -> None:
    model = _model()
    defended = create_defense("bit-depth", bits=4).apply(model)
    assert isinstance(defended, DefendedClassifier) and defended.bare is model
    assert defended.name == "lin+bit-depth" and defended.bounds == model.bounds
    assert defended.input_shape == model.input_shape and not defended.is_relu_network()
    x = _images()
    torch.testing.assert_close(defended(x), model(quantize(x, 4)))


# ---------------------------------------------------------------------------------------------------
# median filter
# ---------------------------------------------------------------------------------------------------
def _direct_median(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median over each ``size`` x ``size`` window, borders reflected (kornia's default), one pixel at a time."""
    pad = size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    out = torch.empty_like(x)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            window = padded[:, :, i : i + size, j : j + size].flatten(2)
            out[:, :, i, j] = window.median(dim=2).values
    return out


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_median_filter_matches_a_direct_median(size: int, grad: bool) -> None:
    x = _images(n=2, c=3, h=7, w=6, seed=size)
    transform = create_defense("median-filter", size=size).transform(_model(1, 1, 1))
    got = transform(x.clone().requires_grad_(grad))
    torch.testing.assert_close(got.detach(), _direct_median(x, size), rtol=0, atol=0)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_median_filter_removes_salt_noise_and_has_gradients() -> None:
    x = torch.full((1, 1, 5, 5), 0.25)
    x[0, 0, 2, 2] = 1.0  # one bright pixel
    out = MedianFilter().transform(_model(1, 1, 1))(x)
    assert torch.equal(out, torch.full_like(x, 0.25))
    model = _model(1, 5, 5)
    defended = MedianFilter(size=3).apply(model)
    assert defended.gradients == "exact"
    xg = _images(1, 1, 5, 5).requires_grad_(True)
    defended(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# parameters and bounds
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "params", "match"),
    [
        (
            "bit-depth",
            {"bits": 0},
            r"defense 'bit-depth': parameter 'bits' must be an integer >= 1 and <= 16, got 0",
        ),
        ("bit-depth", {"bits": 17}, "'bits' must be an integer >= 1 and <= 16, got 17"),
        ("bit-depth", {"bits": 2.5}, "'bits' must be an integer"),
        ("bit-depth", {"levels": 4}, "has no parameter 'levels'"),
        ("bit-depth:bits=0", {}, "'bits' must be an integer >= 1"),
        ("median-filter", {"size": 4}, r"'size' must be an integer >= 1 \(odd\), got 4"),
        ("median-filter", {"size": 0}, r"'size' must be an integer >= 1 \(odd\)"),
        ("median-filter", {"size": -3}, r"'size' must be an integer >= 1 \(odd\)"),
        ("median-filter", {"window": 3}, r"has no parameter 'window'"),
    ],
)
def test_bad_parameters_raise_usage_error(spec: str, params: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        create_defense(spec, **params)


def test_bit_depth_levels_span_the_model_bounds() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), bounds=(0, 255), name="bytes")
    defended = create_defense("bit-depth:bits=2").apply(model)
    x = torch.tensor([0.0, 40.0, 100.0, 255.0]).view(1, 1, 2, 2)
    squeezed = defended.module.transform(x)
    torch.testing.assert_close(squeezed, torch.tensor([0.0, 0.0, 85.0, 255.0]).view(1, 1, 2, 2))
    torch.testing.assert_close(defended(x), model(squeezed))
    # the same defense object still quantises [0, 1] models in [0, 1]
    defense = create_defense("bit-depth:bits=2")
    assert defense.apply(model).module.transform.bounds == (0.0, 255.0)
    assert defense.apply(_model()).module.transform.bounds == (0.0, 1.0)
    assert create_defense("median-filter").apply(model).bounds == (0.0, 255.0)


def test_unknown_defense() -> None:
    with pytest.raises(UnknownPluginError):
        create_defense("jpeg-squeeze-9000")


@pytest.mark.parametrize(
    "spec", ["bit-depth:bits=1", "bit-depth:bits=5", "median-filter:size=3", "median-filter:size=5"]
)
def test_outputs_stay_in_the_unit_interval(spec: str) -> None:
    x = torch.cat([_images(8, seed=3), torch.zeros(1, 3, 7, 6), torch.ones(1, 3, 7, 6)])
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 0.9999999, 1e-7
    out = create_defense(spec).transform(_model(1, 1, 1))(x)
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0


def test_registry_classes() -> None:
    assert isinstance(create_defense("bit-depth"), BitDepthReduction)
    assert create_defense("bit-depth").params == {"bits": 4}
    assert create_defense("median-filter").params == {"size": 3}


# ---------------------------------------------------------------------------------------------------
# JPEG
# ---------------------------------------------------------------------------------------------------
def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


def _smooth_images(n: int = 2, h: int = 16, w: int = 24) -> torch.Tensor:
    """Smooth colour images (a coarse random field upsampled): JPEG's home ground."""
    coarse = torch.rand(n, 3, h // 4, w // 4, generator=torch.Generator().manual_seed(0))
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def test_jpeg_quality_controls_the_loss() -> None:
    x = _smooth_images()
    model = _model(3, 16, 24)
    psnrs = [_psnr(x, create_defense(f"jpeg:quality={q}").transform(model)(x)) for q in (10, 50, 95)]
    assert psnrs[0] < psnrs[1] < psnrs[2] and psnrs[2] > 25.0, psnrs  # 4:2:0 chroma costs colour detail
    out = create_defense("jpeg").transform(model)(x)
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0


def test_jpeg_has_exact_gradients_and_any_size() -> None:
    model = _model()  # 3 x 7 x 6: not a multiple of the 16 x 16 JPEG macroblock
    defended = create_defense("jpeg:quality=50").apply(model)
    assert defended.gradients == "exact"
    x = _images().requires_grad_(True)
    defended(x)[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_jpeg_greyscale_and_bounds() -> None:
    grey = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = create_defense("jpeg:quality=90").transform(_model(1, 8, 8))(grey)
    assert out.shape == grey.shape and _psnr(grey, out) > 20.0
    model = ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 24, 2)), bounds=(0, 255), name="bytes"
    )
    x = _smooth_images() * 255
    coded = create_defense("jpeg:quality=90").transform(model)(x)
    assert coded.min() >= 0.0 and coded.max() <= 255.0 and (coded - x).abs().mean() < 12.0


@pytest.mark.parametrize(
    ("params", "match"),
    [({"quality": 0}, "'quality' must be an integer >= 1 and <= 100"), ({"quality": 101}, "got 101")],
)
def test_jpeg_bad_quality(params: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        create_defense("jpeg", **params)


def test_jpeg_straight_through_gradient_is_the_identity() -> None:
    from robustcheck.models.loading import load_model

    model = load_model("digits-cnn")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    codec = create_defense("jpeg:quality=50").transform(model)
    bpda = create_defense("jpeg:quality=50,backward=identity").transform(model)
    torch.testing.assert_close(bpda(x), codec(x), rtol=0, atol=1e-6)  # same forward pass (up to x + (c - x))
    bpda(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # backward: identity
    assert create_defense("jpeg:backward=identity").apply(model).gradients == "approximate"
    assert create_defense("jpeg").apply(model).gradients == "exact"
    with pytest.raises(UsageError, match="'backward' must be one of codec, identity"):
        create_defense("jpeg:backward=none")
