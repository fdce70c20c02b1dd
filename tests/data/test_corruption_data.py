"""The CIFAR-10-C / ImageNet-C folder format: recognition, label layouts, checks with one-line errors, and
corrupted copies that follow heads, samples and subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustcheck.data.formats.corrupted import CorruptedDataset, is_corruption_folder
from robustcheck.data.loading import load_data
from robustcheck.errors import InputError, UsageError

N, SIDE = 6, 8


def _folder(root: Path, labels_per_severity: bool = True, grey: bool = False) -> Path:
    """Clean image i is filled with value 10 i; its severity-s copy with 10 i + s."""
    folder = root / "c10c"
    folder.mkdir()
    shape = (SIDE, SIDE) if grey else (SIDE, SIDE, 3)
    clean = np.stack([np.full(shape, 10 * i, np.uint8) for i in range(N)])
    np.save(folder / "clean.npy", clean)
    labels = np.arange(N) % 3
    np.save(folder / "labels.npy", np.tile(labels, 5) if labels_per_severity else labels)
    np.save(folder / "fog.npy", np.concatenate([clean + s for s in range(1, 6)]))
    return folder


@pytest.mark.parametrize("per_severity", [True, False])
def test_folder_is_recognised_and_copies_follow_samples(tmp_path: Path, per_severity: bool) -> None:
    folder = _folder(tmp_path, per_severity)
    assert is_corruption_folder(folder)
    data = load_data(str(folder))
    assert (
        isinstance(data, CorruptedDataset) and data.corruptions == ("fog",) and data.shape == (3, SIDE, SIDE)
    )
    assert data.y.tolist() == [0, 1, 2, 0, 1, 2] and data.meta["format"] == "corruptions-npy"
    assert torch.allclose(
        data.corrupted("fog", 2)[:, 0, 0, 0] * 255, torch.tensor([10.0 * i + 2 for i in range(N)])
    )
    drawn = data.sample(4, seed=1).subset(torch.tensor([3, 0]))
    source = drawn.dataset_indices
    expected = torch.tensor([10.0 * i + 5 for i in source])
    assert isinstance(drawn, CorruptedDataset) and torch.allclose(
        drawn.corrupted("fog", 5)[:, 1, 3, 3] * 255, expected
    )
    assert torch.allclose(drawn.x[:, 0, 0, 0] * 255, torch.tensor([10.0 * i for i in source]))
    head = data.head(2)
    assert (
        isinstance(head, CorruptedDataset)
        and head.corrupted("fog", 1, torch.tensor([1]))[0, 0, 0, 0] * 255 == 11
    )
    with pytest.raises(UsageError, match="carries no 'snow' images"):
        data.corrupted("snow", 1)


def test_grey_images_and_limit(tmp_path: Path) -> None:
    data = load_data(f"{_folder(tmp_path, grey=True)}:limit=3")
    assert (
        len(data) == 3
        and data.shape == (1, SIDE, SIDE)
        and data.corrupted("fog", 1).shape == (3, 1, SIDE, SIDE)
    )


def test_bad_folders_fail_with_one_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    np.save(folder / "labels.npy", np.arange(7))
    with pytest.raises(InputError, match="labels.npy has 7 entries but the corruption files have 30 images"):
        load_data(str(folder))
    np.save(folder / "labels.npy", np.concatenate([np.zeros(N), np.ones(4 * N)]).astype(np.int64))
    with pytest.raises(InputError, match="the 5 severity blocks of labels.npy differ"):
        load_data(str(folder))
    np.save(folder / "labels.npy", np.tile(np.arange(N) % 3, 5))
    np.save(folder / "snow.npy", np.zeros((10, SIDE, SIDE, 3), np.float32))
    with pytest.raises(InputError, match=r"snow.npy: expected uint8 images"):
        load_data(str(folder))
    np.save(folder / "snow.npy", np.zeros((25, SIDE, SIDE, 3), np.uint8))
    with pytest.raises(InputError, match="fog.npy: 30 images, but the other corruption files have 25"):
        load_data(str(folder))
    (folder / "snow.npy").unlink()
    np.save(folder / "clean.npy", np.zeros((N, 4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="clean.npy: expected uint8"):
        load_data(str(folder))
    with pytest.raises(UsageError, match="has no parameter 'split'"):
        load_data(f"{folder}:split=train")
