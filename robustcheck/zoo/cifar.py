"""A small CIFAR-10 CNN and its training recipe, for slow tests and benchmarks on the shared CIFAR-10 images.

Nothing here downloads data: callers pass the images (e.g. ``../shared/data/cifar10-test-jpeg.npz``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN, CIFAR_STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def held_out_split(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, held_out)`` into labels ``y`` ``(N,)``: every fifth image is held out.

    ``train`` is in file order; ``held_out`` cycles through the classes (0, 1, ..., 9, 0, 1, ...), so any
    prefix of it is class-balanced (the shared CIFAR-10 file is sorted by class).
    """
    held = torch.arange(len(y)) % 5 == 0
    index = torch.nonzero(held).flatten().numpy()
    labels = y[index].numpy()
    rank = np.zeros(len(index), dtype=np.int64)  # position of each image within its class
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    return torch.nonzero(~held).flatten(), torch.from_numpy(index[np.lexsort((labels, rank))])


def cifar_cnn(stem: int = 1) -> nn.Sequential:
    """Five conv-BN-ReLU blocks and three max-pools on ``(B, 3, 32 * stem, 32 * stem)`` inputs -> 10 logits.

    ``stem > 1`` puts a ``stem x stem`` stride-``stem`` convolution first (a patchify stem, as in
    ConvNeXt/ViT), so images ``stem`` times larger cost about the same as 32 x 32 ones.
    """

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    head = [nn.Conv2d(3, 3, stem, stride=stem)] if stem > 1 else []
    return nn.Sequential(
        *head,
        *block(3, 32), *block(32, 32), nn.MaxPool2d(2),    # 32 x 16 x 16
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),   # 64 x 8 x 8
        *block(64, 128), nn.MaxPool2d(2),                  # 128 x 4 x 4
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(128 * 16, 10),
    )  # fmt: skip


def train_cifar_cnn(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    crop: int = 32,
    pad: int = 4,
    stem: int = 1,
    epochs: int = 12,
    seed: int = 0,
) -> nn.Sequential:
    """Train :func:`cifar_cnn` on ``x`` ``(N, 3, H, W)`` in ``[0, 1]`` and labels ``y`` ``(N,)``.

    Adam with a one-cycle schedule, batches of 128, horizontal flips and a random ``crop`` x ``crop``
    window of each image reflect-padded by ``pad`` px (the standard CIFAR recipe is ``crop=32, pad=4``
    on 32 x 32 images). Deterministic for a seed on one torch build.
    """
    torch.manual_seed(seed)
    module = cifar_cnn(stem)
    optimizer = torch.optim.Adam(module.parameters(), lr=2e-3)
    steps_per_epoch = -(-len(x) // 128)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    span = x.shape[-1] + 2 * pad - crop + 1  # crop positions per axis
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 128):
            batch = x[order[start : start + 128]]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
            padded = F.pad(batch, (pad,) * 4, mode="reflect") if pad else batch
            ox, oy = torch.randint(0, span, (2, len(batch)), generator=generator).tolist()
            batch = torch.stack(
                [
                    padded[i, :, b : b + crop, a : a + crop]
                    for i, (a, b) in enumerate(zip(ox, oy, strict=True))
                ]
            )
            loss = F.cross_entropy(module((batch - mean) / std), y[order[start : start + 128]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return module.eval()
