"""robustcheck.probes.translation.probe and robustcheck.ops.shifts: shift generation, metrics, params, larger photos."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import SHARED_DATA
from torch import nn

from robustcheck.api import RunContext, Table
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.folders import load_labelled_photos
from robustcheck.data.loading import load_data
from robustcheck.errors import InputError, ProbeTimeout, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.ops.shifts import (
    centre_crop,
    crop_at,
    cyclic_views,
    pad_canvas,
    shift_offsets,
    shift_size,
    window_views,
)
from robustcheck.plugins import create_probe
from robustcheck.probes.translation.measure import forward_views, inference, last_linear
from robustcheck.probes.translation.probe import TranslationProbe

PHOTOS = SHARED_DATA / "imagenet-samples"


def _ramp(h: int = 12, w: int = 12) -> torch.Tensor:
    """``(1, 1, h, w)`` image whose pixel (i, j) holds ``(i * w + j) / (h * w)``: every pixel distinct."""
    return (torch.arange(h * w, dtype=torch.float32) / (h * w)).view(1, 1, h, w)


# ---------------------------------------------------------------------------------------------------
# shift generation
# ---------------------------------------------------------------------------------------------------
def test_offsets_cover_sizes_and_directions() -> None:
    four = shift_offsets(2, 4)
    assert len(four) == 8 and len(set(four)) == 8
    assert sorted(shift_size(o) for o in four) == [1, 1, 1, 1, 2, 2, 2, 2]
    eight = shift_offsets(1, 8)
    assert set(eight) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} - {(0, 0)}


def test_realistic_one_pixel_shift_moves_content_by_exactly_one_pixel() -> None:
    scene = _ramp(14, 14)  # larger than the 10x10 window: no border involved
    views = window_views(scene, [(0, 0), (0, 1), (1, 0), (0, -1)], (10, 10))
    centre, right, down, left = views[:, 0, 0]
    step_x, step_y = 1 / 196, 14 / 196
    # window moved right by one pixel: every pixel shows its right neighbour (content moved left by one)
    torch.testing.assert_close(right - centre, torch.full_like(centre, step_x), rtol=0, atol=1e-6)
    torch.testing.assert_close(down - centre, torch.full_like(centre, step_y), rtol=0, atol=1e-6)
    torch.testing.assert_close(left - centre, torch.full_like(centre, -step_x), rtol=0, atol=1e-6)
    assert torch.equal(right[:, :-1], centre[:, 1:])  # the same pixel values, moved, not resampled
    assert torch.equal(views[0], centre_crop(scene, (10, 10)))


def test_cyclic_shift_equals_roll() -> None:
    x = torch.rand(3, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    offsets = shift_offsets(2, 8)
    views = cyclic_views(x, offsets)
    for s, (dy, dx) in enumerate(offsets):
        assert torch.equal(views[s], torch.roll(x, shifts=(-dy, -dx), dims=(2, 3)))
    # the window convention is shared: away from the wrap, a cyclic view equals the realistic one
    canvas = pad_canvas(x, 2, "zero")
    real = window_views(canvas, offsets, (7, 9))
    assert torch.equal(real[0][..., 2:-2, 2:-2], views[0][..., 2:-2, 2:-2])


def test_crop_at_cuts_per_sample_windows_and_wraps_into_rolls() -> None:
    x = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(1))
    crops = crop_at(x, torch.tensor([0, 2]), torch.tensor([3, 1]), (4, 5))
    assert torch.equal(crops[0], x[0, :, 0:4, 3:8]) and torch.equal(crops[1], x[1, :, 2:6, 1:6])
    rolled = crop_at(x, torch.tensor([-2, 5]), torch.tensor([4, -1]), (7, 9))  # full size: a roll per sample
    assert torch.equal(rolled[0], torch.roll(x[0], (2, -4), (1, 2)))
    assert torch.equal(rolled[1], torch.roll(x[1], (-5, 1), (1, 2)))


@pytest.mark.parametrize(
    ("border", "left_of_edge"),
    [("reflect", 1), ("replicate", 0), ("zero", None)],
)
def test_canvas_borders(border: str, left_of_edge: int | None) -> None:
    x = _ramp(4, 5)
    canvas = pad_canvas(x, 2, border)
    assert canvas.shape == (1, 1, 8, 9)
    assert torch.equal(canvas[..., 2:-2, 2:-2], x)
    expected = torch.zeros(4) if left_of_edge is None else x[0, 0, :, left_of_edge]
    assert torch.equal(canvas[0, 0, 2:-2, 1], expected)


# ---------------------------------------------------------------------------------------------------
# metrics on a hand-built model whose answer depends on one pixel
# ---------------------------------------------------------------------------------------------------
class OnePixel(nn.Module):
    """Features ``[v, 1 - v]`` of the pixel (4, 4), then a Linear head: class 1 iff the pixel is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-10.0, 10.0], [10.0, -10.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 4, 4].unsqueeze(1)
        return self.head(torch.cat([v, 1 - v], dim=1))


