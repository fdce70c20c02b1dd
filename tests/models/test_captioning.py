"""robustcheck.models.captioner: vocabulary, the ImageCaptioner adapter, caption data, BLEU, the built-in captioners."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from robustcheck.data.captions import SCENE_SHAPE, CaptionDataset, digits_scenes
from robustcheck.data.loading import load_data
from robustcheck.errors import InputError, UsageError
from robustcheck.models.captioner import DIGITS_VOCABULARY, ImageCaptioner, Vocabulary
from robustcheck.models.loading import load_model
from robustcheck.ops.bleu import corpus_bleu, sentence_bleu


class TinyDecoder(nn.Module):
    """Teacher-forced decoder without ``greedy``: emits the word of the strongest feature, then ``<end>``."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        logits = torch.zeros(b, t, self.vocab)
        word = features.argmax(1) + 3
        first = tokens[:, :1] == 1
        logits[:, :, 2] = 1.0  # <end> after the first word
        logits[torch.arange(b), 0, word] = self.scale * first[:, 0].float()
        return logits


def tiny_captioner() -> ImageCaptioner:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        encoder[1].weight.copy_(torch.eye(3, 4))
        encoder[1].bias.zero_()
    return ImageCaptioner(
        encoder, TinyDecoder(6), Vocabulary(["a", "b", "c"]), max_length=3, input_shape=(1, 2, 2), name="tiny"
    )


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: a second thread only adds contention


def test_vocabulary_round_trip_and_errors() -> None:
    v = DIGITS_VOCABULARY
    assert (v.pad, v.start, v.end) == (0, 1, 2) and len(v) == 13
    for caption in ("seven two nine", "zero one", "eight eight eight eight"):
        ids = v.encode(caption)
        assert ids[0] == v.start and ids[-1] == v.end and v.decode(ids) == caption
    batch = v.encode_batch(["one two", "three four five six"])
    assert batch.shape == (2, 6) and batch[0, 4:].tolist() == [v.pad, v.pad]
    assert [v.decode(row) for row in batch.tolist()] == ["one two", "three four five six"]
    assert v.decode([v.start, v.stoi["one"], v.end, v.stoi["two"]]) == "one"  # stops at <end>
    with pytest.raises(InputError, match="outside the vocabulary"):
        v.encode("one eleven")
    with pytest.raises(InputError, match="unique"):
        Vocabulary(["a", "a"])


def test_generic_decoder_without_greedy_decodes_by_prefix() -> None:
    model = tiny_captioner()
    x = torch.zeros(3, 1, 2, 2)
    x.view(3, 4)[0, 0] = 1.0
    x.view(3, 4)[1, 1] = 1.0
    x.view(3, 4)[2, 2] = 1.0
    assert model.caption(x) == ["a", "b", "c"]
    tokens = model.decode(model.encode(x))
    assert tokens[:, 1].tolist() == [2, 2, 2]  # <end> after the word, padding after that
    assert model.is_captioner and not model.is_relu_network()
    assert model.predict(x).shape == (3, 3)  # forward / predict give the features the decoder reads


def test_builtin_captioner_exact_match_and_feature_hook() -> None:
    model = load_model("digits-captioner")
    assert (
        isinstance(model, ImageCaptioner)
        and model.default_data == "digits-scenes"
        and model.input_shape == SCENE_SHAPE
    )
    data = load_data("digits-scenes")
    assert isinstance(data, CaptionDataset) and len(data) == 500 and data.shape == SCENE_SHAPE
    captions = model.caption(data.x)
    exact = sum(c == r for c, r in zip(captions, data.texts, strict=True)) / len(data)
    assert exact >= 0.9, f"held-out exact match {exact:.3f}"
    # the features the decoder actually reads (captured by a hook) are what encode() returns
    seen: list[torch.Tensor] = []
    handle = model.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model.token_logits(model.encode(data.x[:4]), DIGITS_VOCABULARY.encode_batch(data.texts[:4])[:, :-1])
    finally:
        handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], model.encode(data.x[:4]))
    # greedy captioning reads them too: the decoder's initial state is computed from exactly these features
    seen.clear()
    handle = model.decoder.init_state.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        assert model.caption(data.x[:4]) == captions[:4]
    finally:
        handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], model.encode(data.x[:4]))
    # adapter options re-wrap the captioner, decoder included
    renamed = load_model("digits-captioner", name="cap")
    assert (
        isinstance(renamed, ImageCaptioner)
        and renamed.name == "cap"
        and renamed.caption(data.x[:4]) == captions[:4]
    )
    with pytest.raises(UsageError, match="no labels"):
        load_model("digits-captioner", labels=["a"])
    # the teacher-forced likelihood prefers the reference caption to another one
    ref = DIGITS_VOCABULARY.encode_batch(data.texts[:8])
    other = DIGITS_VOCABULARY.encode_batch(data.texts[8:16])
    with torch.no_grad():
        features = model.encode(data.x[:8])
        assert (
            model.log_likelihood(features, ref) > model.log_likelihood(features, other)
        ).float().mean() >= 0.75


