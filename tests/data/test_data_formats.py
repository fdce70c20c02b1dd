"""Tests for robustcheck.data.loading: every file format on synthetic files, every error message,
the foolbox sample images, fake torchvision data sets, and real data from ../shared/data when present."""

from __future__ import annotations

import builtins
import gzip
import importlib
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA
from PIL import Image

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats import foolbox as foolbox_formats
from robustcheck.data.formats.common import CIFAR10_CLASSES
from robustcheck.data.formats.foolbox import foolbox_cifar10, foolbox_imagenet, foolbox_mnist
from robustcheck.data.formats.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from robustcheck.data.formats.torchvision import dataset_from_pairs, torchvision_dataset
from robustcheck.data.loading import load_data, load_path
from robustcheck.errors import InputError, UsageError

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------
# Writers for synthetic files
# --------------------------------------------------------------------------------------------


def write_npz(path: Path, compressed: bool = False, **arrays: Any) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool = False) -> Path:
    """IDX: 4-byte big-endian magic, one big-endian uint32 per dimension, then the raw bytes."""
    payload = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_mnist(folder: Path, prefix: str = "t10k", n: int = 12, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, IDX_IMAGES_MAGIC, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, IDX_LABELS_MAGIC, gz)
    return x, y


def write_cifar(folder: Path, n: int = 6, meta: bool = True) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10 python batches as the originals store them: bytes keys, uint8 (n, 3072), label lists."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate(["test_batch"] + [f"data_batch_{k}" for k in range(1, 6)]):
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        with (folder / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=2)
        batches[name] = (data, labels)
    if meta:
        names = [c.encode() for c in CIFAR10_CLASSES]
        with (folder / "batches.meta").open("wb") as f:
            pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return batches


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_image_folder(root: Path, n_per_class: int = 3, shape: tuple[int, ...] = (8, 6, 3)) -> Path:
    for cls in ("cat", "dog"):
        for i in range(n_per_class):
            write_png(root / cls / f"{i:02d}.png", RNG.integers(0, 256, size=shape, dtype=np.uint8))
    return root


