"""Learned camera pipeline of the ``raw-isp`` defense (Zhang, Dong, Heide, ECCV 2022, "All You Need is RAW").

Two CNNs, trained by :func:`train` on pairs made by the classic pipeline of
:mod:`robustcheck.ops.camera` (no adversarial images):

* ``F`` (:class:`RGBToRAW`): sRGB ``(B, 3, H, W)`` in ``[0, 1]`` -> packed RGGB RAW ``(B, 4, H, W)``
  (R, Gr, Gb, B of a sensor at twice the resolution: one quad per pixel), five 3x3 convolutions as in
  the paper (width 64), trained to match ``pack(unprocess(x))`` and to render back to ``x`` classically;
* ``G`` (:class:`RAWToRGB`): packed RAW ``(B, 4, H, W)`` -> sRGB ``(B, 3, H, W)``, a small multi-scale
  U-Net (the paper's G is the multi-scale PyNET) that refines the classic ISP's rendering of the RAW
  image; trained to recover ``x`` from the classic RAW with sensor noise added (noise augmentation),
  so it denoises as it renders.

Training data are bundled with installed packages: the digits-rgb32 training split, crops of
foolbox's twenty ImageNet sample photos and scikit-learn's two sample photos at 1/2, 1/4 and 1/8
scale, and foolbox's twenty CIFAR-100 samples (no CIFAR-10 image, so CIFAR-10 evaluations stay
unseen). Training is deterministic (fixed seed, deterministic algorithms);
``robustcheck zoo train raw-isp-learned`` reproduces the shipped weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.data.builtin import digits_rgb32
from robustcheck.data.formats.foolbox import foolbox_cifar100, foolbox_photos
from robustcheck.errors import InputError
from robustcheck.models.loading import load_state_dict
from robustcheck.ops import camera
from robustcheck.seeding import seed_everything
from robustcheck.zoo.train import deterministic_algorithms

NAME = "raw-isp-learned"
WEIGHTS_PATH = Path(__file__).parent / f"{NAME}.pt"
TRAIN_SEED = 0
PATCH = 32
PHOTO_PATCHES = 6000
#: photo scales the patches are cut at (downscaled photos hold more texture per patch, like CIFAR)
PHOTO_SCALES = (0.5, 0.25, 0.125)
STEPS = 1000
BATCH_SIZE = 32
#: learning rates of F and G
LR_F, LR_G = 2e-3, 1e-3
#: noise augmentation: shot-noise factor log-uniform in this range (read noise from Brooks's fit) ...
TRAIN_NOISE_RANGE = (1e-5, 1e-2)
#: ... and this fraction of training samples without noise.
CLEAN_FRACTION = 0.2
#: G's widths at full, 1/2 and 1/4 resolution
G_WIDTH = 32


def _conv_stack(channels: list[int], relu_last: bool = False) -> nn.Sequential:
    """3x3 convolutions (same padding) with ReLU between them (and after the last if ``relu_last``)."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="replicate"))
        if relu_last or i < len(channels) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RGBToRAW(nn.Module):
    """F: sRGB ``(B, 3, H, W)`` in ``[0, 1]`` -> packed RAW ``(B, 4, H, W)`` in ``[0, 1]``."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = _conv_stack([3, width, width, width, width, 4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).clamp(0.0, 1.0)


class RAWToRGB(nn.Module):
    """G: packed RAW ``(B, 4, H, W)`` in ``[0, 1]`` -> sRGB ``(B, 3, H, W)`` in ``[0, 1]``, any H, W.

    ``classic + residual``: the classic forward ISP renders the RAW image, and a U-Net (two
    downsamplings, skip connections) reading the RAW image and that rendering adds a correction.
    Starting from the classic rendering keeps fidelity high; the correction learns to remove noise.
    """

    def __init__(self, width: int = G_WIDTH) -> None:
        super().__init__()
        w = width
        self.enc1 = _conv_stack([4 + 3, w, w], relu_last=True)
        self.enc2 = _conv_stack([w, 2 * w, 2 * w], relu_last=True)
        self.enc3 = _conv_stack([2 * w, 4 * w, 4 * w], relu_last=True)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _conv_stack([4 * w, 2 * w, 2 * w], relu_last=True)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _conv_stack([2 * w, w, w], relu_last=True)
        self.out = nn.Conv2d(w, 3, 1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        base = camera.process(camera.unpack(raw), method="2x2")
        height, width = raw.shape[-2:]
        # replicate-pad to a multiple of 4 for the two downsamplings; cropped off at the end
        z = F.pad(torch.cat([raw, base], dim=1), (0, -width % 4, 0, -height % 4), mode="replicate")
        e1 = self.enc1(z)
        e2 = self.enc2(F.avg_pool2d(e1, 2))
        e3 = self.enc3(F.avg_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return (base + self.out(d1)[..., :height, :width]).clamp(0.0, 1.0)


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
    """``count`` random ``size`` x ``size`` crops ``(count, 3, size, size)`` in ``[0, 1]`` of foolbox's
    ImageNet sample photos and scikit-learn's sample photos, each taken at :data:`PHOTO_SCALES`."""
    from sklearn.datasets import load_sample_images

    arrays = foolbox_photos("imagenet") + [image / np.float32(255.0) for image in load_sample_images().images]
    photos = [torch.from_numpy(a.transpose(2, 0, 1).copy()).float().unsqueeze(0) for a in arrays]
    sources = [F.interpolate(photo, scale_factor=s, mode="area") for photo in photos for s in PHOTO_SCALES]
    crops = []
    for k in range(count):
        src = sources[k % len(sources)]
        top = int(torch.randint(0, src.shape[2] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, src.shape[3] - size + 1, (1,), generator=generator))
        crops.append(src[0, :, top : top + size, left : left + size])
    return torch.stack(crops)


