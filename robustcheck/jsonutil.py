"""JSON encoding of result values (metrics, params, records); imports neither numpy nor torch."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any


def json_default(value: Any) -> Any:
    """``default=`` hook for :func:`json.dumps`: numpy scalars and arrays become plain values, paths
    strings; anything else (a torch tensor, say) raises ``TypeError`` so it is not saved silently."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # np.float32, np.bool_, ndarray
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
