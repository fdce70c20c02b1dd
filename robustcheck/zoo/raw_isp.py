"""Learned camera pipeline of the ``raw-isp`` defense (Zhang, Dong, Heide, ECCV 2022, "All You Need is RAW").

Two small CNNs, trained by :func:`train` on pairs made by the classic pipeline of
:mod:`robustcheck.defenses.camera` (no adversarial images):

* ``F`` (:class:`RGBToRAW`): sRGB ``(B, 3, H, W)`` in ``[0, 1]`` -> packed RGGB RAW ``(B, 4, H, W)``
  (R, Gr, Gb, B of a sensor at twice the resolution: one quad per pixel), trained to match
  ``pack(unprocess(x))``;
* ``G`` (:class:`RAWToRGB`): packed RAW ``(B, 4, H, W)`` -> sRGB ``(B, 3, H, W)``, trained to recover
  ``x`` from the classic RAW with sensor noise added (noise augmentation), so it denoises as it renders.

Training data are bundled with installed packages: the digits-rgb32 training split and 32x32 crops of
scikit-learn's two sample photos at three scales. Training is deterministic (fixed seed, deterministic
algorithms); ``robustcheck zoo train raw-isp-learned`` reproduces the shipped weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.defenses import camera

NAME = "raw-isp-learned"
WEIGHTS_PATH = Path(__file__).parent / f"{NAME}.pt"
TRAIN_SEED = 0
PATCH = 32
#: networks are fully convolutional (receptive field 9 px for F, 11 px for G): train on 16x16 crops
CROP = 16
PHOTO_PATCHES = 3000
STEPS = 1200
BATCH_SIZE = 32
LR = 2e-3
#: noise augmentation: shot-noise factor log-uniform in this range (read noise from Brooks's fit) ...
TRAIN_NOISE_RANGE = (1e-5, 2e-3)
#: ... and this fraction of training samples without noise.
CLEAN_FRACTION = 0.25


def _conv_stack(channels: list[int]) -> nn.Sequential:
    """3x3 convolutions (same padding) with ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="replicate"))
        if i < len(channels) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RGBToRAW(nn.Module):
    """F: sRGB ``(B, 3, H, W)`` in ``[0, 1]`` -> packed RAW ``(B, 4, H, W)`` in ``[0, 1]``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = _conv_stack([3, width, width, width, 4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).clamp(0.0, 1.0)


class RAWToRGB(nn.Module):
    """G: packed RAW ``(B, 4, H, W)`` -> sRGB ``(B, 3, H, W)`` in ``[0, 1]``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = _conv_stack([4, width, width, width, width, 3])

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.net(raw).clamp(0.0, 1.0)


class LearnedCamera(nn.Module):
    """Both networks; ``forward`` is the noise-free round trip ``G(F(x))`` on ``(B, 3, H, W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.f = RGBToRAW()
        self.g = RAWToRGB()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.f(x))


def load_learned_camera(weights: str | Path | None = None) -> LearnedCamera:
    """The learned camera with the shipped (or the given) weights, in eval mode."""
    from robustcheck.errors import InputError
    from robustcheck.loading import load_state_dict

    path = weights or WEIGHTS_PATH
    model = LearnedCamera()
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as exc:  # missing / unexpected keys or wrong shapes
        raise InputError(f"weights {str(path)!r} do not fit the learned RAW camera: {exc}") from exc
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------------------------------
def photo_patches(count: int, generator: torch.Generator, size: int = PATCH) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` crops ``(count, 3, size, size)`` in ``[0, 1]`` of scikit-learn's
    two bundled photos, each photo taken at full, half and quarter scale (more texture per crop)."""
    from sklearn.datasets import load_sample_images

    sources = []
    for image in load_sample_images().images:
        full = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().unsqueeze(0) / 255.0
        for scale in (1.0, 0.5, 0.25):
            sources.append(full if scale == 1.0 else F.interpolate(full, scale_factor=scale, mode="area"))
    crops = []
    for k in range(count):
        src = sources[k % len(sources)]
        top = int(torch.randint(0, src.shape[2] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, src.shape[3] - size + 1, (1,), generator=generator))
        crops.append(src[0, :, top : top + size, left : left + size])
    return torch.stack(crops)


