"""Deterministic training of the built-in zoo (``robustcheck zoo train``): plain or PGD adversarial training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from robustcheck.data.loading import load_data
from robustcheck.seeding import seed_everything
from robustcheck.zoo import ZOO, AdversarialTraining

TRAIN_SEED = 0
BATCH_SIZE = 64


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on images ``x`` ``(N, C, H, W)`` with labels ``y`` ``(N,)``."""
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def pgd_examples(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AdversarialTraining, generator: torch.Generator
) -> torch.Tensor:
    """Linf PGD adversarials of ``x`` ``(N, C, H, W)`` in ``[0, 1]`` for training: a uniformly random start in the
    ``attack.epsilon`` ball (drawn from ``generator``), ``attack.steps`` signed-gradient steps of
    ``2.5 * epsilon / steps`` on the cross-entropy, each projected back into the ball and ``[0, 1]``.

    The model is put in eval mode while crafting (and its mode restored) and parameters get no gradients."""
    eps, alpha = attack.epsilon, 2.5 * attack.epsilon / attack.steps
    training = model.training
    model.eval()
    delta = (2 * torch.rand(x.shape, generator=generator) - 1) * eps
    adversarial = (x + delta).clamp(0, 1)
    for _ in range(attack.steps):
        adversarial.requires_grad_(True)
        loss = F.cross_entropy(model(adversarial), y)
        (grad,) = torch.autograd.grad(loss, adversarial)
        stepped = adversarial.detach() + alpha * grad.sign()
        adversarial = torch.minimum(torch.maximum(stepped, x - eps), x + eps).clamp(0, 1)
    model.train(training)
    return adversarial.detach()


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Turn on torch's deterministic algorithms for a training run, then restore the caller's setting
    (a process-wide switch: do not leave it on)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def train(name: str, out_dir: Path | None = None, *, verbose: bool = True) -> tuple[Path, float]:
    """Train zoo model ``name`` from scratch; write ``<out_dir>/<name>.pt``; return (path, test accuracy).

    Same seed, same thread count and same torch build give bit-identical weights.
    """
    with deterministic_algorithms():
        return _train(name, out_dir, verbose=verbose)


def _train(name: str, out_dir: Path | None, *, verbose: bool) -> tuple[Path, float]:
    spec = ZOO[name]
    seed_everything(TRAIN_SEED)
    train_set = load_data(spec.data, split="train")
    test_set = load_data(spec.data, split="test")
    module = spec.build()
    model = spec.wrap(module)
    optimizer = torch.optim.Adam(module.parameters(), lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.epochs)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    for epoch in range(spec.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            inputs = train_set.x[idx]
            if spec.adversarial is not None:  # train on the batch's PGD adversarials (robust model)
                inputs = pgd_examples(model, inputs, train_set.y[idx], spec.adversarial, generator)
            loss = F.cross_entropy(model(inputs), train_set.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if verbose and (epoch + 1) % 10 == 0:
            model.eval()
            print(f"{name} epoch {epoch + 1}/{spec.epochs}: loss {loss.item():.4f}, test accuracy {accuracy(model, test_set.x, test_set.y):.4f}")
    model.eval()
    test_accuracy = accuracy(model, test_set.x, test_set.y)
    path = (Path(out_dir) if out_dir else spec.weights_path.parent) / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path, test_accuracy