def error_message(exc_type: type[Exception], path: Any, **params: Any) -> str:
    with pytest.raises(exc_type) as info:
        load_path(path, **params)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def test_npz_uint8_hwc_through_load_data(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(5, 8, 7, 3), dtype=np.uint8)
    path = write_npz(tmp_path / "x.npz", x=x, y=np.arange(5) % 2, classes=np.array(["a", "b"]))
    data = load_data(str(path))
    assert isinstance(data, ImageDataset)
    assert data.x.shape == (5, 3, 8, 7) and data.x.dtype == torch.float32
    assert torch.allclose(data.x, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert data.y.tolist() == [0, 1, 0, 1, 0] and data.y.dtype == torch.int64
    assert data.classes == ["a", "b"] and data.name == str(path)


def test_npz_float_chw_kept_as_is(tmp_path: Path) -> None:
    x = RNG.uniform(size=(4, 3, 5, 6)).astype(np.float64)
    data = load_path(write_npz(tmp_path / "f.npz", x=x, y=np.array([[0], [1], [2], [3]])))
    assert data.x.shape == (4, 3, 5, 6) and torch.allclose(data.x, torch.from_numpy(x).float())
    assert data.y.tolist() == [0, 1, 2, 3] and data.classes is None


def test_npz_grey_nhw_gets_a_channel(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(3, 9, 9), dtype=np.uint8)
    assert load_path(write_npz(tmp_path / "g.npz", x=x, y=np.zeros(3, np.int64))).x.shape == (3, 1, 9, 9)


def test_npz_layout_param_forces_channels_last(tmp_path: Path) -> None:
    # (N, 3, 4, 3) is ambiguous: channels-first by default, channels-last when forced.
    x = RNG.uniform(size=(2, 3, 4, 3)).astype(np.float32)
    path = write_npz(tmp_path / "amb.npz", x=x, y=np.zeros(2, np.int64))
    assert load_path(path).x.shape == (2, 3, 4, 3)
    forced = load_data(f"{path}:layout=nhwc")
    assert forced.x.shape == (2, 3, 3, 4)
    assert torch.equal(forced.x, torch.from_numpy(x).permute(0, 3, 1, 2))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_limit_reads_the_head(tmp_path: Path, compressed: bool) -> None:
    x = RNG.integers(0, 256, size=(50, 4, 4, 3), dtype=np.uint8)
    y = np.arange(50) % 10
    path = write_npz(tmp_path / "big.npz", compressed, x=x, y=y)
    data = load_path(path, limit=7)
    assert len(data) == 7 and data.y.tolist() == y[:7].tolist()
    assert torch.equal(data.x, load_path(path).x[:7])
    assert len(load_path(path, limit=500)) == 50


def test_npz_limit_with_fortran_order_falls_back(tmp_path: Path) -> None:
    x = np.asfortranarray(RNG.uniform(size=(6, 1, 3, 3)).astype(np.float32))
    data = load_path(write_npz(tmp_path / "fortran.npz", x=x, y=np.arange(6)), limit=2)
    assert torch.equal(data.x, torch.from_numpy(np.ascontiguousarray(x[:2])))


def test_npz_html_page_is_named(tmp_path: Path) -> None:
    path = tmp_path / "download.npz"
    path.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    message = error_message(InputError, path)
    assert str(path) in message and "HTML" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty"), (b"\x93NUMPY\x01\x00", "single .npy array"), (b"garbage bytes", "not an .npz archive")],
)
def test_npz_not_an_archive(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    assert expected in error_message(InputError, path)


def test_npz_truncated(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "t.npz", x=np.zeros((10, 3, 8, 8), np.float32), y=np.zeros(10, np.int64))
    path.write_bytes(path.read_bytes()[:1500])
    message = error_message(InputError, path)
    assert str(path) in message and "truncated" in message


def test_npz_corrupt_member(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "c.npz", True, x=np.zeros((10, 3, 8, 8), np.float32), y=np.zeros(10, np.int64))
    raw = bytearray(path.read_bytes())
    start = raw.index(b"x.npy") + 60  # inside x's compressed stream
    raw[start : start + 40] = bytes(40)
    path.write_bytes(bytes(raw))
    assert "unreadable" in error_message(InputError, path)


def test_npz_missing_y(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "noy.npz", x=np.zeros((2, 1, 4, 4)), labels=np.zeros(2))
    message = error_message(InputError, path)
    assert "no array 'y'" in message and "found: x, labels" in message


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (np.zeros((4, 5, 5, 5), np.float32), np.zeros(4), "cannot find the channel axis"),
        (np.zeros((4, 25), np.float32), np.zeros(4), "must have shape"),
        (np.zeros((4, 1, 5, 5), np.uint16), np.zeros(4), "dtype uint16"),
        (np.zeros((4, 1, 5, 5), np.float32), np.zeros(3), "x has 4 images but y has 3 labels"),
        (np.full((4, 1, 5, 5), np.nan, np.float32), np.zeros(4), "NaN"),
        (np.full((4, 1, 5, 5), 2.0, np.float32), np.zeros(4), "outside bounds"),
        (np.zeros((4, 1, 5, 5), np.float32), np.array([0, 1, 0.5, 1]), "non-integer"),
        (np.zeros((4, 1, 5, 5), np.float32), np.eye(4), "one-hot"),
        (np.zeros((4, 1, 5, 5), np.float32), np.array(["a", "b", "c", "d"]), "integer class indices"),
        (np.zeros((4, 1, 5, 5), np.float32), np.array([0, -1, 0, 1]), "non-negative"),
        (np.zeros((4, 1, 5, 5), np.float32), np.float32(3), "scalar"),
    ],
)
def test_npz_bad_contents(tmp_path: Path, x: np.ndarray, y: np.ndarray, expected: str) -> None:
    path = write_npz(tmp_path / "bad.npz", x=x, y=y)
    message = error_message(InputError, path)
    assert str(path) in message and expected in message


def test_npz_labels_out_of_range_for_classes(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "r.npz", x=np.zeros((3, 1, 2, 2)), y=np.array([0, 1, 2]), classes=np.array(["a", "b"]))
    assert "label 2 is out of range for 2 classes" in error_message(InputError, path)