def _one_pixel_model() -> ImageClassifier:
    return ImageClassifier(
        OnePixel().eval(), input_shape=(1, 9, 9), labels=["dark", "bright"], name="one-pixel"
    )


def _one_pixel_data() -> ImageDataset:
    """4 images: a bright spike at (4, 4) (flips under any shift), a 3x3 bright blob (flips only under
    2-pixel shifts), a dark image and a bright one (never flip). Labels: the centre answers, but the
    dark image is labelled bright (centre accuracy 3/4)."""
    x = torch.zeros(4, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    x[1, 0, 3:6, 3:6] = 1.0
    x[3] = 1.0
    return ImageDataset(x, torch.tensor([1, 1, 1, 1]), ["dark", "bright"], name="one-pixel")


def test_metrics_on_a_one_pixel_model() -> None:
    probe = create_probe("translation", max_shift=2, windows=[], threshold=0.5, border="zero")
    result = probe(_one_pixel_model(), _one_pixel_data())
    m = result.metrics
    # spike changes under all 8 shifts, the blob under the 4 two-pixel shifts, flat images never
    assert m["consistency"] == pytest.approx(0.5) and m["fooling_rate"] == pytest.approx(0.5)
    assert result.score == pytest.approx(1 - m["fooling_rate"])
    assert m["consistency_by_shift"] == {"1": 0.75, "2": 0.5}
    assert m["centre_accuracy"] == pytest.approx(0.75)
    assert m["fooling_rate_correct"] == pytest.approx(2 / 3)
    flip_tv = torch.sigmoid(torch.tensor(20.0)).item() - torch.sigmoid(torch.tensor(-20.0)).item()
    assert m["tv_distance"] == pytest.approx((8 + 4) / (8 * 4) * flip_tv, rel=1e-5)
    # features [1, 0] -> [0, 1]: cosine distance 1 for the spike and the blob; 0 for flat images
    assert m["representation_change"] == pytest.approx(0.5)
    assert m["mean_cosine_distance"] == pytest.approx(12 / 32, rel=1e-5)
    assert (m["canvas"], m["border"], m["pad"]) == ("padded", "zero", 2)
    records = result.records
    assert records["consistent"].tolist() == [False, False, True, True]
    assert records["changed_shifts"].tolist() == [8, 4, 0, 0]
    assert records.loc[0, "flip_prediction"] == 0
    shift_table = next(t for t in result.tables if t.title.startswith("Prediction changes"))
    assert isinstance(shift_table, Table) and len(shift_table.frame) == 8
    assert "2 px 'zero' border" in shift_table.note
    # flip pairs: both crops, both labels and confidences
    assert len(result.artifacts) == 2
    art = result.artifacts[0]
    assert len(art.images) == 2 and art.images[0].shape == (1, 9, 9)
    assert "bright" in art.captions[0] and "dark" in art.captions[1]


def test_both_modes_are_prefixed_and_cyclic_alone_scores_cyclic() -> None:
    model, data = _one_pixel_model(), _one_pixel_data()
    # 5-pixel moves of a 9x9 image: the realistic window brings the zero border to the centre pixel of the
    # all-bright image, the roll brings the other side of the same bright image
    both = create_probe("translation", mode="both", max_shift=5, windows=[], border="zero")(model, data)
    assert both.metrics["realistic/fooling_rate"] == pytest.approx(0.75)
    assert both.metrics["cyclic/fooling_rate"] == pytest.approx(0.5)
    assert "fooling_rate" not in both.metrics
    assert both.score == pytest.approx(0.25)
    assert both.records["cyclic_consistent"].tolist() == [False, False, True, True]
    cyclic = create_probe("translation", mode="cyclic", max_shift=5, windows=[])(model, data)
    assert cyclic.score == pytest.approx(0.5) and cyclic.metrics["fooling_rate"] == pytest.approx(0.5)


def test_one_forward_pass_per_batch() -> None:
    model = _one_pixel_model()
    calls: list[int] = []
    model.module.register_forward_pre_hook(lambda _, inputs: calls.append(len(inputs[0])))
    create_probe("translation", windows=[], directions=8)(model, _one_pixel_data(), batch_size=64)
    assert calls == [4 * 9]  # centre + 8 shifts of 4 images, together
    calls.clear()
    create_probe("translation", windows=[], mode="both")(model, _one_pixel_data(), batch_size=3)
    assert calls == [3 * 5, 1 * 5, 3 * 5, 1 * 5]  # per batch of images and mode


def test_features_hook_on_the_last_linear_and_none_without_one() -> None:
    model = _one_pixel_model()
    assert last_linear(model) is model.module.head
    with inference(model) as captured:
        probs, features = forward_views(model, torch.zeros(2, 3, 1, 9, 9), captured)
    assert probs.shape == (2, 3, 2) and features is not None and features.shape == (2, 3, 2)
    conv_only = ImageClassifier(nn.Sequential(nn.Conv2d(1, 2, 9), nn.Flatten()).eval(), input_shape=(1, 9, 9))
    result = create_probe("translation", windows=[])(conv_only, _one_pixel_data())
    assert result.metrics["representation_change"] is None and math.isfinite(result.metrics["tv_distance"])


# ---------------------------------------------------------------------------------------------------
# sources larger than the model input, bad data, bad params
# ---------------------------------------------------------------------------------------------------
def test_larger_sources_are_cropped_as_they_are() -> None:
    model = _one_pixel_model()
    big = torch.zeros(2, 1, 13, 13)
    big[0, 0, 6, 6] = 1.0  # the centre pixel of the 13x13 image is the model's (4, 4)
    data = ImageDataset(big, torch.tensor([1, 0]), ["dark", "bright"])
    result = create_probe("translation", windows=[3, 5], max_shift=1)(model, data)
    assert (
        result.tables[1].frame["window"].tolist() == [1, 3] and "Windows [5] skipped" in result.tables[1].note
    )
    assert result.metrics["canvas"] == "source" and result.metrics["border"] is None
    assert result.metrics["pad"] == 0 and result.metrics["fooling_rate"] == pytest.approx(0.5)
    assert "larger than the model input" in result.tables[0].note
    with pytest.raises(InputError, match="leave 2 px"):
        create_probe("translation", max_shift=3, windows=[])(model, data)
    with pytest.raises(InputError, match="smaller than the model input"):
        create_probe("translation")(model, ImageDataset(torch.zeros(1, 1, 8, 8), torch.tensor([0])))
    with pytest.raises(InputError, match="channels"):
        create_probe("translation")(model, ImageDataset(torch.zeros(1, 3, 9, 9), torch.tensor([0])))


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"max_shift": 3, "pad": 2, "windows": []}, "larger than the canvas border pad=2"),
        ({"max_shift": 1, "pad": 2, "windows": [5]}, "pad >= 3"),
        ({"max_shift": 0}, "max_shift"),
        ({"directions": 6}, "parameter 'directions' must be one of 4, 8, got 6"),
        ({"mode": "sideways"}, "parameter 'mode' must be one of"),
        ({"border": "wrap"}, "parameter 'border' must be one of"),
        ({"windows": [4]}, "parameter 'windows' must be a list of integers >= 1 (odd), got [4]"),
        ({"samples": 0}, "samples"),
        ({"threshold": 3.0}, "parameter 'threshold' must be a number >= 0 and <= 2"),
        ({"score": "brightest"}, "parameter 'score' must be one of"),
        ({"score": "local-energy", "sigma": 0.0}, "sigma > 0"),
    ],
)
def test_bad_params_are_usage_errors(params: dict[str, object], needle: str) -> None:
    with pytest.raises(UsageError, match=re.escape(needle)):
        TranslationProbe(**params)


