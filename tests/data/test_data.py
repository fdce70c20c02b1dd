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
