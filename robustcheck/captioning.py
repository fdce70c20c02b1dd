"""Image captioners: the :class:`ImageCaptioner` adapter, vocabularies, caption data and BLEU.

A captioner is an encoder CNN whose hidden features feed a recurrent decoder. Any user captioner
plugs in by handing its two halves to :class:`ImageCaptioner`:

* ``encoder``: ``nn.Module`` mapping images ``(B, C, H, W)`` (within ``bounds``, after the optional
  mean/std normalisation) to features ``(B, D)`` -- the hidden layer the decoder reads, and the
  layer caption attacks steer;
* ``decoder``: ``nn.Module`` whose ``forward(features (B, D), tokens (B, T) int64) -> logits (B, T, V)``
  is teacher forced: ``tokens`` start with ``<start>``, and ``logits[:, t]`` scores token ``t + 1``.
  It may also offer ``greedy(features, max_length, start, end) -> tokens (B, L)`` for a fast greedy
  decode; without it the adapter decodes greedily by re-running ``forward`` on the growing prefix.

Caption data (:class:`CaptionDataset`) is an :class:`~robustcheck.data.ImageDataset` whose integer
labels ``y`` index its ``captions`` list, so every part of the harness that moves labelled images
around (heads, runners, stores) moves caption data too.

The built-in ``digits-scenes`` source renders 2 to 4 real handwritten digits of scikit-learn's
bundled set on a ``1 x 16 x 48`` canvas, captioned left to right ("seven two nine"); see
:func:`render_scenes` for the scene design.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcheck.data import ImageDataset, _digits_split
from robustcheck.errors import InputError, UsageError
from robustcheck.models import ImageClassifier

PAD, START, END = "<pad>", "<start>", "<end>"
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


# -- vocabulary ---------------------------------------------------------------------------------
class Vocabulary:
    """Words <-> token ids; ids 0, 1, 2 are ``<pad>``, ``<start>``, ``<end>``; words follow in order."""

    def __init__(self, words: Iterable[str]) -> None:
        words = list(words)
        if len(set(words)) != len(words) or any(w in (PAD, START, END) or not w or " " in w for w in words):
            raise InputError(
                f"vocabulary words must be unique, non-empty, without spaces or special tokens: {words}"
            )
        self.itos: list[str] = [PAD, START, END, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @property
    def pad(self) -> int:
        return 0

    @property
    def start(self) -> int:
        return 1

    @property
    def end(self) -> int:
        return 2

    @property
    def words(self) -> list[str]:
        return self.itos[3:]

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str) -> list[int]:
        """``"one two"`` -> ``[<start>, one, two, <end>]`` ids; unknown words raise :class:`InputError`."""
        unknown = [w for w in caption.split() if w not in self.stoi or self.stoi[w] < 3]
        if unknown:
            raise InputError(f"caption {caption!r} has words outside the vocabulary: {unknown}")
        return [self.start, *(self.stoi[w] for w in caption.split()), self.end]

    def encode_batch(self, captions: Sequence[str], length: int | None = None) -> torch.Tensor:
        """Padded ``(B, T)`` int64 ids of :meth:`encode` (``T`` = longest, or ``length``)."""
        encoded = [self.encode(c) for c in captions]
        width = length if length is not None else max((len(e) for e in encoded), default=2)
        out = torch.full((len(encoded), width), self.pad, dtype=torch.long)
        for i, ids in enumerate(encoded):
            out[i, : len(ids)] = torch.tensor(ids[:width])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> caption: stops at the first ``<end>``, skips ``<start>`` and ``<pad>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end:
                break
            if i in (self.pad, self.start) or not 0 <= i < len(self.itos):
                continue
            words.append(self.itos[i])
        return " ".join(words)


DIGITS_VOCABULARY = Vocabulary(DIGIT_WORDS)


# -- the adapter --------------------------------------------------------------------------------
class ImageCaptioner(ImageClassifier):
    """A captioner over images in ``bounds``: an encoder (images -> features) and a decoder (features -> words).

    ``forward(x)`` / ``predict(x)`` return the encoder features ``(B, D)`` (the layer the decoder
    reads), so the harness's batching, validation and hashing apply unchanged. See the module
    docstring for the decoder protocol.

    Args:
        encoder: images ``(B, C, H, W)`` -> features ``(B, D)``.
        decoder: teacher-forced ``forward(features, tokens) -> logits (B, T, V)``, optional ``greedy``.
        vocabulary: the decoder's token ids.
        max_length: most words in a caption (greedy decoding stops there).
        bounds, mean, std, input_shape, name, default_data, device: as for :class:`ImageClassifier`.
    """

    is_captioner = True

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        vocabulary: Vocabulary,
        *,
        max_length: int = 16,
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_shape: Sequence[int] | None = None,
        name: str = "captioner",
        default_data: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if not callable(getattr(decoder, "forward", None)):
            raise InputError(
                f"captioner {name!r}: the decoder must be an nn.Module with forward(features, tokens)"
            )
        if max_length < 1:
            raise InputError(f"captioner {name!r}: max_length must be positive, got {max_length}")
        super().__init__(
            encoder,
            bounds=bounds,
            mean=mean,
            std=std,
            input_shape=input_shape,
            name=name,
            default_data=default_data,
            device=device,
        )
        self.decoder = decoder.to(self.device)
        if not decoder.training:
            self.training = False
        self.vocabulary = vocabulary
        self.max_length = int(max_length)

    # -- encoder ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` the decoder reads, for images ``(B, C, H, W)`` in ``bounds`` (differentiable)."""
        try:
            features = self.module(self.normalize(x) if self.normalize is not None else x)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"captioner {self.name!r} encoder raised {type(exc).__name__} on input {tuple(x.shape)}: {exc}"
            ) from exc
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != x.shape[0]:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise InputError(
                f"captioner {self.name!r} encoder returned {shape}, expected features ({x.shape[0]}, D)"
            )
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, D)`` (what ``predict`` batches)."""
        return self.encode(x)

    # -- decoder ---------------------------------------------------------------------------------
    def token_logits(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V)``; ``tokens`` ``(B, T)`` start with ``<start>``."""
        logits = self.decoder(features, tokens)
        if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
            raise InputError(
                f"captioner {self.name!r} decoder returned {tuple(logits.shape)}, expected {(*tokens.shape, 'V')}"
            )
        return logits

    def log_likelihood(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probability ``(B,)`` of each caption ``tokens`` ``(B, T)`` (``<start>`` ... ``<end>``, padded)
        under the decoder given ``features`` (differentiable; padding is ignored)."""
        logits = self.token_logits(features, tokens[:, :-1])
        log_probs = logits.log_softmax(-1).gather(2, tokens[:, 1:, None]).squeeze(2)
        return (log_probs * (tokens[:, 1:] != self.vocabulary.pad)).sum(1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Greedy token ids ``(B, L)`` (no ``<start>``; ``<end>`` then ``<pad>`` after each caption)."""
        v = self.vocabulary
        greedy = getattr(self.decoder, "greedy", None)
        if callable(greedy):
            tokens = greedy(features, self.max_length + 1, v.start, v.end)
        else:  # generic: re-run the teacher-forced decoder on the growing prefix
            prefix = torch.full((len(features), 1), v.start, dtype=torch.long, device=features.device)
            for _ in range(self.max_length + 1):
                nxt = self.token_logits(features, prefix)[:, -1].argmax(-1, keepdim=True)
                prefix = torch.cat([prefix, nxt], 1)
                if (prefix == v.end).any(1).all():
                    break
            tokens = prefix[:, 1:]
        ended = (tokens == v.end).long().cumsum(1)
        return tokens.masked_fill((ended - (tokens == v.end).long()) > 0, v.pad)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, batch_size: int = 256) -> list[str]:
        """Greedy captions of images ``(B, C, H, W)`` in ``bounds`` (eval mode, no gradients)."""
        out: list[str] = []
        with self.eval_mode():
            for i in range(0, len(images), batch_size):
                tokens = self.decode(self.encode(images[i : i + batch_size].to(self.device)))
                out.extend(self.vocabulary.decode(row) for row in tokens.cpu().tolist())
        return out

    def is_relu_network(self) -> bool:
        return False

    def with_options(self, options: dict[str, Any]) -> ImageCaptioner:
        """The same encoder and decoder under replaced adapter options (``bounds``, ``mean``, ``std``,
        ``input_shape``, ``name``, ``default_data``); ``labels`` do not apply to captioners."""
        if options.get("labels") is not None:
            raise UsageError(f"captioner {self.name!r} takes no labels (its words come from its vocabulary)")
        merged = {**self.adapter_options(), **options}
        del merged["labels"]
        merged["bounds"] = tuple(merged["bounds"])
        return ImageCaptioner(
            self.module,
            self.decoder,
            self.vocabulary,
            max_length=self.max_length,
            device=self.device,
            **merged,
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "captioner": True,
            "vocabulary": len(self.vocabulary),
            "max_length": self.max_length,
        }


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

    def subset(self, index: torch.Tensor) -> CaptionDataset:
        """The samples at ``index`` (int64 ``(M,)``), re-indexed captions included."""
        texts = [self.captions[int(self.y[i])] for i in index.tolist()]
        return CaptionDataset(
            self.x[index],
            torch.arange(len(texts)),
            None,
            self.name,
            self.bounds,
            dict(self.meta),
            captions=texts,
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


# -- BLEU ---------------------------------------------------------------------------------------
def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _bleu_stats(hypothesis: str, reference: str, max_n: int) -> tuple[list[int], list[int], int, int]:
    """Clipped n-gram matches and hypothesis n-gram totals for n = 1..max_n, and the two lengths."""
    hyp, ref = hypothesis.split(), reference.split()
    matches, totals = [], []
    for n in range(1, max_n + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        matches.append(sum(min(c, r[g]) for g, c in h.items()))
        totals.append(max(len(hyp) - n + 1, 0))
    return matches, totals, len(hyp), len(ref)


def _bleu_from_stats(matches: Sequence[int], totals: Sequence[int], hyp_len: int, ref_len: int) -> float:
    """BLEU from summed statistics: geometric mean of smoothed precisions times the brevity penalty.

    Smoothing (Lin & Och 2004, "add one", as nltk's ``method2``): for n >= 2 the precision is
    ``(matches + 1) / (total + 1)``, so short captions (two words have no 3-gram) are not zeroed;
    the unigram precision is unsmoothed, so a caption sharing no word with the reference scores 0.
    Brevity penalty ``exp(1 - ref_len / hyp_len)`` when the hypothesis is shorter (Papineni et al. 2002).
    """
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    log_p = math.log(matches[0] / totals[0])
    for m, t in zip(matches[1:], totals[1:], strict=True):
        log_p += math.log((m + 1) / (t + 1))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_p / len(matches))


def sentence_bleu(hypothesis: str, reference: str, n: int = 4) -> float:
    """BLEU-``n`` of one caption against one reference (words split on spaces), in ``[0, 1]``."""
    if not 1 <= n <= 4:
        raise UsageError(f"BLEU order must be 1 to 4, got {n}")
    return _bleu_from_stats(*_bleu_stats(hypothesis, reference, n))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], n: int = 4) -> float:
    """Corpus BLEU-``n`` (statistics summed over pairs before the precisions, as in Papineni et al.)."""
    if len(hypotheses) != len(references):
        raise UsageError(
            f"BLEU needs one reference per hypothesis, got {len(hypotheses)} and {len(references)}"
        )
    if not 1 <= n <= 4:
        raise UsageError(f"BLEU order must be 1 to 4, got {n}")
    matches, totals, hyp_len, ref_len = [0] * n, [0] * n, 0, 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        m, t, hl, rl = _bleu_stats(hyp, ref, n)
        matches = [a + b for a, b in zip(matches, m, strict=True)]
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        hyp_len, ref_len = hyp_len + hl, ref_len + rl
    return _bleu_from_stats(matches, totals, hyp_len, ref_len)
