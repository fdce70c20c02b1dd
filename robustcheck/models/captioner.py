"""The captioner adapter: :class:`ImageCaptioner` and its :class:`Vocabulary` (``DIGITS_VOCABULARY`` for the
digit words).

A captioner is an encoder CNN whose hidden features feed a recurrent decoder. Any user captioner
plugs in by handing its two halves to :class:`ImageCaptioner`:

* ``encoder``: ``nn.Module`` mapping images ``(B, C, H, W)`` (within ``bounds``, after the optional
  mean/std normalisation) to features ``(B, D)`` -- the hidden layer the decoder reads, and the
  layer caption attacks steer;
* ``decoder``: ``nn.Module`` whose ``forward(features (B, D), tokens (B, T) int64) -> logits (B, T, V)``
  is teacher forced: ``tokens`` start with ``<start>``, and ``logits[:, t]`` scores token ``t + 1``.
  It may also offer ``greedy(features, max_length, start, end) -> tokens (B, L)`` for a fast greedy
  decode; without it the adapter decodes greedily by re-running ``forward`` on the growing prefix.

Caption data lives in :mod:`robustcheck.data.captions`, BLEU in :mod:`robustcheck.ops.bleu`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from robustcheck.data.captions import DIGIT_WORDS
from robustcheck.deadline import interrupt_if_spent
from robustcheck.errors import InputError, ProbeTimeout, RequirementError, UsageError
from robustcheck.models.classifier import ImageClassifier, check_finite

PAD, START, END = "<pad>", "<start>", "<end>"


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
        interrupt_if_spent()  # a long attack loop ends here once the run's budget is spent
        try:
            features = self.module(self.normalize(x) if self.normalize is not None else x)
        except (InputError, ProbeTimeout):
            raise
        except Exception as exc:
            raise InputError(
                f"captioner {self.name!r} encoder raised {type(exc).__name__} on input {tuple(x.shape)}: "
                f"{exc}{self._shape_hint(x)}"
            ) from exc
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != x.shape[0]:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise InputError(
                f"captioner {self.name!r} encoder returned {shape} for {x.shape[0]} inputs, expected features "
                f"({x.shape[0]}, D): one row per input"
            )
        check_finite(features, f"captioner {self.name!r} encoder", "features", inputs=x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, D)`` (what ``predict`` batches)."""
        return self.encode(x)

    # -- decoder ---------------------------------------------------------------------------------
    def token_logits(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V)``; ``tokens`` ``(B, T)`` start with ``<start>``."""
        logits = self.decoder(features, tokens)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != tokens.shape:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InputError(
                f"captioner {self.name!r} decoder returned {shape}, expected {(*tokens.shape, 'V')}"
            )
        check_finite(logits, f"captioner {self.name!r} decoder", "token logits", inputs=features)
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

    def input_gradients(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Not defined: a captioner has no class logits (caption attacks differentiate :meth:`log_likelihood`
        and :meth:`encode`, and check them with :meth:`check_gradients`)."""
        raise RequirementError(f"captioner {self.name!r} has no class logits to take input gradients of")

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