def training_images(generator: torch.Generator) -> torch.Tensor:
    """Digits-rgb32 training images, photo crops and foolbox's CIFAR-100 samples, ``(N, 3, 32, 32)`` in ``[0, 1]``."""
    return torch.cat([digits_rgb32("train").x, photo_patches(PHOTO_PATCHES, generator), foolbox_cifar100().x])


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and a colour-channel permutation of a batch ``(B, 3, H, W)`` (one draw per batch)."""
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
    bit-identical weights (the shipped ones took about 8 CPU-minutes).
    """
    if name != NAME:
        raise ValueError(f"unknown learned camera {name!r}; this module trains {NAME!r}")
    with deterministic_algorithms():
        return _train(name, out_dir, verbose=verbose)


def _train(name: str, out_dir: Path | None, *, verbose: bool) -> tuple[Path, float]:
    seed_everything(TRAIN_SEED)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    images = training_images(generator)
    model = LearnedCamera()
    optimizer = torch.optim.Adam([{"params": model.f.parameters(), "lr": LR_F}, {"params": model.g.parameters(), "lr": LR_G}])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    model.train()
    for step in range(STEPS):
        idx = torch.randint(0, len(images), (BATCH_SIZE,), generator=generator)
        x = augment(images[idx], generator)
        with torch.no_grad():
            raw = classic_raw(x)
            noisy = noisy_raw(raw, generator)
        # F learns the classic unprocessing; G learns to render (and denoise) noisy classic RAW
        # F matches the classic RAW, and its classic rendering matches x: the RAW loss alone underweights
        # dark pixels, whose errors the sRGB gamma magnifies
        raw_f = model.f.net(x)
        loss_f = F.mse_loss(raw_f, raw) + 0.1 * F.l1_loss(camera.process(camera.unpack(raw_f.clamp(0.0, 1.0))), x)
        loss_g = F.l1_loss(model.g(noisy), x)
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
