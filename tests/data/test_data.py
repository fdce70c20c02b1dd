import numpy as np
import pytest
import torch

from robustcheck.data.builtin import digits, digits_rgb32
from robustcheck.data.dataset import ImageDataset, validate_arrays
from robustcheck.data.loading import load_data
from robustcheck.errors import InputError, UnknownPluginError, UsageError


def test_digits_split_is_deterministic_and_disjoint():
    test, train = digits(), digits("train")
    assert test.shape == (1, 8, 8) and len(test) + len(train) == 1797
    assert len(test) == 450 and test.x.dtype == torch.float32 and 0 <= test.x.min() and test.x.max() <= 1
    assert torch.equal(digits().x, test.x) and torch.equal(digits().y, test.y)
    assert set(test.y.tolist()) == set(range(10)) and test.classes == [str(i) for i in range(10)]


def test_digits_rgb32_is_coloured_and_seeded():
    data = digits_rgb32()
    assert data.shape == (3, 32, 32) and len(data) == 450
    assert torch.equal(data.x, digits_rgb32().x)
    # colours differ between images (colour carries no label), channels are not all equal
    assert not torch.allclose(data.x[:, 0], data.x[:, 1])
    assert data.x.view(len(data), 3, -1).mean(2).std(0).min() > 0.05


def test_load_data_by_name_with_params():
    assert load_data("digits:split=train").name == "digits:train"
    with pytest.raises(UsageError, match="split must be"):
        load_data("digits:split=validation")
    with pytest.raises(UnknownPluginError, match="did you mean 'digits'"):
        load_data("digit")


def test_head():
    data = digits()
    assert len(data.head(10)) == 10 and len(data.head(None)) == len(data) and len(data.head(10_000)) == len(data)
    with pytest.raises(UsageError, match="positive"):
        data.head(0)


@pytest.mark.parametrize(
    ("x", "y", "fragment"),
    [
        (np.zeros((2, 1, 4, 4), np.uint8), [0, 1], "integers"),
        (np.zeros((2, 4, 4), np.float32), [0, 1], r"shape \(N, C, H, W\)"),
        (np.zeros((2, 5, 4, 4), np.float32), [0, 1], "channels"),
        (np.zeros((2, 1, 4, 4), np.float32), [0, 1, 2], "labels must have shape"),
        (np.full((2, 1, 4, 4), np.nan, np.float32), [0, 1], "NaN"),
        (np.full((2, 1, 4, 4), 2.0, np.float32), [0, 1], "outside bounds"),
        (np.zeros((2, 1, 4, 4), np.float32), [0, -1], "non-negative"),
        (np.zeros((2, 1, 4, 4), np.float32), [0.5, 1], "integers"),
    ],
)
def test_validation_names_the_problem(x, y, fragment):
    with pytest.raises(InputError, match=fragment):
        validate_arrays(x, y)


def test_label_out_of_range_for_classes():
    with pytest.raises(InputError, match="out of range for 2 classes"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 2]), classes=["a", "b"])


# -- sampling (--samples): seeded, class-stratified, classes interleaved ------------------------------


def _class_sorted(classes: int = 10, per_class: int = 50) -> ImageDataset:
    """``classes`` x ``per_class`` tiny images sorted by class; pixel 0 holds the sample's own position."""
    n = classes * per_class
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(n) / n
    return ImageDataset(x, torch.arange(classes).repeat_interleave(per_class), [f"c{k}" for k in range(classes)], name="sorted")


def test_sample_is_class_stratified_on_class_sorted_data():
    data = _class_sorted()
    sample = data.sample(100, seed=0)
    assert len(sample) == 100 and sample.classes == data.classes and sample.name == "sorted"
    assert torch.bincount(sample.y, minlength=10).tolist() == [10] * 10
    # classes interleaved: every head and every contiguous shard is balanced too
    for n in (10, 20, 50):
        assert torch.bincount(sample.y[:n], minlength=10).tolist() == [n // 10] * 10
    assert torch.bincount(sample.y[50:], minlength=10).tolist() == [5] * 10
    # indices say where each sample came from, and they are distinct
    idx = sample.indices
    assert idx is not None and len(set(idx.tolist())) == 100
    assert torch.equal(data.y[idx], sample.y) and torch.equal(data.x[idx], sample.x)
    assert sample.dataset_indices == idx.tolist() and data.dataset_indices == list(range(500))


def test_sample_is_deterministic_per_seed():
    data = _class_sorted()
    first = data.sample(100, seed=0).dataset_indices
    assert data.sample(100, seed=0).dataset_indices == first
    assert data.sample(100, seed=1).dataset_indices != first
    assert set(data.sample(100, seed=1).dataset_indices) != set(first)


def test_sample_all_and_more_than_the_data():
    data = _class_sorted()
    for everything in (data.sample(None, seed=3), data.sample(10_000, seed=3)):
        assert len(everything) == 500 and sorted(everything.dataset_indices) == list(range(500))
        assert torch.bincount(everything.y[:50], minlength=10).tolist() == [5] * 10  # interleaved, not sorted
    with pytest.raises(UsageError, match="positive"):
        data.sample(0)


def test_sample_shares_are_proportional_by_largest_remainders():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    data = ImageDataset(torch.zeros(100, 1, 2, 2), y)
    # 7 of 100: exact shares 3.5, 2.1, 1.4 -> 3, 2, 1 and the largest remainder (class 0) gets the 7th
    assert torch.bincount(data.sample(7, seed=0).y).tolist() == [4, 2, 1]
    assert torch.bincount(data.sample(10, seed=5).y).tolist() == [5, 3, 2]


def test_subsets_of_a_sample_keep_dataset_indices():
    data = _class_sorted()
    sample = data.sample(20, seed=0)
    shard = sample.subset(torch.arange(5, 10))
    assert shard.dataset_indices == sample.dataset_indices[5:10]
    assert sample.head(3).dataset_indices == sample.dataset_indices[:3]


def test_caption_data_samples_at_random_with_captions_following():
    from robustcheck.data.captions import digits_scenes

    scenes = digits_scenes(n=40)
    sample = scenes.sample(10, seed=0)
    assert len(sample) == 10 and sample.dataset_indices == scenes.sample(10, seed=0).dataset_indices
    assert sample.dataset_indices != scenes.sample(10, seed=1).dataset_indices
    assert sample.texts == [scenes.texts[i] for i in sample.dataset_indices]
    assert torch.equal(sample.x, scenes.x[sample.indices])
    assert sorted(scenes.sample(None, seed=0).dataset_indices) == list(range(40))