def test_npz_object_classes_refused(tmp_path: Path) -> None:
    classes = np.array(["a", None], dtype=object)
    path = write_npz(tmp_path / "o.npz", x=np.zeros((2, 1, 2, 2)), y=np.array([0, 1]), classes=classes)
    assert "'classes' must be an array of strings" in error_message(InputError, path)


@pytest.mark.parametrize(
    ("params", "expected"),
    [({"split": "train"}, "no parameter 'split'"), ({"layout": "hwc"}, "layout must be"), ({"limit": 0}, "limit must be")],
)
def test_npz_bad_params(tmp_path: Path, params: dict[str, Any], expected: str) -> None:
    path = write_npz(tmp_path / "p.npz", x=np.zeros((2, 1, 2, 2)), y=np.zeros(2))
    assert expected in error_message(UsageError, path, **params)


# --------------------------------------------------------------------------------------------
# Paths that are not data
# --------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or directory"):
        load_data(str(tmp_path / "nope.npz"))


def test_unsupported_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert "unsupported data file" in error_message(InputError, path)


def test_unknown_folder_layout(tmp_path: Path) -> None:
    (tmp_path / "empty-class").mkdir()
    (tmp_path / "readme.md").write_text("x")
    assert "unknown folder layout" in error_message(InputError, tmp_path)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def test_image_folder_rgb_round_robin(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs")
    (root / "cat" / "notes.txt").write_text("not an image")  # skipped by suffix
    data = load_data(str(root))
    assert data.x.shape == (6, 3, 8, 6) and data.classes == ["cat", "dog"]
    assert data.y.tolist() == [0, 1, 0, 1, 0, 1]  # balanced prefixes
    assert data.meta["files"][:2] == [str(Path("cat/00.png")), str(Path("dog/00.png"))]
    first = np.asarray(Image.open(root / "cat" / "00.png"), dtype=np.float32) / 255
    assert torch.allclose(data.x[0], torch.from_numpy(first).permute(2, 0, 1))
    assert load_path(root, limit=3).y.tolist() == [0, 1, 0]


def test_image_folder_grey_stays_one_channel(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "grey", n_per_class=2, shape=(5, 5))
    data = load_path(root)
    assert data.x.shape == (4, 1, 5, 5)


def test_image_folder_mixed_grey_and_rgb_becomes_rgb(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "mix", n_per_class=1, shape=(4, 4, 3))
    write_png(root / "cat" / "grey.png", np.full((4, 4), 128, np.uint8))
    data = load_path(root)
    assert data.x.shape == (3, 3, 4, 4)
    grey = data.x[data.meta["files"].index(str(Path("cat/grey.png")))]
    assert torch.allclose(grey, torch.full((3, 4, 4), 128 / 255))


def test_image_folder_16_bit_grey_is_scaled(tmp_path: Path) -> None:
    write_png(tmp_path / "deep" / "a" / "x.png", np.full((3, 3), 65535, np.uint16))
    data = load_path(tmp_path / "deep")
    assert data.x.shape == (1, 1, 3, 3) and torch.allclose(data.x, torch.ones(1, 1, 3, 3))


def test_image_folder_size_mismatch_names_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "sizes", n_per_class=1)
    odd = write_png(root / "dog" / "zz-big.png", np.zeros((10, 12, 3), np.uint8))
    message = error_message(InputError, root)
    assert str(odd) in message and "10x12" in message and "size=[H,W]" in message


def test_image_folder_size_param_resizes(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "resize", n_per_class=1)
    write_png(root / "dog" / "zz-big.png", np.zeros((10, 12, 3), np.uint8))
    assert load_data(f"{root}:size=[16,20]").x.shape == (3, 3, 16, 20)
    assert load_path(root, size=4).x.shape == (3, 3, 4, 4)
    assert "size must be" in error_message(UsageError, root, size=[0, 4])


def test_image_folder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "corrupt", n_per_class=1)
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"<html>not a png</html>")
    message = error_message(InputError, root)
    assert str(bad) in message and "not a readable image" in message


def test_image_folder_truncated_image_names_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "trunc", n_per_class=1, shape=(32, 32, 3))
    bad = root / "cat" / "00.png"
    bad.write_bytes(bad.read_bytes()[:200])
    message = error_message(InputError, root)
    assert str(bad) in message and "unreadable image" in message


