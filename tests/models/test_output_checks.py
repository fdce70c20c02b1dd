"""Output checks of the model adapters (robustcheck.models.classifier, .captioner): every forward pass the
harness makes refuses NaN / Inf logits, a wrong batch size and non-2-D logits, naming the model; the
gradient helper refuses non-finite gradients; and an audit of such a model fails (exit 2) instead of
reporting robustness it did not measure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error
from torch import nn

from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import InputError, RequirementError
from robustcheck.models.captioner import ImageCaptioner, Vocabulary
from robustcheck.models.classifier import ImageClassifier, check_finite
from robustcheck.plugins import create_probe

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: a second thread only adds contention


class Linear(nn.Module):
    """A seeded linear classifier over 1x4x4 images (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NaNRows(Linear):
    """NaN logits for the images whose first pixel is above ``threshold`` (Inf with ``inf``)."""

    def __init__(self, threshold: float = 0.5, inf: bool = False) -> None:
        super().__init__()
        self.threshold, self.value = threshold, float("inf") if inf else float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        bad = (x.flatten(1)[:, 0] > self.threshold)[:, None]
        return torch.where(bad, torch.full_like(logits, self.value), logits)


class Rows(Linear):
    """Returns only the first ``rows`` rows of logits (a model that drops part of the batch)."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[: self.rows]


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward (a numerically broken layer)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))


class BrokenGradient(Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(NaNGradient.apply(x))


class Constant(nn.Module):
    """Logits that do not depend on the input (no gradient path at all)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0, 0.0]]).expand(len(x), 3)


def _x(n: int = 4) -> torch.Tensor:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.4  # first pixel <= 0.4
    x[: n // 2, 0, 0, 0] = 0.9  # the first half: first pixel bright
    return x


# ---------------------------------------------------------------------------------------------------
# logits
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("inf", "kind"), [(False, "NaN"), (True, "Inf")])
def test_non_finite_logits_are_an_input_error_naming_the_model(inf: bool, kind: str) -> None:
    model = ImageClassifier(NaNRows(inf=inf), name="my-cnn")
    needle = rf"model 'my-cnn' returned {kind} logits for 2 of 4 inputs"
    with pytest.raises(InputError, match=needle):
        model(_x())
    with pytest.raises(InputError, match=needle):
        model.predict(_x())
    assert model.predict(_x()[2:]).shape == (2, 3)  # finite rows pass


def test_nan_logits_for_non_finite_inputs_are_not_the_models_fault() -> None:
    model = ImageClassifier(Linear(), name="lin")
    x = _x()
    x[0, 0, 1, 1] = float("nan")  # e.g. an attack probing outside the data
    assert torch.isnan(model(x)[0]).all() and torch.isfinite(model(x)[1:]).all()


def test_check_finite_counts_rows_and_names_both_kinds() -> None:
    values = torch.zeros(5, 3)
    values[0, 1], values[3, 0] = float("nan"), float("-inf")
    with pytest.raises(InputError, match=r"model 'm' returned NaN and Inf scores for 2 of 5 inputs"):
        check_finite(values, "model 'm'", "scores")
    check_finite(torch.zeros(0, 3), "model 'm'", "scores")  # empty batch: nothing to check


def test_the_check_keeps_autograd_through_the_model() -> None:
    model = ImageClassifier(Linear(), name="lin")
    x = _x().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("rows", [1, 0])
def test_wrong_batch_size_is_an_input_error(rows: int) -> None:
    model = ImageClassifier(Rows(rows), name="dropper")
    with pytest.raises(
        InputError, match=rf"model 'dropper' returned shape \({rows}, 3\) for 4 inputs: expected one row of logits per input"
    ):
        model(_x())


def test_non_2d_logits_are_an_input_error() -> None:
    model = ImageClassifier(nn.Identity(), name="ident")
    with pytest.raises(InputError, match=r"model 'ident' returned shape \(4, 1, 4, 4\) for 4 inputs: expected 2-D logits"):
        model(_x())


def test_unusable_outputs_name_the_model() -> None:
    class Probs(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"probs": torch.zeros(len(x), 3)}

    with pytest.raises(InputError, match=r"model 'dicty' returned a dict without a 'logits' tensor"):
        ImageClassifier(Probs(), name="dicty")(_x())


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------
def test_input_gradients_match_autograd() -> None:
    model = ImageClassifier(Linear(), name="lin")
    x, y = _x(), torch.tensor([0, 1, 2, 0])
    expected = torch.func.grad(lambda v: nn.functional.cross_entropy(model.module(v), y, reduction="sum"))(x)
    grad = model.input_gradients(x, y, batch_size=3)  # two batches
    assert grad.shape == x.shape and grad.device.type == "cpu"
    torch.testing.assert_close(grad, expected)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # parameters untouched


def test_non_finite_gradients_raise_naming_the_model() -> None:
    model = ImageClassifier(BrokenGradient(), name="broken")
    x, y = _x(), torch.tensor([0, 1, 2, 0])
    with pytest.raises(InputError, match=r"model 'broken' has NaN input gradients for 4 of 4 inputs"):
        model.input_gradients(x, y)
    grad = torch.zeros(4, 1, 4, 4)
    grad[2, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"model 'broken' has Inf input gradients for 1 of 4 inputs"):
        model.check_gradients(grad)


def test_input_gradients_of_a_constant_model_are_zero() -> None:
    grad = ImageClassifier(Constant(), name="const").input_gradients(_x(), torch.tensor([0, 1, 2, 0]))
    assert grad.shape == (4, 1, 4, 4) and not grad.any()


