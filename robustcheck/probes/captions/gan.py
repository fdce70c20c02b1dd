"""The GAN of ``caption-gan`` (Aafaq et al. 2021): perturbation generator, discriminator and their training.

The generator ``G(x, x_target, eps) = eps * tanh(...)`` (so ``|G| <= eps`` exactly) is trained on a
training split of images against a discriminator ``D`` (clean vs perturbed) with loss
``feature mimicking + gan_weight * GAN loss + norm_weight * L2 hinge``; it then attacks unseen
images in one forward pass each. One generator serves every epsilon (``eps`` is an input) and
every target (the target image is).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.errors import ProbeTimeout
from robustcheck.models.captioner import ImageCaptioner
from robustcheck.probes.captions.goals import feature_loss, project


class PerturbationGenerator(nn.Module):
    """``G(x, x_target, eps) -> delta`` ``(B, C, H, W)`` with ``|delta| <= eps`` exactly (``eps * tanh``).

    Inputs: images ``x`` and targets ``x_target`` ``(B, C, H, W)`` rescaled to ``[0, 1]`` and the
    per-sample budget ``eps`` ``(B,)`` in image units. A two-scale conv net (full and half
    resolution) sees ``x``, ``x_target``, their difference and an ``eps`` plane.
    """

    def __init__(self, channels: int = 1, width: int = 32) -> None:
        super().__init__()
        w = width
        self.full = nn.Sequential(
            nn.Conv2d(3 * channels + 1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU()
        )
        self.coarse = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
        )
        self.out = nn.Sequential(
            nn.Conv2d(3 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, x_target: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        e = eps.view(-1, 1, 1, 1).to(x)
        plane = (e * 4.0).expand(-1, 1, *x.shape[2:])  # eps is ~0.03..0.25: bring it to unit scale
        a = self.full(torch.cat([x, x_target, x_target - x, plane], 1))
        b = F.interpolate(self.coarse(a), size=a.shape[2:], mode="nearest")
        return e * torch.tanh(self.out(torch.cat([a, b], 1)))


class Discriminator(nn.Module):
    """Clean (1) vs perturbed (0) logit ``(B,)`` for images ``(B, C, H, W)`` in ``[0, 1]``."""

    def __init__(self, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


@dataclass(frozen=True)
class GANSettings:
    """Training settings of the GAN (the ``caption-gan`` params of the same names)."""

    steps: int
    batch_size: int
    lr: float
    gan_weight: float
    norm_weight: float
    norm_bound: float
    width: int


def to_unit(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Images in ``bounds`` rescaled to ``[0, 1]`` (what the GAN's networks see)."""
    low, high = bounds
    return (x - low) / (high - low)


def perturb(
    generator: PerturbationGenerator,
    x: torch.Tensor,
    x_target: torch.Tensor,
    eps: torch.Tensor,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """Adversarials ``x + G(x, x_target, eps)`` ``(B, C, H, W)`` clipped to ``bounds`` (differentiable).

    ``eps`` ``(B,)`` is in image units; ``G`` already keeps ``|delta| <= eps``, and clipping to
    ``bounds`` only shrinks it.
    """
    delta = generator(to_unit(x, bounds), to_unit(x_target, bounds), eps)
    return project(x, x + delta, eps.view(-1, 1, 1, 1), bounds)


def norm_penalty(delta: torch.Tensor, eps: torch.Tensor, bound: float) -> torch.Tensor:
    """Hinge ``relu(||delta||_2 / (eps * sqrt(dim)) - bound)`` ``(B,)``: penalises perturbations using
    more than ``bound`` of the largest L2 norm the L-inf ball of ``eps`` ``(B,)`` allows."""
    flat = delta.flatten(1)
    return F.relu(flat.norm(dim=1) / (eps * math.sqrt(flat.shape[1])) - bound)


def seeded_modules(generator: torch.Generator, *builders: Callable[[], nn.Module]) -> list[nn.Module]:
    """Build modules with PyTorch's default initialisation drawn from a seed taken from ``generator``,
    so the GAN's start depends on the run seed only (the global RNG state is left untouched)."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [build() for build in builders]


def train_gan(
    model: ImageCaptioner,
    images: torch.Tensor,
    epsilons: list[float],
    settings: GANSettings,
    rng: torch.Generator,
    stop_at: float,
) -> tuple[PerturbationGenerator, int]:
    """Train ``G`` and ``D`` on ``images`` ``(N, C, H, W)`` in ``model.bounds`` (seeded by ``rng``).

    Each step draws a batch of images, a batch of target images from the same set (their encoder
    features are what ``G`` must make the encoder produce) and a budget from ``epsilons``. Stops after
    ``settings.steps``, once ``time.perf_counter()`` passes ``stop_at`` (at least one step) or when the run's
    budget interrupts a model call (:mod:`robustcheck.deadline`).
    Returns the generator in eval mode and the number of steps done. ``model`` should be in eval mode.
    """
    gen_net, disc = seeded_modules(
        rng,
        lambda: PerturbationGenerator(images.shape[1], settings.width),
        lambda: Discriminator(images.shape[1]),
    )
    gen_net, disc = gen_net.to(model.device), disc.to(model.device)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    eps_choices = torch.tensor(epsilons)
    images = images.to(model.device)
    bounds = model.bounds
    steps = 0
    with model.frozen():
        with torch.no_grad():  # target features: fixed, computed once
            features = torch.cat([model.encode(images[i : i + 256]) for i in range(0, len(images), 256)])
        while steps < settings.steps and (steps == 0 or time.perf_counter() <= stop_at):
            b = settings.batch_size
            i = torch.randint(len(images), (b,), generator=rng).to(model.device)
            j = torch.randint(len(images), (b,), generator=rng).to(model.device)
            eps = eps_choices[torch.randint(len(eps_choices), (b,), generator=rng)].to(model.device)
            x = images[i]
            adv = perturb(gen_net, x, images[j], eps, bounds)
            real, fake = to_unit(x, bounds), to_unit(adv, bounds)
            try:
                encoded = model.encode(adv)
            except ProbeTimeout:  # the run's budget ran out inside this step: training ends with the steps done
                break
            loss = (
                feature_loss(encoded, features[j]).mean()
                + settings.gan_weight
                * F.binary_cross_entropy_with_logits(disc(fake), torch.ones(b, device=x.device))
                + settings.norm_weight * norm_penalty(adv - x, eps, settings.norm_bound).mean()
            )
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            if settings.gan_weight > 0:
                _discriminator_step(disc, opt_d, real, fake.detach())
            steps += 1
    return gen_net.eval(), steps


def _discriminator_step(
    disc: Discriminator, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor
) -> None:
    """One step teaching ``disc`` clean (1) from perturbed (0) images ``(B, C, H, W)`` in ``[0, 1]``."""
    real_logits, fake_logits = disc(real), disc(fake)
    loss = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
