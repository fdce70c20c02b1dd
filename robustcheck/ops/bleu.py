"""BLEU scores of captions against reference captions: :func:`sentence_bleu` and :func:`corpus_bleu`.

Words are split on whitespace; BLEU-1 to BLEU-4, with add-one smoothing of the n >= 2 precisions (nltk's
``method2``) and the brevity penalty of Papineni et al. (2002).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from robustcheck.errors import UsageError


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

