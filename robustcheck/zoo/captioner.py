"""Built-in captioners ``digits-captioner`` and ``digits-captioner-b``: CNN encoder + LSTM decoder.

Both caption ``digits-scenes`` (``1 x 16 x 48`` scenes of 2-4 handwritten digits, see
:func:`robustcheck.data.captions.render_scenes`) in words left to right. ``-b`` differs in seed and
width (a second model for transfer attacks). Training (:func:`train`) is deterministic: fresh
scenes from the *training* digits every step, a fixed seed, deterministic algorithms; held-out
scenes use only test-split digits. Weights ship beside this file as ``<name>.pt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.data.builtin import _digits_split
from robustcheck.data.captions import MAX_DIGITS, SCENE_SHAPE, digits_scenes, render_scenes
from robustcheck.errors import InputError
from robustcheck.models.captioner import DIGITS_VOCABULARY, ImageCaptioner
from robustcheck.models.loading import load_state_dict
from robustcheck.zoo.train import deterministic_algorithms

WEIGHTS_DIR = Path(__file__).parent


class SceneEncoder(nn.Module):
    """CNN: scenes ``(B, 1, 16, 48)`` -> features ``(B, feature_dim)`` (ReLU of a linear layer).

    Three conv blocks (two 2x2 poolings) give a ``2w x 4 x 12`` map; a max over rows makes it
    blind to vertical jitter, and a linear layer over the 12 column cells (three per slot) gives
    the features the decoder reads.
    """

    def __init__(self, width: int = 24, feature_dim: int = 128) -> None:
        super().__init__()
        w = width
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),          # w x 8 x 24
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),  # 2w x 4 x 12
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),               # 2w x 4 x 12
        )  # fmt: skip
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 12, feature_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.conv(x).amax(dim=2))


class LSTMDecoder(nn.Module):
    """LSTM language model conditioned on image features ``(B, D)``.

    The features set the initial state (``h0, c0``) and are fed again with every word embedding.
    ``forward(features, tokens (B, T)) -> logits (B, T, V)`` is teacher forced; :meth:`greedy` decodes.
    """

    def __init__(self, vocab_size: int, feature_dim: int = 128, hidden: int = 128, embed: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.init_state = nn.Linear(feature_dim, 2 * hidden)
        self.lstm = nn.LSTM(embed + feature_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def _state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = torch.tanh(self.init_state(features)).chunk(2, dim=1)
        return h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()

    def _step(
        self, features: torch.Tensor, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        inputs = torch.cat([self.embed(tokens), features[:, None].expand(-1, tokens.shape[1], -1)], dim=2)
        out, state = self.lstm(inputs, state)
        return self.out(out), state

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self._step(features, tokens, self._state(features))[0]

    def greedy(self, features: torch.Tensor, max_length: int, start: int, end: int) -> torch.Tensor:
        """Greedy ids ``(B, <= max_length)``, stopping once every row has emitted ``end``."""
        state = self._state(features)
        token = torch.full((len(features), 1), start, dtype=torch.long, device=features.device)
        steps = []
        for _ in range(max_length):
            logits, state = self._step(features, token, state)
            token = logits[:, -1].argmax(-1, keepdim=True)
            steps.append(token)
            if (torch.cat(steps, 1) == end).any(1).all():
                break
        return torch.cat(steps, 1)


@dataclass(frozen=True)
class CaptionerSpec:
    """How to build and train one built-in captioner."""

    name: str
    width: int
    seed: int
    steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-3

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.pt"

    def build(self) -> tuple[SceneEncoder, LSTMDecoder]:
        return SceneEncoder(self.width), LSTMDecoder(len(DIGITS_VOCABULARY))

    def wrap(self, encoder: nn.Module, decoder: nn.Module) -> ImageCaptioner:
        return ImageCaptioner(
            encoder,
            decoder,
            DIGITS_VOCABULARY,
            max_length=MAX_DIGITS,
            input_shape=SCENE_SHAPE,
            name=self.name,
            default_data="digits-scenes",
        )


CAPTIONERS: dict[str, CaptionerSpec] = {
    spec.name: spec
    for spec in (
        CaptionerSpec("digits-captioner", 24, seed=0),
        CaptionerSpec("digits-captioner-b", 32, seed=1),
    )
}


def load_captioner(name: str, weights: str | Path | None = None) -> ImageCaptioner:
    """Build ``name`` and load its shipped (or the given) weights; the model is in eval mode."""
    spec = CAPTIONERS[name]
    encoder, decoder = spec.build()
    path = weights or spec.weights_path
    model = spec.wrap(encoder, decoder)
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as exc:
        raise InputError(f"weights {str(path)!r} do not fit model {name!r}: {exc}") from exc
    return model.eval()


def digits_captioner(weights: str | None = None) -> ImageCaptioner:
    """CNN+LSTM captioner of digits-scenes (1x16x48), words left to right; >= 90% exact match held out."""
    return load_captioner("digits-captioner", weights)


def digits_captioner_b(weights: str | None = None) -> ImageCaptioner:
    """A second digits-scenes captioner (another seed, 4/3 wider CNN): the transfer target."""
    return load_captioner("digits-captioner-b", weights)


# -- training -----------------------------------------------------------------------------------
def exact_match(model: ImageCaptioner, images: torch.Tensor, captions: list[str]) -> float:
    """Fraction of images ``(N, 1, 16, 48)`` whose greedy caption equals the reference exactly."""
    predicted = model.caption(images)
    return sum(p == c for p, c in zip(predicted, captions, strict=True)) / max(len(captions), 1)


def train(name: str, out_dir: Path | None = None, *, verbose: bool = True) -> tuple[Path, float]:
    """Train captioner ``name`` from scratch; write ``<out_dir>/<name>.pt``; return (path, held-out exact match).

    Same seed, thread count and torch build give bit-identical weights.
    """
    with deterministic_algorithms():
        return _train(CAPTIONERS[name], out_dir, verbose=verbose)


def _train(spec: CaptionerSpec, out_dir: Path | None, *, verbose: bool) -> tuple[Path, float]:
    torch.manual_seed(spec.seed)
    encoder, decoder = spec.build()
    model = spec.wrap(encoder, decoder)
    digits, labels = _digits_split("train")
    held_out = digits_scenes("test")
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, spec.lr, total_steps=spec.steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(spec.steps):
        model.train()
        # fresh scenes every step (seeded by step): the captioner never sees the same scene twice
        x, captions = render_scenes(digits, labels, spec.batch_size, seed=1_000_003 * spec.seed + step + 1)
        tokens = DIGITS_VOCABULARY.encode_batch(captions)
        logits = model.token_logits(model.encode(x), tokens[:, :-1])
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            tokens[:, 1:].reshape(-1),
            ignore_index=DIGITS_VOCABULARY.pad,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if verbose and (step + 1) % 250 == 0:
            model.eval()
            score = exact_match(model, held_out.x, held_out.texts)
            print(
                f"{spec.name} step {step + 1}/{spec.steps}: loss {loss.item():.4f}, held-out exact match {score:.4f} ({time.perf_counter() - start:.0f} s)"
            )
    model.eval()
    score = exact_match(model, held_out.x, held_out.texts)
    path = (Path(out_dir) if out_dir else WEIGHTS_DIR) / f"{spec.name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path, score
