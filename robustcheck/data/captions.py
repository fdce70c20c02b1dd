"""Caption data: :class:`CaptionDataset` (images with one reference caption each) and the built-in
``digits-scenes`` source that renders captioned scenes of handwritten digits.

Caption data is an :class:`~robustcheck.data.dataset.ImageDataset` whose integer labels ``y`` index its
``captions`` list, so every part of the harness that moves labelled images around (heads, runners, stores)
moves caption data too. Captioners themselves live in :mod:`robustcheck.models.captioner`.

``digits-scenes`` renders 2 to 4 real handwritten digits of scikit-learn's bundled set on a ``1 x 16 x 48``
canvas, captioned left to right ("seven two nine"); see :func:`render_scenes` for the scene design.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from robustcheck.data.builtin import _digits_split
from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import InputError, UsageError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Scene canvas ``(C, H, W)``: room for four 8x8 digits with gaps and vertical jitter.
SCENE_SHAPE = (1, 16, 48)
MIN_DIGITS, MAX_DIGITS = 2, 4
#: Digits sit in the leftmost slots of 12 columns each (one slot per word), jittered inside them.
SLOT_WIDTH = SCENE_SHAPE[2] // MAX_DIGITS
#: Scene style (see :func:`render_scenes`): paper brightness, ink contrast, sensor noise std.
BACKGROUND = (0.2, 0.5)
CONTRAST = (0.3, 0.6)
NOISE_STD = 0.04
#: Seeds of the fixed held-out (``test``) and training scene sets.
SCENE_SEEDS = {"train": 11, "test": 12}
DEFAULT_SCENES = {"train": 2000, "test": 500}


# -- caption data -------------------------------------------------------------------------------
@dataclass
class CaptionDataset(ImageDataset):
    """Images with one reference caption each: ``captions[y[i]]`` is the caption of ``x[i]``.

    ``y`` holds int64 indices into ``captions`` (so heads and subsets keep working).
    """

    captions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.y) and int(self.y.max()) >= len(self.captions):
            raise InputError(
                f"{self.name}: caption index {int(self.y.max())} out of range for {len(self.captions)} captions"
            )

    def caption_of(self, index: int) -> str:
        return self.captions[int(self.y[index])]

    @property
    def texts(self) -> list[str]:
        """The reference caption of every sample, in order."""
        return [self.captions[i] for i in self.y.tolist()]

    def head(self, n: int | None) -> CaptionDataset:
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise UsageError(f"number of samples must be positive, got {n}")
        return self.subset(torch.arange(n))

    def sample(self, n: int | None, seed: int = 0) -> CaptionDataset:
        """A seeded random sample of ``n`` samples (``None``: all, shuffled): labels index captions
        here, so there are no classes to stratify by. Same data, ``n`` and ``seed``, same samples."""
        order = np.random.default_rng(seed % 2**64).permutation(len(self))[: self._sample_size(n)]
        return self.subset(torch.from_numpy(order.astype(np.int64)))

    def subset(self, index: torch.Tensor) -> CaptionDataset:
        """The samples at ``index`` (int64 ``(M,)``), re-indexed captions included."""
        index = torch.as_tensor(index, dtype=torch.long)
        texts = [self.captions[int(self.y[i])] for i in index.tolist()]
        return CaptionDataset(
            self.x[index],
            torch.arange(len(texts)),
            None,
            self.name,
            self.bounds,
            dict(self.meta),
            captions=texts,
            indices=self._source_index(index),
        )


def as_caption_data(data: ImageDataset) -> CaptionDataset:
    """``data`` if it carries captions, else :class:`InputError` (caption probes need references)."""
    if not isinstance(data, CaptionDataset):
        raise InputError(
            f"data {data.name!r} has no captions: caption probes need caption data (e.g. digits-scenes)"
        )
    return data


# -- digits scenes ------------------------------------------------------------------------------
def render_scenes(
    digits: np.ndarray, labels: np.ndarray, n: int, seed: int
) -> tuple[torch.Tensor, list[str]]:
    """Render ``n`` scenes ``(n, 1, 16, 48)`` in ``[0, 1]`` from 8x8 digit images ``(M, 1, 8, 8)``.

    Each scene holds 2 to 4 digits drawn at random from ``digits``, one per 12-column slot from the
    left (random offset of 0-4 columns inside the slot, 0-8 rows vertically), captioned by their
    words left to right. Slots keep the word order learnable in a few CPU minutes (with free gaps
    a small CNN+LSTM plateaus at predicting the count only). Style, chosen so the task stays
    honest for attacks (clean high-contrast synthetic scenes are far harder to steer than real
    photos; see METHODS.md): grey paper of brightness U(0.2, 0.5), ink contrast U(0.3, 0.6) on top
    of it, and Gaussian sensor noise of std 0.04, clipped to ``[0, 1]`` -- like a dim photo of
    handwriting. Same seed, same scenes.
    """
    rng = np.random.default_rng(seed)
    _, h, w = SCENE_SHAPE
    images = np.zeros((n, h, w), dtype=np.float32)
    captions: list[str] = []
    for i in range(n):
        k = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
        pick = rng.integers(0, len(digits), size=k)
        background = rng.uniform(*BACKGROUND)
        contrast = rng.uniform(*CONTRAST)
        canvas = np.zeros((h, w), dtype=np.float32)
        for j, d in enumerate(pick):
            left = SLOT_WIDTH * j + int(rng.integers(0, SLOT_WIDTH - 8 + 1))
            top = int(rng.integers(0, h - 8 + 1))
            canvas[top : top + 8, left : left + 8] = digits[d, 0]
        noise = rng.normal(0.0, NOISE_STD, size=(h, w))
        images[i] = np.clip(background + contrast * canvas + noise, 0.0, 1.0)
        captions.append(" ".join(DIGIT_WORDS[int(labels[d])] for d in pick))
    return torch.from_numpy(images[:, None]), captions


def digits_scenes(split: str = "test", n: int | None = None, seed: int | None = None) -> CaptionDataset:
    """Captioned scenes of 2-4 bundled handwritten digits, ``1 x 16 x 48`` in ``[0, 1]``.

    ``split="test"`` builds scenes only from held-out digits (500 by default), ``"train"`` only
    from training digits (2,000 by default); ``seed`` replaces the split's fixed scene seed.
    """
    if split not in SCENE_SEEDS:
        raise UsageError(f"digits-scenes: split must be 'train' or 'test', got {split!r}")
    n = DEFAULT_SCENES[split] if n is None else int(n)
    if n <= 0:
        raise UsageError(f"digits-scenes: n must be positive, got {n}")
    digits, labels = _digits_split(split)
    x, captions = render_scenes(digits, labels, n, SCENE_SEEDS[split] if seed is None else int(seed))
    name = "digits-scenes" if split == "test" else f"digits-scenes:split={split}"
    meta = {"train_data": "digits-scenes:split=train"}
    return CaptionDataset(x, torch.arange(n), None, name, (0.0, 1.0), meta, captions=captions)

