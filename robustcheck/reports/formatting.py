"""How numbers and missing values read wherever robustcheck shows them: the HTML report, the
leaderboard, the CLI summary and pytest's failure text. One dash marks a missing value everywhere."""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

DASH = "\u2014"


def is_number(value: Any) -> bool:
    """A real number, booleans excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def format_score(score: Any) -> str:
    """A score (or an accuracy) with three decimals; a dash when there is none (``None``, NaN)."""
    return f"{float(score):.3f}" if is_number(score) and math.isfinite(score) else DASH


def format_value(value: Any) -> str:
    """A metric, parameter or table value: four significant digits for floats, a dash for ``None``/NaN."""
    if value is None or (is_number(value) and isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if is_number(value):
        return f"{float(value):.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


#: Epsilons within this distance of a multiple of 1/255 print as ``k/255``.
EPSILON_TOLERANCE = 1e-6


def as_255ths(value: Any) -> int | None:
    """``k`` when ``value`` (a number or numeric text) lies within 1e-6 of ``k/255``, else ``None``."""
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    k = round(x * 255)
    return k if abs(x - k / 255) <= EPSILON_TOLERANCE else None


def format_epsilon(value: Any) -> str:
    """An epsilon as people write it: ``8/255`` within 1e-6 of a multiple of 1/255 (``0`` and whole
    numbers stay plain: ``0``, ``1``, ``2``), otherwise four significant digits; numeric text (the keys
    of ``robust_accuracy``) is read as its number; lists format item by item; a dash for ``None``/NaN."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_epsilon(v) for v in value) + "]"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
    elif is_number(value):
        number = float(value)
    else:
        return format_value(value)
    if math.isnan(number):
        return DASH
    if not math.isfinite(number):
        return format_value(number)
    if float(number).is_integer():
        return str(int(number))
    k = as_255ths(number)
    if k is not None and k % 255 != 0:
        return f"{k}/255"
    return f"{number:.4g}"