def training_images(generator: torch.Generator) -> torch.Tensor:
    """Digits-rgb32 training images and photo crops, ``(N, 3, 32, 32)`` in ``[0, 1]``."""
    from robustcheck.data import digits_rgb32

    return torch.cat([digits_rgb32("train").x, photo_patches(PHOTO_PATCHES, generator)])


def augment(x: torch.Tensor, generator: torch.Generator, size: int = CROP) -> torch.Tensor:
    """A random ``size`` x ``size`` crop, random flips and a colour-channel permutation of a batch
    ``(B, 3, H, W)`` (one draw per batch)."""
    top = int(torch.randint(0, x.shape[2] - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, x.shape[3] - size + 1, (1,), generator=generator))
    x = x[:, :, top : top + size, left : left + size]
    if bool(torch.rand(1, generator=generator) < 0.5):
        x = x.flip(-1)
    if bool(torch.rand(1, generator=generator) < 0.5):
        x = x.flip(-2)
    return x[:, torch.randperm(3, generator=generator)]


def noisy_raw(raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Packed RAW ``(B, 4, H, W)`` with per-sample sensor noise at a random level (some samples clean)."""
    low, high = (math.log(v) for v in TRAIN_NOISE_RANGE)
    out = []
    for sample in raw:
        if bool(torch.rand(1, generator=generator) < CLEAN_FRACTION):
            out.append(sample)
            continue
        shot = math.exp(low + (high - low) * float(torch.rand(1, generator=generator)))
        out.append(camera.add_sensor_noise(sample, shot, generator=generator))
    return torch.stack(out)


def classic_raw(x: torch.Tensor) -> torch.Tensor:
    """The classic pipeline's packed RAW ``(B, 4, H, W)`` for sRGB ``(B, 3, H, W)``."""
    return camera.pack(camera.unprocess(x, method="2x2"))


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
def train(name: str = NAME, out_dir: Path | None = None, *, verbose: bool = True) -> tuple[Path, float]:
    """Train F and G from scratch; write ``<out_dir>/<name>.pt``; return (path, PSNR in dB).

    The metric is the mean PSNR of the noise-free learned round trip ``G(F(x))`` against ``x`` on the
    digits-rgb32 test split. Trains on one thread with a fixed seed: the same torch build gives
    bit-identical weights (the shipped ones took about 2 CPU-minutes).
    """
    if name != NAME:
        raise ValueError(f"unknown learned camera {name!r}; this module trains {NAME!r}")
    from robustcheck.zoo.train import deterministic_algorithms

    with deterministic_algorithms():
        return _train(name, out_dir, verbose=verbose)


def _train(name: str, out_dir: Path | None, *, verbose: bool) -> tuple[Path, float]:
    from robustcheck.data import digits_rgb32
    from robustcheck.runner import seed_everything

    seed_everything(TRAIN_SEED)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    images = training_images(generator)
    model = LearnedCamera()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    model.train()
    for step in range(STEPS):
        idx = torch.randint(0, len(images), (BATCH_SIZE,), generator=generator)
        x = augment(images[idx], generator)
        with torch.no_grad():
            raw = classic_raw(x)
            noisy = noisy_raw(raw, generator)
        # F learns the classic unprocessing; G learns to render (and denoise) noisy classic RAW
        loss_f = F.mse_loss(model.f.net(x), raw)
        loss_g = F.l1_loss(model.g.net(noisy), x)
        optimizer.zero_grad()
        (loss_f + loss_g).backward()
        optimizer.step()
        scheduler.step()
        if verbose and (step + 1) % 250 == 0:
            print(f"{name} step {step + 1}/{STEPS}: F mse {loss_f.item():.2e}, G l1 {loss_g.item():.4f}")
    model.eval()
    test = digits_rgb32("test").x
    with torch.no_grad():
        metric = float(camera.psnr(test, model(test)).mean())
    path = (Path(out_dir) if out_dir else WEIGHTS_PATH.parent) / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    if verbose:
        print(f"{name}: noise-free round-trip PSNR on digits-rgb32 test {metric:.2f} dB -> {path}")
    return path, metric