class FixedSizeCNN(nn.Module):
    """A CIFAR-style CNN with a fixed-size Linear head (takes 3x16x16 only); records every input shape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(4 * 8 * 8, 3)
        self.seen: set[tuple[int, ...]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(tuple(x.shape[1:]))
        return self.head(self.features(x))


def _fixed_size_data(size: int = 16) -> ImageDataset:
    x = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(0))
    return ImageDataset(x, torch.arange(6) % 3, ["a", "b", "c"], name="rand16")


def test_a_model_without_input_shape_is_refused_with_how_to_declare_it() -> None:
    model = ImageClassifier(FixedSizeCNN().eval(), name="fixed")
    with pytest.raises(UsageError, match=r"probe 'translation' needs the input size of model 'fixed'.*--input-shape C,H,W") as info:
        create_probe("translation")(model, _fixed_size_data())
    assert "input_shape=(C, H, W)" in str(info.value) and "TOML model table" in str(info.value)
    assert not model.module.seen  # refused before any forward pass


@pytest.mark.parametrize("source", [16, 24], ids=["model-sized", "larger"])
@pytest.mark.parametrize("defense", [None, "crop-selection", "crop-selection:variant=circular", "median-filter"])
def test_a_fixed_size_model_is_only_fed_its_input_size(source: int, defense: str | None) -> None:
    """Realistic and cyclic shifts, the crop-selection trade-off and defended models that take extra context:
    the network itself sees only its declared input size."""
    from robustcheck.plugins import create_defense

    module = FixedSizeCNN().eval()
    model = ImageClassifier(module, input_shape=(3, 16, 16), name="fixed")
    target = create_defense(defense).apply(model) if defense else model
    result = create_probe("translation", mode="both", max_shift=2, windows=[1, 3, 5], examples=0)(
        target, _fixed_size_data(source)
    )
    assert result.status == "ok" and result.score is not None
    assert module.seen == {(3, 16, 16)}


def test_timeout_before_the_first_batch() -> None:
    with pytest.raises(ProbeTimeout):
        create_probe("translation", windows=[])(_one_pixel_model(), _one_pixel_data(), deadline=0.0)


class BudgetOf(RunContext):
    """A run context whose time budget lasts ``checks`` calls of ``check_time`` (deterministic timeouts)."""

    def __init__(self, checks: int, batch_size: int) -> None:
        super().__init__(batch_size=batch_size)
        self.checks = checks

    def check_time(self) -> None:
        self.checks -= 1
        if self.checks < 0:
            raise ProbeTimeout("time budget spent")


@pytest.mark.parametrize("checks", [1, 3])
def test_a_timeout_reports_only_what_finished_on_the_same_images(checks: int) -> None:
    """The budget cuts a mode after its first batch (2 of the 4 images): metrics and records cover those 2
    only, in every mode; a trade-off that cannot finish is left out rather than compared on fewer images."""
    probe = create_probe("translation", mode="both", max_shift=2, windows=[3], border="zero")
    result = probe.run(_one_pixel_model(), _one_pixel_data(), BudgetOf(checks, batch_size=2))
    m = result.metrics
    assert result.status == "timeout" and "2 of 4 images" in result.message
    assert m["samples"] == 2 and len(result.records) == 2
    assert m["realistic/centre_accuracy"] == 1.0  # the dark image labelled bright is not among them
    assert m["realistic/fooling_rate"] == 1.0 and result.score == 0.0  # the spike and the blob
    if checks == 1:  # the budget ends after the first realistic batch: no cyclic numbers at all
        assert "cyclic shifts not measured" in result.message and "cyclic/fooling_rate" not in m
    else:  # cyclic measured on the same 2 images, then the trade-off runs out
        assert m["cyclic/fooling_rate"] == 1.0 and "trade-off not finished" in result.message
    assert len(result.tables) == 1 and "tradeoff/fooling_rate" not in m


# ---------------------------------------------------------------------------------------------------
# a real model: digits-cnn, with the crop-selection trade-off table
# ---------------------------------------------------------------------------------------------------
def test_digits_cnn_is_deterministic_and_reports_the_tradeoff(single_thread: None) -> None:
    model, data = load_model("digits-cnn"), load_data("digits-rgb32").head(48)
    probe = create_probe("translation", mode="both", windows=[3, 5])
    first, second = probe(model, data, seed=1), probe(model, data, seed=1)
    assert first.metrics == second.metrics
    m = first.metrics
    assert 0.0 <= m["realistic/fooling_rate"] <= 1.0 and m["realistic/centre_accuracy"] > 0.8
    assert m["pad"] == 1 + 2  # max_shift + the largest window's context
    tradeoff = next(t for t in first.tables if t.title.startswith("Crop-selection trade-off"))
    frame = tradeoff.frame
    assert list(frame["defense"]) == ["none (centre crop)", "none (centre crop)", "crop-selection", "crop-selection",
                                      "crop-selection circular"]  # fmt: skip
    circular = frame[frame["defense"] == "crop-selection circular"].iloc[0]
    assert circular["consistency"] == 1.0  # exact invariance to cyclic shifts
    assert set(m["tradeoff/fooling_rate"]) == {"1", "3", "5"}
    assert m["tradeoff/fooling_rate"]["1"] == m["realistic/fooling_rate"]


# ---------------------------------------------------------------------------------------------------
# larger photos with a 224x224 classifier
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_realistic_crops_from_imagenet_photos(single_thread: None) -> None:
    if not (PHOTOS / "labels.csv").exists():
        pytest.skip(f"ImageNet sample photos not found at {PHOTOS}")
    data = load_labelled_photos(PHOTOS, size=256)
    assert (
        data.shape == (3, 256, 256)
        and len(data) == 16
        and data.classes is not None
        and len(data.classes) == 1000
    )
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1000),
    )  # fmt: skip
    model = ImageClassifier(net.eval(), input_shape=(3, 224, 224), labels=data.classes, name="tiny-224")
    result = create_probe("translation", mode="both", windows=[5], directions=8)(model, data, batch_size=8)
    m = result.metrics
    assert m["canvas"] == "source" and m["samples"] == 16
    assert 0.0 <= m["realistic/fooling_rate"] <= 1.0 and m["realistic/representation_change"] is not None
    assert result.tables[1].frame["window"].tolist()[:3] == [1, 1, 5]
    # the same through the runner, as `robustcheck audit --data imagenet-samples/` does: the folder's
    # labels.csv selects the photo loader, and the runner accepts images larger than the model input
    from robustcheck.run.runner import Runner, RunSpec

    runner = Runner(None, quiet=True)
    runner.add_model("tiny-224", model)
    spec = RunSpec(model="tiny-224", probe="translation", data=str(PHOTOS), params={"windows": []}, samples=4)
    runner.check([spec])
    outcome = runner.run([spec])[0]
    assert outcome.result.status == "ok" and outcome.result.metrics["canvas"] == "source"
    assert outcome.result.metrics["samples"] == 4
