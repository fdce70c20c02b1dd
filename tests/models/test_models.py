"""robustcheck.models.classifier: the ImageClassifier adapter (outputs, normalisation, validation, modes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from robustcheck.errors import InputError
from robustcheck.models.classifier import ImageClassifier, Normalize, as_classifier, extract_logits


class Wrapped(nn.Module):
    """A linear classifier over 1x4x4 images whose output is packed by ``pack``."""

    def __init__(self, pack=lambda t: t) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        self.pack = pack

    def forward(self, x: torch.Tensor):
        return self.pack(self.net(x))


def _x(n: int = 2, shape=(1, 4, 4)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------
# outputs and normalisation
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pack",
    [
        pytest.param(lambda t: t, id="tensor"),
        pytest.param(lambda t: {"logits": t, "aux": t * 0}, id="dict-logits"),
        pytest.param(lambda t: {"out": t}, id="dict-out"),
        pytest.param(lambda t: SimpleNamespace(logits=t, hidden=None), id="attr-logits"),
        pytest.param(lambda t: (t, t * 0), id="tuple"),
        pytest.param(lambda t: [t], id="list"),
    ],
)
def test_output_forms_give_the_same_logits(pack) -> None:
    plain, packed = ImageClassifier(Wrapped()), ImageClassifier(Wrapped(pack))
    x = _x()
    torch.testing.assert_close(packed(x), plain(x))
    assert packed.predict(x).shape == (2, 3)


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ({"probs": torch.zeros(1, 3)}, "without a 'logits' tensor"),
        ("text", "returned str"),
        ((), "returned tuple"),
    ],
)
def test_unusable_outputs_raise_input_error(output, match) -> None:
    with pytest.raises(InputError, match=match):
        extract_logits(output)


def test_wrong_logits_shape_is_reported() -> None:
    model = ImageClassifier(nn.Flatten(), name="flat")  # returns (B, 16) for 1x4x4, fine; 4-D output is not
    assert model(_x()).shape == (2, 16)
    bad = ImageClassifier(nn.Identity(), name="ident")
    with pytest.raises(InputError, match=r"model 'ident' returned shape \(2, 1, 4, 4\)"):
        bad(_x())


def test_mean_std_are_applied_inside_the_wrapper() -> None:
    inner = Wrapped()
    mean, std = [0.25], [0.5]
    model = ImageClassifier(inner, mean=mean, std=std)
    x = _x()
    torch.testing.assert_close(model(x), inner((x - 0.25) / 0.5))
    torch.testing.assert_close(model.predict(x), inner((x - 0.25) / 0.5).detach())
    assert model.describe()["normalize"] == {"mean": mean, "std": std}
    # per-channel for 3 channels
    norm = Normalize([0.1, 0.2, 0.3], [1.0, 2.0, 4.0])
    x3 = torch.ones(1, 3, 2, 2)
    assert norm(x3)[0, :, 0, 0].tolist() == pytest.approx([0.9, 0.4, 0.175])


def test_bad_constructor_arguments() -> None:
    with pytest.raises(InputError, match="std must be positive"):
        ImageClassifier(Wrapped(), mean=[0.0], std=[0.0])
    with pytest.raises(InputError, match="bounds must be finite with low < high"):
        ImageClassifier(Wrapped(), bounds=(1.0, 0.0))
    with pytest.raises(InputError, match="bounds"):
        ImageClassifier(Wrapped(), bounds=(0.0, float("inf")))
    with pytest.raises(InputError, match="give mean and std together"):
        ImageClassifier(Wrapped(), mean=[0.5])
    with pytest.raises(InputError, match="one value per channel each"):
        ImageClassifier(Wrapped(), mean=[0.5, 0.5, 0.5], std=[0.5])


def test_normalisation_that_does_not_fit_the_input_is_an_input_error() -> None:
    model = ImageClassifier(Wrapped(), mean=[0.5] * 3, std=[0.5] * 3, name="rgb")
    with pytest.raises(InputError, match=r"model 'rgb' raised RuntimeError on input of shape \(2, 1, 4, 4\)"):
        model(_x())


def test_as_classifier_wraps_modules_and_passes_classifiers_through() -> None:
    model = ImageClassifier(Wrapped(), labels=["a", "b", "c"])
    assert as_classifier(model) is model
    wrapped = as_classifier(Wrapped(), name="w")
    assert isinstance(wrapped, ImageClassifier) and wrapped.name == "w"
    assert model.num_classes == 3 and model.label(1) == "b" and model.label(7) == "7"


# ---------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "match"),
    [
        pytest.param([[0.0]], "must be a torch.Tensor, got list", id="non-tensor"),
        pytest.param(
            torch.zeros(1, 1, 4, 4, dtype=torch.uint8),
            "must be floating point, got dtype torch.uint8",
            id="int",
        ),
        pytest.param(torch.zeros(1, 4, 4), r"must have shape \(B, C, H, W\), got \(1, 4, 4\)", id="ndim"),
        pytest.param(
            torch.zeros(1, 3, 4, 4),
            r"model 'm' expects images of shape \(1, 4, 4\) \(C, H, W\), batch has \(3, 4, 4\)",
            id="chw",
        ),
        pytest.param(torch.full((1, 1, 4, 4), float("nan")), "contains NaN or Inf", id="nan"),
        pytest.param(torch.full((1, 1, 4, 4), float("inf")), "contains NaN or Inf", id="inf"),
        pytest.param(
            torch.full((1, 1, 4, 4), 1.5),
            r"values lie in \[1.5, 1.5\], outside the model bounds \[0, 1\]",
            id="high",
        ),
        pytest.param(torch.full((1, 1, 4, 4), -0.1), r"outside the model bounds \[0, 1\]", id="low"),
    ],
)
def test_validate_names_the_problem(x, match) -> None:
    model = ImageClassifier(Wrapped(), input_shape=(1, 4, 4), name="m")
    with pytest.raises(InputError, match=match):
        model.validate(x, what="batch")


def test_validate_accepts_good_inputs_and_respects_bounds() -> None:
    ImageClassifier(Wrapped(), input_shape=(1, 4, 4)).validate(_x())
    ImageClassifier(Wrapped()).validate(torch.empty(0, 1, 4, 4))  # empty batch: nothing to check
    wide = ImageClassifier(Wrapped(), bounds=(0, 255))
    wide.validate(torch.full((1, 1, 4, 4), 200.0))
    with pytest.raises(InputError, match=r"\[0, 255\]"):
        wide.validate(torch.full((1, 1, 4, 4), 256.0))


def test_module_errors_become_input_errors_naming_the_model() -> None:
    model = ImageClassifier(Wrapped(), name="tiny")
    with pytest.raises(
        InputError, match=r"model 'tiny' raised RuntimeError on input of shape \(2, 3, 5, 5\)"
    ) as info:
        model(torch.zeros(2, 3, 5, 5))
    assert isinstance(info.value.__cause__, RuntimeError)


# ---------------------------------------------------------------------------------------------------
# modes and gradients
# ---------------------------------------------------------------------------------------------------
class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.bn(self.conv(x))))


def test_eval_mode_forces_eval_and_restores_each_submodule() -> None:
    model = ImageClassifier(Mixed())
    model.train()
    model.module.bn.eval()  # mixed: BatchNorm frozen, Dropout training
    before = {name: m.training for name, m in model.named_modules()}
    stats = model.module.bn.running_mean.clone()
    x = _x(4)
    with model.eval_mode():
        assert not any(m.training for m in model.modules())
        out1, out2 = model(x), model(x)
        torch.testing.assert_close(out1, out2)  # no dropout noise
    assert {name: m.training for name, m in model.named_modules()} == before
    assert torch.equal(model.module.bn.running_mean, stats)
    # restored even when the block raises
    with pytest.raises(KeyError), model.eval_mode():
        raise KeyError("boom")
    assert {name: m.training for name, m in model.named_modules()} == before


def test_predict_runs_in_eval_mode_and_keeps_the_mode() -> None:
    model = ImageClassifier(Mixed())
    model.train()
    x = _x(4)
    torch.testing.assert_close(model.predict(x, batch_size=3), model.predict(x))
    assert model.training and model.module.drop.training and model.module.bn.training
    empty = ImageClassifier(Wrapped(), labels=list("abc")).predict(torch.empty(0, 1, 4, 4))
    assert empty.shape == (0, 3)


def test_frozen_restores_requires_grad_and_grad() -> None:
    model = ImageClassifier(Mixed())
    params = list(model.parameters())
    params[0].requires_grad_(False)  # one parameter frozen by the user
    model(_x()).sum().backward()
    grads = {id(p): p.grad for p in params}
    flags = {id(p): p.requires_grad for p in params}
    assert params[1].grad is not None and params[0].grad is None

    x = _x().requires_grad_(True)
    with model.frozen():
        assert not any(p.requires_grad for p in params)
        model(x).sum().backward()
        assert x.grad is not None
    assert {id(p): p.requires_grad for p in params} == flags
    for p in params:
        assert p.grad is grads[id(p)]  # the same tensors (values untouched), None stays None
    # restored when the block raises, too
    with pytest.raises(ValueError), model.frozen():
        raise ValueError
    assert {id(p): p.requires_grad for p in params} == flags


def test_is_relu_network() -> None:
    relu = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    assert ImageClassifier(relu).is_relu_network()
    assert ImageClassifier(conv, mean=[0.5], std=[0.5]).is_relu_network()
    assert not ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Tanh())).is_relu_network()
    assert not ImageClassifier(Mixed()).is_relu_network()
    assert ImageClassifier(relu).gradients == "exact"


def test_validate_larger_images_only_when_allowed() -> None:
    model = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), input_shape=(3, 8, 8), name="m")
    larger = torch.rand(2, 3, 10, 12)
    with pytest.raises(InputError, match=r"expects images of shape \(3, 8, 8\)"):
        model.validate(larger)
    model.validate(larger, larger_ok=True)  # a probe that crops windows itself may take these
    with pytest.raises(InputError, match="at least 8x8 pixels"):
        model.validate(torch.rand(2, 3, 6, 12), larger_ok=True)
    with pytest.raises(InputError, match="3 channels"):
        model.validate(torch.rand(2, 1, 10, 10), larger_ok=True)
