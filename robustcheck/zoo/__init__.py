"""Built-in model zoo: small models trained by our own code, deterministically, on bundled data.

Weights ship beside this file (``<name>.pt``, loaded with ``weights_only=True``) and are
reproduced by ``robustcheck zoo train``. Each model names its default data source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from robustcheck.data.builtin import DIGIT_CLASSES
from robustcheck.errors import InputError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_state_dict

WEIGHTS_DIR = Path(__file__).parent


def _mlp() -> nn.Module:
    # 64-32-32-10: small enough for exact (Z3 / MILP) local verification.
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def _wide_mlp() -> nn.Module:
    # 64-128-128-10: adversarial training needs more capacity than clean training for the same accuracy.
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 16 x 16
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 8 x 8
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 4 x 4
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip


@dataclass(frozen=True)
class AdversarialTraining:
    """PGD adversarial training (Madry et al. 2018): every batch is replaced by its adversarial, crafted with
    ``steps`` Linf PGD steps of ``2.5 * epsilon / steps`` from a uniformly random start in the ``epsilon`` ball."""

    epsilon: float
    steps: int = 7


@dataclass(frozen=True)
class ZooSpec:
    """How to build, train and wrap one built-in model.

    ``adversarial``: train on PGD adversarials instead of clean images (a robust model).
    """

    name: str
    build: Callable[[], nn.Module]
    data: str
    input_shape: tuple[int, int, int]
    epochs: int
    lr: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    adversarial: AdversarialTraining | None = None

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.pt"

    def wrap(self, module: nn.Module) -> ImageClassifier:
        return ImageClassifier(
            module,
            bounds=(0.0, 1.0),
            mean=self.mean,
            std=self.std,
            labels=DIGIT_CLASSES,
            input_shape=self.input_shape,
            name=self.name,
            default_data=self.data,
        )


ZOO: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in (
        ZooSpec("digits-mlp", _mlp, "digits", (1, 8, 8), epochs=60, lr=3e-3),
        ZooSpec("digits-cnn", _cnn, "digits-rgb32", (3, 32, 32), epochs=30, lr=3e-3, mean=(0.5,) * 3, std=(0.5,) * 3),
        ZooSpec(
            "digits-mlp-robust", _wide_mlp, "digits", (1, 8, 8), epochs=100, lr=3e-3,
            adversarial=AdversarialTraining(epsilon=0.15),
        ),  # fmt: skip
    )
}


#: Model cards of the built-in classifiers, for leaderboards (field -> text; see ``robustcheck.reports.leaderboard``).
MODEL_CARDS: dict[str, dict[str, str]] = {
    "digits-mlp": {
        "architecture": "MLP 64-32-32-10 (ReLU)",
        "training": "standard (Adam, 60 epochs)",
        "extra_data": "none",
        "reference": "robustcheck zoo",
        "licence": "MIT",
    },
    "digits-cnn": {
        "architecture": "CNN 3 conv + 1 linear",
        "training": "standard (Adam, 30 epochs)",
        "extra_data": "none",
        "reference": "robustcheck zoo",
        "licence": "MIT",
    },
    "digits-mlp-robust": {
        "architecture": "MLP 64-128-128-10 (ReLU)",
        "training": "PGD adversarial training, Linf 0.15, 7 steps (Madry et al. 2018)",
        "extra_data": "none",
        "reference": "robustcheck zoo",
        "licence": "MIT",
    },
}


@dataclass(frozen=True)
class Trainer:
    """How ``robustcheck zoo train NAME`` reproduces one shipped weight file.

    ``function`` is an import path ``"module:function"`` called as ``function(name, out_dir, verbose=...)``
    and returning ``(weights path, quality)``; ``quality`` (named ``metric``) must reach ``minimum``.
    """

    function: str
    metric: str
    minimum: float | None


#: Everything ``robustcheck zoo train`` can retrain: the classifiers above plus non-classifier weights.
TRAINERS: dict[str, Trainer] = {
    **{name: Trainer("robustcheck.zoo.train:train", "test accuracy", 0.95) for name in ZOO},
    "digits-captioner": Trainer("robustcheck.zoo.captioner:train", "held-out exact-match captions", 0.90),
    "digits-captioner-b": Trainer("robustcheck.zoo.captioner:train", "held-out exact-match captions", 0.90),
    "raw-isp-learned": Trainer("robustcheck.zoo.raw_isp:train", "round-trip PSNR (dB)", None),
}


def load_zoo_model(name: str, weights: str | Path | None = None) -> ImageClassifier:
    """Build ``name`` and load its shipped (or the given) weights; the model is in eval mode."""
    spec = ZOO[name]
    module = spec.build()
    path = weights or spec.weights_path
    try:
        module.load_state_dict(load_state_dict(path))
    except RuntimeError as exc:  # missing / unexpected keys or wrong shapes
        raise InputError(f"weights {str(path)!r} do not fit model {name!r}: {exc}") from exc
    return spec.wrap(module.eval())


def digits_mlp(weights: str | None = None) -> ImageClassifier:
    """64-32-32-10 ReLU MLP on 1x8x8 bundled digits (exactly verifiable)."""
    return load_zoo_model("digits-mlp", weights)


def digits_mlp_robust(weights: str | None = None) -> ImageClassifier:
    """64-128-128-10 ReLU MLP on 1x8x8 bundled digits, PGD adversarially trained at Linf epsilon 0.15 (a robust
    model, to tell strong attacks from weak ones)."""
    return load_zoo_model("digits-mlp-robust", weights)


def digits_cnn(weights: str | None = None) -> ImageClassifier:
    """Small 3-layer CNN on 3x32x32 coloured digits (digits-rgb32), normalisation inside the wrapper."""
    return load_zoo_model("digits-cnn", weights)