def test_loose_images_need_class_folders(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    assert "one subfolder of images per class" in error_message(InputError, tmp_path)


# --------------------------------------------------------------------------------------------
# MNIST idx
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path: Path, gz: bool) -> None:
    x, y = write_mnist(tmp_path / "mnist", gz=gz)
    data = load_data(str(tmp_path / "mnist"))
    assert data.x.shape == (12, 1, 28, 28) and data.classes == [str(i) for i in range(10)]
    assert torch.allclose(data.x[:, 0], torch.from_numpy(x).float() / 255)
    assert data.y.tolist() == y.tolist()


def test_idx_split_and_single_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, "t10k", n=4)
    x_train, _ = write_mnist(tmp_path, "train", n=9, gz=False)
    assert len(load_path(tmp_path, split="train")) == 9
    assert len(load_path(tmp_path / "t10k-images-idx3-ubyte.gz")) == 4
    data = load_data(f"{tmp_path / 'train-labels-idx1-ubyte'}:limit=3")  # the labels file finds its images
    assert torch.allclose(data.x[:, 0], torch.from_numpy(x_train[:3]).float() / 255)
    assert "split must be" in error_message(UsageError, tmp_path, split="val")


def test_idx_torchvision_raw_layout(tmp_path: Path) -> None:
    write_mnist(tmp_path / "MNIST" / "raw", n=3)
    assert len(load_path(tmp_path / "MNIST")) == 3


def test_idx_other_split_missing(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", n=2)
    assert "pass split=train" in error_message(InputError, tmp_path)


def test_idx_limit_reads_only_the_head(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=20)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw)[:-30])  # damage the end of the stream
    assert len(load_path(tmp_path, limit=2)) == 2
    message = error_message(InputError, tmp_path)
    assert str(images) in message and "truncated" in message


def test_idx_truncated_plain_data(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=5, gz=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    assert "header announces 5 entries" in error_message(InputError, tmp_path)


def test_idx_magic_numbers_are_checked(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=3)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros((3, 28, 28), np.uint8), IDX_IMAGES_MAGIC, gz=True)  # images where labels belong
    message = error_message(InputError, tmp_path)
    assert str(labels) in message and "0x00000803" in message and "expected 0x00000801" in message
    labels.write_text("<html>moved</html>")
    assert "HTML" in error_message(InputError, tmp_path)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=4)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), IDX_LABELS_MAGIC, gz=True)
    assert "3 labels but t10k-images-idx3-ubyte.gz holds 4 images" in error_message(InputError, tmp_path)


def test_idx_missing_labels(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=2)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert "no labels file t10k-labels-idx1-ubyte[.gz]" in error_message(InputError, tmp_path)


def test_read_idx_other_element_types(tmp_path: Path) -> None:
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    array, n = read_idx(write_idx(tmp_path / "ints", values, 0x00000C02), 0x00000C02)
    assert n == 2 and array.tolist() == values.tolist() and array.dtype.isnative


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# --------------------------------------------------------------------------------------------


def test_cifar_folder_test_split(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path / "cifar")
    data = load_data(str(tmp_path / "cifar"))
    data_raw, labels = batches["test_batch"]
    assert data.x.shape == (6, 3, 32, 32) and data.classes == CIFAR10_CLASSES
    assert data.y.tolist() == labels
    # The 3072 bytes are R, G and B planes of a 32x32 image.
    assert torch.allclose(data.x[0, 1], torch.from_numpy(data_raw[0, 1024:2048].reshape(32, 32)).float() / 255)


def test_cifar_train_split_and_limit_stop_early(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path / "cifar", n=4)
    folder = tmp_path / "cifar"
    train = load_path(folder, split="train")
    assert len(train) == 20 and train.y[:4].tolist() == batches["data_batch_1"][1]
    (folder / "data_batch_3").write_bytes(b"corrupt")  # never opened when the limit is met earlier
    assert len(load_data(f"{folder}:split=train,limit=6")) == 6
    message = error_message(InputError, folder, split="train")
    assert str(folder / "data_batch_3") in message and "not a CIFAR-10 python batch" in message