def test_scene_data_is_deterministic_and_held_out() -> None:
    a, b = digits_scenes("test", n=20), digits_scenes("test", n=20)
    assert torch.equal(a.x, b.x) and a.texts == b.texts
    train = digits_scenes("train", n=20)
    assert not torch.equal(train.x, a.x) and train.meta["train_data"] == "digits-scenes:split=train"
    assert all(2 <= len(c.split()) <= 4 for c in a.texts)
    assert float(a.x.min()) >= 0.0 and float(a.x.max()) <= 1.0
    head = a.head(5)
    assert isinstance(head, CaptionDataset) and head.texts == a.texts[:5]
    sub = a.subset(torch.tensor([3, 1]))
    assert sub.texts == [a.texts[3], a.texts[1]] and torch.equal(sub.x[0], a.x[3])
    with pytest.raises(UsageError, match="split"):
        digits_scenes("valid")
    with pytest.raises(InputError, match="caption index"):
        CaptionDataset(a.x[:2], torch.tensor([0, 5]), captions=["x", "y"])


def test_bleu_known_values() -> None:
    assert sentence_bleu("one two three four", "one two three four") == pytest.approx(1.0)
    # add-one smoothing for empty n-gram orders
    assert sentence_bleu("one two", "one two") == pytest.approx(1.0)
    assert sentence_bleu("five six", "one two") == 0.0
    # BLEU-1 with brevity penalty: 2 of 2 unigrams match, hypothesis 2 words vs reference 4
    assert sentence_bleu("one two", "one two three four", n=1) == pytest.approx(math.exp(1 - 4 / 2))
    # BLEU-2 of "one two nine" vs "one two three": p1 = 2/3, p2 = (1 + 1) / (2 + 1), no brevity penalty
    assert sentence_bleu("one two nine", "one two three", n=2) == pytest.approx(math.sqrt(2 / 3 * 2 / 3))
    # clipping: repeated words count at most as often as in the reference
    assert sentence_bleu("one one one", "one two three", n=1) == pytest.approx(1 / 3)
    hyps, refs = ["one two", "three four five"], ["one two", "three four six"]
    # corpus: p1 = 4/5, p2 = (2 + 1) / (3 + 1)
    assert corpus_bleu(hyps, refs, n=2) == pytest.approx(math.sqrt(4 / 5 * 3 / 4))
    with pytest.raises(UsageError):
        corpus_bleu(["a"], [], n=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits-captioner", "digits-captioner-b"])
def test_training_reproduces_the_shipped_weights(name: str, tmp_path: Path) -> None:
    """Several CPU minutes each: retraining on one thread (as the shipped weights were) is bit-identical."""
    from robustcheck.zoo.captioner import CAPTIONERS, train

    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path, exact = train(name, tmp_path, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert path == tmp_path / f"{name}.pt" and exact >= 0.9
    new, shipped = (
        torch.load(path, weights_only=True),
        torch.load(CAPTIONERS[name].weights_path, weights_only=True),
    )
    assert new.keys() == shipped.keys() and all(torch.equal(new[k], shipped[k]) for k in new)
