"""Reading ``.npz`` archives of labelled images: arrays ``x``, ``y`` and optional ``classes``
(:func:`load_npz`).

Pickled members are refused (loading a file must not run code); with ``limit``, only the first rows of a
C-ordered member are decompressed.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.common import (
    check_labels,
    describe_start,
    make_dataset,
    read_start,
    reason,
    to_nchw,
    unit_float,
)
from robustcheck.errors import InputError


def load_npz(path: Path, limit: int | None = None, layout: str | None = None) -> ImageDataset:
    """Read ``x``, ``y`` and optional ``classes`` from an ``.npz`` archive (see :func:`load_path`)."""
    source = str(path)
    head = read_start(path)
    if head.startswith(b"\x93NUMPY"):
        raise InputError(f"{source}: holds a single .npy array, not an .npz archive; save with np.savez(path, x=..., y=...)")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise InputError(f"{source}: not an .npz archive: {describe_start(head)}")
    # We open the file ourselves: np.load leaks its handle when the zip directory is unreadable.
    with path.open("rb") as f, _open_npz(f, source) as npz:
        missing = [k for k in ("x", "y") if k not in npz.files]
        if missing:
            found = ", ".join(npz.files) or "nothing"
            raise InputError(f"{source}: no array {' or '.join(map(repr, missing))} in the archive (found: {found})")
        x, n_x = _npz_array(npz, "x", limit, source)
        y, n_y = _npz_array(npz, "y", limit, source)
        classes = _npz_classes(npz, source) if "classes" in npz.files else None
    if n_x != n_y:
        raise InputError(f"{source}: x has {n_x} images but y has {n_y} labels")
    images = unit_float(to_nchw(x, layout, source), source)
    labels = check_labels(y, len(images), source)
    return make_dataset(images, labels, classes, source, {"format": "npz", "path": source})


def _open_npz(f: IO[bytes], source: str) -> Any:
    """``np.load`` of an open archive, refusing pickles (loading a file must not run code)."""
    try:
        return np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{source}: corrupt or truncated .npz archive ({reason(exc)})") from exc


def _npz_array(npz: Any, key: str, limit: int | None, source: str) -> tuple[np.ndarray, int]:
    """``(first limit rows, full length)`` of one member; only those rows are read when that is cheap."""
    try:
        if limit is not None:
            head = _npz_head(npz, key, limit)
            if head is not None:
                return head
        arr = np.asarray(npz[key])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{source}: array {key!r} is unreadable ({reason(exc)})") from exc
    if arr.ndim == 0:
        raise InputError(f"{source}: array {key!r} is a scalar, expected one entry per sample")
    return (arr[:limit] if limit is not None else arr), len(arr)


def _npz_head(npz: Any, key: str, limit: int) -> tuple[np.ndarray, int] | None:
    """``(first limit rows, full length)`` of a C-ordered member, read straight from the zip stream.

    Saves decompressing and holding a whole multi-GB ``x`` when only a few samples are wanted.
    Returns None (caller reads the full member) for Fortran order, object dtypes or unusual headers.
    """
    with npz.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            return None
        shape, fortran_order, dtype = readers[version](f)
        if fortran_order or dtype.hasobject or not shape:
            return None
        n = min(limit, shape[0])
        nbytes = n * math.prod(shape[1:]) * dtype.itemsize
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"member ends after {len(data)} of {nbytes} bytes")
    # bytearray keeps the result writable (torch warns on read-only numpy buffers).
    return np.frombuffer(bytearray(data), dtype=dtype).reshape((n, *shape[1:])), shape[0]


def _npz_classes(npz: Any, source: str) -> list[str]:
    try:
        classes = np.asarray(npz["classes"])
    except ValueError as exc:  # object arrays need pickle, which we refuse for untrusted files
        raise InputError(f"{source}: 'classes' must be an array of strings, not objects ({reason(exc)})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{source}: array 'classes' is unreadable ({reason(exc)})") from exc
    if classes.ndim != 1:
        raise InputError(f"{source}: 'classes' must be a 1-D array of names, got shape {classes.shape}")
    return [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]