def test_cifar_single_batch_and_default_names(tmp_path: Path) -> None:
    write_cifar(tmp_path, n=3, meta=False)
    data = load_path(tmp_path / "data_batch_2", limit=2)
    assert len(data) == 2 and data.classes == CIFAR10_CLASSES and data.name == str(tmp_path / "data_batch_2")


def test_cifar_tarball_folder_is_entered(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py", n=2)
    assert len(load_path(tmp_path)) == 2


def test_cifar_pickle_with_code_is_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path, n=2)

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (print, ("pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Exploit()}))
    message = error_message(InputError, tmp_path)
    assert "refusing to load builtins.print" in message


def test_cifar_bad_batches(tmp_path: Path) -> None:
    write_cifar(tmp_path, n=2)
    batch = tmp_path / "test_batch"
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1]}))
    assert "fine_labels" in error_message(InputError, tmp_path)
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    assert "'data' must be uint8 (n, 3072)" in error_message(InputError, tmp_path)
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}))
    assert "label 12 is out of range for 10 classes" in error_message(InputError, tmp_path)
    batch.write_bytes(pickle.dumps([1, 2]))
    assert "expected a dict" in error_message(InputError, tmp_path)
    batch.unlink()
    assert "test_batch: no such file" in error_message(InputError, tmp_path)


# --------------------------------------------------------------------------------------------
# Generic (image, label) pairs and torchvision
# --------------------------------------------------------------------------------------------


class FakeDataset:
    """Indexable like a torchvision data set: ``ds[i] -> (image, label)``, ``len``, ``classes``."""

    classes = ["zero", "one", "two"]

    def __init__(self, root: str, train: bool = False, download: bool = True, transform: Any = None) -> None:
        assert download is False  # the loader must never ask for a download
        self.train = train
        self.items = [(Image.fromarray(np.full((6, 5, 3), 10 * i, np.uint8)), i % 3) for i in range(5)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.items[index]


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(FakeSet=FakeDataset)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", module)
    return module


def test_dataset_from_pairs_mixed_items() -> None:
    items = [
        (Image.fromarray(np.full((5, 6, 3), 255, np.uint8)), 0),
        (Image.fromarray(np.zeros((5, 6), np.uint8)), np.int64(1)),  # grey: widened to RGB
        (np.full((5, 6, 3), 51, np.uint8), torch.tensor(2)),  # HWC uint8
        (torch.full((3, 5, 6), 0.5), 1),  # CHW float, like ToTensor() output
    ]
    data = dataset_from_pairs(items, "pairs", classes=["a", "b", "c"])
    assert data.x.shape == (4, 3, 5, 6) and data.y.tolist() == [0, 1, 2, 1]
    assert data.x[:, 0, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2, 0.5])
    assert dataset_from_pairs([(np.zeros((4, 4), np.uint8), 0)], "grey").x.shape == (1, 1, 4, 4)
    assert len(dataset_from_pairs(items, "pairs", limit=2)) == 2


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([(np.zeros((4, 4, 3), np.uint8), 0), (np.zeros((5, 4, 3), np.uint8), 0)], "item 1 has shape"),
        ([(np.zeros((4, 4, 3), np.uint8), "cat")], "item 0 has label 'cat'"),
        ([("not an image", 0)], "item 0 is a str"),
        ([(np.zeros((4, 4, 3), np.uint8),)], "not an (image, label) pair"),
        ([], "empty"),
    ],
)
def test_dataset_from_pairs_errors(items: list[Any], expected: str) -> None:
    with pytest.raises(InputError, match="^pairs: ") as info:
        dataset_from_pairs(items, "pairs")
    assert expected in str(info.value)