def test_input_gradients_refuse_labels_outside_the_classes() -> None:
    with pytest.raises(InputError, match=r"model 'lin': labels must lie in 0\.\.2"):
        ImageClassifier(Linear(), name="lin").input_gradients(_x(), torch.tensor([0, 1, 5, 0]))


# ---------------------------------------------------------------------------------------------------
# captioner
# ---------------------------------------------------------------------------------------------------
class ConstantDecoder(nn.Module):
    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = value

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, 6)
        logits[..., 2] = 1.0
        logits[0, 0, 3] = self.value
        return logits


def test_captioner_refuses_non_finite_features_and_token_logits() -> None:
    vocabulary = Vocabulary(["a", "b", "c"])
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = _x()
    nan_encoder = ImageCaptioner(NaNRows(), ConstantDecoder(), vocabulary, name="cap")
    with pytest.raises(InputError, match=r"captioner 'cap' encoder returned NaN features for 2 of 4 inputs"):
        nan_encoder.caption(x)
    nan_decoder = ImageCaptioner(encoder, ConstantDecoder(float("nan")), vocabulary, name="cap2")
    with pytest.raises(InputError, match=r"captioner 'cap2' decoder returned NaN token logits for 1 of 4 inputs"):
        nan_decoder.caption(x)
    assert ImageCaptioner(encoder, ConstantDecoder(), vocabulary, name="ok").caption(x) == [""] * 4
    with pytest.raises(RequirementError, match="no class logits"):
        nan_decoder.input_gradients(x, torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------
# probes and audits on such models
# ---------------------------------------------------------------------------------------------------
class OffGrid(nn.Module):
    """A seeded CNN over 3x8x8 images that returns NaN for images off the 1/255 grid (perturbed inputs)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        scaled = x.detach() * 255
        off = ((scaled - scaled.round()).abs() > 1e-3).flatten(1).any(1)
        return torch.where(off[:, None], torch.full_like(logits, float("nan")), logits)


def _grid_data(n: int = 8) -> ImageDataset:
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(2)).float() / 255
    return ImageDataset(x, torch.arange(n) % 4, ["a", "b", "c", "d"], name="grid")


def test_a_probe_on_a_model_that_fails_on_perturbed_inputs_raises_naming_it() -> None:
    model, data = ImageClassifier(OffGrid().eval(), input_shape=(3, 8, 8), name="off-grid"), _grid_data()
    assert torch.isfinite(model.predict(data.x)).all()  # clean inputs are fine
    with pytest.raises(InputError, match=r"model 'off-grid' returned NaN logits for \d+ of \d+ inputs"):
        create_probe("fgsm", epsilons=[0.0, 0.01])(model, data)


MODELS_SOURCE = '''
import torch
from torch import nn


class OffGrid(nn.Module):
    def __init__(self, always):
        super().__init__()
        torch.manual_seed(0)
        self.always = always
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))

    def forward(self, x):
        logits = self.net(x)
        scaled = x.detach() * 255
        off = ((scaled - scaled.round()).abs() > 1e-3).flatten(1).any(1) | self.always
        return torch.where(off[:, None], torch.full_like(logits, float("nan")), logits)


def always_nan():
    return OffGrid(True).eval()


def nan_when_perturbed():
    return OffGrid(False).eval()
'''


@pytest.fixture
def nan_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``rc_nan_models`` (factories ``always_nan`` and ``nan_when_perturbed``) importable, and an 8x8 npz; returns
    the npz path."""
    folder = tmp_path / "nanmods"
    folder.mkdir()
    (folder / "rc_nan_models.py").write_text(MODELS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "rc_nan_models", raising=False)
    rng = np.random.default_rng(3)
    path = tmp_path / "grid.npz"
    np.savez(path, x=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), y=np.arange(16) % 4, classes=np.array(list("abcd")))
    return path


def test_audit_of_a_model_with_nan_logits_exits_2_before_any_run(cli: Any, nan_models: Path, tmp_path: Path) -> None:
    result = cli(
        "audit", "--model", "rc_nan_models:always_nan:input_shape=[3,8,8]", "--data", nan_models,
        "--probe", "fgsm", "--defense", "none", "--samples", "8", "--quiet", "--out", tmp_path / "out",
    )  # fmt: skip
    assert result.code == 2, result
    assert_one_line_error(result.err, "model 'rc_nan_models:always_nan' returned NaN logits for 2 of 2 inputs")
    assert not (tmp_path / "out" / "results.json").exists()


def test_audit_of_a_model_with_nan_logits_on_perturbed_inputs_fails_that_run(
    cli: Any, nan_models: Path, tmp_path: Path
) -> None:
    import json

    out = tmp_path / "out"
    result = cli(
        "audit", "--model", "rc_nan_models:nan_when_perturbed:input_shape=[3,8,8]", "--data", nan_models,
        "--probe", "fgsm:epsilons=[0,0.01]", "--probe", "translation:windows=[]", "--defense", "none",
        "--samples", "8", "--quiet", "--out", out,
    )  # fmt: skip
    assert result.code == 2, result
    assert "model 'rc_nan_models:nan_when_perturbed' returned NaN logits" in result.err
    status = {run["probe"]: run["status"] for run in json.loads((out / "results.json").read_text())["runs"]}
    assert status == {"fgsm": "error", "translation": "ok"}, status  # shifted crops stay on the grid
