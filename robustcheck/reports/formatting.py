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
