"""Reading CIFAR-10 python batches (``test_batch``, ``data_batch_1..5``, ``batches.meta``):
:func:`load_cifar_batches`.

The batches are pickles; they are read with an unpickler that refuses every global but numpy's array
rebuilders, so loading a file cannot run code.
"""

from __future__ import annotations

import codecs
import math
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.common import (
    CIFAR10_CLASSES,
    check_labels,
    describe_start,
    make_dataset,
    read_start,
    reason,
    unit_float,
)
from robustcheck.errors import InputError

CIFAR_TEST_FILES = ("test_batch",)
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_BATCH_NAME = re.compile(r"^(test_batch|data_batch_\d+)$")
CIFAR_META = "batches.meta"
CIFAR_IMAGE_SHAPE = (3, 32, 32)


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch pickle may name: numpy array/dtype/scalar rebuilders.

    Taken from live objects rather than imported by module path, because the path differs between
    numpy 1 (``numpy.core``) and 2 (``numpy._core``) and importing ``numpy.core`` warns in numpy 2.
    """
    rebuild = np.empty(0).__reduce__()[0]
    frombuffer = np.empty(0).__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = rebuild
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy rebuilders: loading a file must not run code."""

    allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}; only numpy arrays are allowed") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR python-batch dict with str keys (Python 2 pickles give bytes keys)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (CIFAR-10 batches are test_batch, data_batch_1..5, batches.meta)")
    try:
        with path.open("rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # unpickling raises almost any type on a corrupt or foreign file
        raise InputError(f"{path}: not a CIFAR-10 python batch ({reason(exc)}; {describe_start(read_start(path))})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a CIFAR-10 python batch (holds {type(obj).__name__}, expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch_arrays(path: Path, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``data`` uint8 ``(n, 3072)`` (R, G, B planes of 32x32) -> ``(n, 3, 32, 32)``; ``labels`` -> int64 ``(n,)``."""
    if "data" not in batch or "labels" not in batch:
        hint = " (CIFAR-100 has fine_labels; not supported)" if "fine_labels" in batch else ""
        raise InputError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys: {', '.join(batch)}){hint}")
    data = np.asarray(batch["data"])
    size = math.prod(CIFAR_IMAGE_SHAPE)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        raise InputError(f"{path}: 'data' must be uint8 (n, {size}), got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(batch["labels"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: 'labels' is not a list of integers ({reason(exc)})") from exc
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE), check_labels(labels, len(data), str(path))


def _cifar_classes(meta_path: Path) -> list[str]:
    """Class names from ``batches.meta``; the standard CIFAR-10 names when the file is absent."""
    if not meta_path.exists():
        return list(CIFAR10_CLASSES)
    names = _read_pickle(meta_path).get("label_names")
    if not isinstance(names, list) or not names:
        raise InputError(f"{meta_path}: no 'label_names' list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar_batches(
    files: Sequence[Path], meta_path: Path, limit: int | None = None, name: str | None = None
) -> ImageDataset:
    """Concatenate CIFAR-10 python batches (3x32x32 in [0, 1]); stops reading once ``limit`` samples are in."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    total = 0
    for path in files:
        if limit is not None and total >= limit:
            break  # later batches are never opened
        x, y = _cifar_batch_arrays(path, _read_pickle(path))
        keep = len(x) if limit is None else min(len(x), limit - total)
        xs.append(x[:keep])
        ys.append(y[:keep])
        total += keep
    images = unit_float(np.concatenate(xs), str(files[0]))
    meta = {"format": "cifar10-batches", "path": str(files[0].parent), "files": [p.name for p in files]}
    return make_dataset(images, np.concatenate(ys), _cifar_classes(meta_path), name or str(files[0]), meta)

