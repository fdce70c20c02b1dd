"""Parsing ``NAME:key=value,...`` specs and checking plugin parameters against their defaults."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from robustcheck.errors import UsageError, suggest

_PAIRS = re.compile(r"^[A-Za-z_][\w-]*=")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``a=1,b=[1,2]`` -> ``["a=1", "b=[1,2]"]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def parse_value(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"true"`` -> True, ``"[0,8/255]"`` -> [0, 0.0313...], else the string."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if text.startswith("[") and text.endswith("]"):
        return [parse_value(p) for p in _split_top_level(text[1:-1])]
    if re.fullmatch(r"[-+]?\d+(\.\d*)?(e[-+]?\d+)?/\d+(\.\d*)?", lowered):  # 8/255
        num, den = lowered.split("/")
        return float(num) / float(den)
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"pgd-linf:steps=20,epsilons=[0,0.1]"`` into ``("pgd-linf", {"steps": 20, ...})``.

    The parameters follow the *last* colon whose remainder is a list of ``key=value`` pairs, so
    paths and ``torchvision:CIFAR10`` keep their colons.
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head and _PAIRS.match(tail):
        params: dict[str, Any] = {}
        for pair in _split_top_level(tail):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"bad parameter {pair!r} in {spec!r}: expected key=value")
            params[key.strip().replace("-", "_")] = parse_value(value)
        return head, params
    return spec, {}


def resolve_params(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``given`` into ``defaults``; unknown keys and wrong types raise :class:`UsageError`."""
    params = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise UsageError(f"{owner} has no parameter {key!r}{suggest(key, defaults)}; parameters: {known}")
        params[key] = _coerce(owner, key, defaults[key], value)
    return params


def _coerce(owner: str, key: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, str) and isinstance(value, str):
        return value
    elif isinstance(default, (list, tuple)):
        items = value if isinstance(value, (list, tuple)) else [value]
        if default and isinstance(default[0], float):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                raise UsageError(f"{owner} parameter {key!r} must be a list of numbers, got {value!r}")
            return [float(v) for v in items]
        return list(items)
    raise UsageError(f"{owner} parameter {key!r} must be {type(default).__name__}, got {value!r}")