def test_torchvision_needs_root(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs root=DIR"):
        torchvision_dataset("MNIST")
    with pytest.raises(InputError, match="does not exist"):
        load_data(f"torchvision:MNIST:root={tmp_path / 'missing'}")


def test_torchvision_not_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(InputError, match="torchvision is not importable"):
        torchvision_dataset("MNIST", root=str(tmp_path))


def test_torchvision_with_fake_module(tmp_path: Path, fake_torchvision: types.ModuleType) -> None:
    data = load_data(f"torchvision:FakeSet:root={tmp_path},limit=4")
    assert data.name == "torchvision:FakeSet" and data.classes == FakeDataset.classes
    assert data.x.shape == (4, 3, 6, 5) and data.y.tolist() == [0, 1, 2, 0]
    with pytest.raises(UsageError, match="did you mean 'FakeSet'"):
        torchvision_dataset("FakeSett", root=str(tmp_path))
    with pytest.raises(InputError, match="cannot load from"):
        torchvision_dataset("FakeSet", root=str(tmp_path), colour="red")


# --------------------------------------------------------------------------------------------
# foolbox sample images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "shape", "n_classes", "name"),
    [
        (foolbox_imagenet, (3, 224, 224), 1000, "foolbox-imagenet"),
        (foolbox_cifar10, (3, 32, 32), 10, "foolbox-cifar10"),
        (foolbox_formats.foolbox_cifar100, (3, 32, 32), 100, "foolbox-cifar100"),
        (foolbox_mnist, (1, 28, 28), 10, "foolbox-mnist"),
    ],
)
def test_foolbox_samples(factory: Any, shape: tuple[int, int, int], n_classes: int, name: str) -> None:
    data = factory()
    assert len(data) == 20 and data.shape == shape and data.name == name
    assert 0 <= int(data.y.min()) and int(data.y.max()) < n_classes
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0 and float(data.x.std()) > 0.05
    assert data.classes is None or len(data.classes) == n_classes
    assert factory.__doc__.strip().count("\n") == 0  # one line, shown by `robustcheck list`


def test_foolbox_samples_known_labels_and_registry() -> None:
    assert foolbox_imagenet().y[0].item() == 243  # imagenet_00_243.jpg
    mnist = load_data("foolbox-mnist")
    assert mnist.y[:3].tolist() == [7, 2, 1] and mnist.classes == [str(i) for i in range(10)]
    cifar = foolbox_cifar10()
    assert cifar.classes is not None and cifar.classes[cifar.y[0]] == "cat"  # cifar10_00_3.png
    assert foolbox_imagenet(size=64).shape == (3, 64, 64)


def test_foolbox_photos_keep_their_stored_sizes() -> None:
    photos = foolbox_formats.foolbox_photos("imagenet")
    assert len(photos) == 20 and all(p.dtype == np.float32 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    assert (683, 1024, 3) in {p.shape for p in photos}  # imagenet_10_541.jpg is not 512 x 512
    assert all(0.0 <= p.min() and p.max() <= 1.0 for p in photos)
    np.testing.assert_allclose(photos[0], foolbox_imagenet(size=512).x[0].numpy().transpose(1, 2, 0))


def test_foolbox_samples_without_foolbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(foolbox_formats.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="foolbox is not installed"):
        foolbox_mnist()


def test_foolbox_samples_do_not_import_foolbox(monkeypatch: pytest.MonkeyPatch) -> None:
    # Importing foolbox runs its git/warning side effects; the samples must be read without it.
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def guarded_import(name: str, *args: Any, **kwargs: Any) -> Any:
        assert name.split(".")[0] != "foolbox", "foolbox was imported"
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded_import)
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: guarded_import(name) and real_import_module(name, *a))
    assert len(foolbox_cifar10()) == 20


# --------------------------------------------------------------------------------------------
# Real data beside the repository (skipped where absent)
# --------------------------------------------------------------------------------------------


def test_real_cifar10_npz() -> None:
    path = SHARED_DATA / "cifar10-test-jpeg.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data = load_data(str(path))
    assert data.x.shape == (10000, 3, 32, 32) and data.classes == CIFAR10_CLASSES
    assert torch.bincount(data.y).tolist() == [1000] * 10
    head = load_data(f"{path}:limit=16")
    assert torch.equal(head.x, data.x[:16]) and torch.equal(head.y, data.y[:16])


def test_real_mnist_idx() -> None:
    folder = SHARED_DATA / "mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{folder} has no MNIST idx files")
    data = load_data(str(folder))
    assert data.x.shape == (10000, 1, 28, 28) and data.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(data.y).sum() == 10000 and float(data.x.max()) == 1.0
    head = load_path(folder / "t10k-images-idx3-ubyte.gz", limit=10)
    assert torch.equal(head.x, data.x[:10])
