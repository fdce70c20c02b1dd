"""Plugin specs and typed plugin parameters.

* :class:`PluginSpec` is a plugin named with its parameters, parsed once from ``NAME:key=value,...``
  (CLI, TOML, pytest markers) and handed on as a value; :func:`format_spec` writes it back so that
  ``parse_spec(format_spec(name, params)) == (name, params)``.
* :class:`Param` declares one parameter of a plugin, once: type, default, allowed range or choices and
  one line of doc. Coercion from CLI/TOML text, validation, ``robustcheck list`` help and error
  messages all come from that declaration::

      class PGD(Probe):
          steps = Param(20, "iterations per epsilon", ge=1)
          ...
          self.steps  # the checked value of this instance
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustcheck.errors import UsageError, suggest

_PAIRS = re.compile(r"^[A-Za-z_][\w-]*=")


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``a=1,b=[1,2]`` -> ``["a=1", "b=[1,2]"]``."""
    parts, depth, start, quoted, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if quoted:  # inside a JSON string: a backslash escapes the next character (an escaped backslash too)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def parse_value(text: str) -> Any:
    """``"0.1"`` -> 0.1, ``"true"`` -> True, ``"[0,8/255]"`` -> [0, 0.0313...], ``'"a,b"'`` -> "a,b", else the string."""
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


def format_value(value: Any) -> str:
    """The text :func:`parse_value` reads back as ``value`` (numbers, booleans, ``None``, strings, lists)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)  # shortest round-trip form; inf and nan as Infinity and NaN
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    plain = text == text.strip() and text != "" and not re.search(r'[,\[\]()="\\]', text)
    return text if plain and parse_value(text) == text else json.dumps(text)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"pgd-linf:steps=20,epsilons=[0,0.1]"`` into ``("pgd-linf", {"steps": 20, ...})``.

    The parameters follow the *first* colon whose remainder is a list of ``key=value`` pairs, so
    paths and ``torchvision:CIFAR10`` keep their colons, and so may values (``transfer_model=pkg.mod:build``).
    """
    colons = [i for i, ch in enumerate(spec) if ch == ":" and i > 0]
    cut = next((i for i in colons if _PAIRS.match(spec[i + 1 :])), None)
    if cut is not None:
        head, tail = spec[:cut], spec[cut + 1 :]
        params: dict[str, Any] = {}
        for pair in _split_top_level(tail):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"bad parameter {pair!r} in {spec!r}: expected key=value")
            params[key.strip().replace("-", "_")] = parse_value(value)
        return head, params
    return spec, {}


def format_spec(name: str, params: Mapping[str, Any]) -> str:
    """The inverse of :func:`parse_spec`: ``("bit-depth", {"bits": 3})`` -> ``"bit-depth:bits=3"``."""
    if not params:
        return name
    return f"{name}:" + ",".join(f"{key}={format_value(value)}" for key, value in params.items())


@dataclass(frozen=True)
class PluginSpec:
    """A plugin named with its parameters: what the CLI, TOML, pytest and the API hand to the runner.

    ``str(spec)`` is the ``NAME:key=value,...`` text that :meth:`parse` reads back.
    """

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, kind: str, text: str | PluginSpec) -> PluginSpec:
        if isinstance(text, PluginSpec):
            return text
        name, params = parse_spec(text)
        return cls(kind, name, params)

    def __str__(self) -> str:
        return format_spec(self.name, self.params)

    def __hash__(self) -> int:
        return hash((self.kind, str(self)))


_NUMBER_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", object: "any value"}


@dataclass
class Param:
    """One declared plugin parameter; as a class attribute it reads the instance's checked value.

    Args:
        default: the value when none is given (checked like any other value when the class is defined).
        doc: one line for ``robustcheck list`` and ``--help``.
        type: ``int``, ``float``, ``bool`` or ``str``; inferred from ``default`` when omitted.
        list: the value is a list of such items (a single item becomes a one-item list).
        optional: ``None`` is allowed (implied by a ``None`` default).
        ge, gt, le, lt: bounds of a number (of each item of a list).
        choices: the allowed values.
        min_items: the shortest allowed list.
        sort: sort a list value (e.g. epsilons).
        check: an extra test of the (coerced) value, and ``check_doc`` says what it asks for ("odd").
    """

    default: Any
    doc: str = ""
    type: type | None = None
    list: bool = False
    optional: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Sequence[Any] | None = None
    min_items: int = 0
    sort: bool = False
    check: Callable[[Any], bool] | None = None
    check_doc: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.default is None:
            self.optional = True
        if self.type is None:
            sample = self.default
            if isinstance(sample, (list, tuple)):
                self.list = True
                sample = sample[0] if sample else (self.choices[0] if self.choices else None)
            if sample is None:
                raise TypeError("Param needs type= when the default does not show it")
            self.type = type(sample)
        if self.type not in _NUMBER_NAMES:
            raise TypeError(f"Param type must be int, float, bool, str or object (anything), not {self.type!r}")
        if self.type is object:
            self.optional = True

    # -- descriptor: ``self.steps`` on a plugin instance is ``self.params["steps"]`` ----------------
    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance.params[self.name]

    # -- checking ----------------------------------------------------------------------------------
    @property
    def numeric(self) -> bool:
        return self.type in (int, float)

    def requirement(self) -> str:
        """What a valid value is, in words: ``"an integer >= 1"``, ``"a list of numbers in (0, inf)"``."""
        if self.choices is not None:
            text = "one of " + ", ".join(format_value(c) for c in self.choices)
        else:
            text = _NUMBER_NAMES[self.type]  # type: ignore[index]
            bounds = [f"{op} {_num(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]
            if bounds:
                text += " " + " and ".join(bounds)
            if self.check_doc:
                text += f" ({self.check_doc})"
        if self.list:
            plural = text.replace("an integer", "integers").replace("a number", "numbers").replace("a string", "strings")
            text = f"a {'non-empty ' if self.min_items == 1 else ''}list of {plural}"
            if self.min_items > 1:
                text += f" (at least {self.min_items})"
        return text + (" or none" if self.optional else "")

    def describe(self) -> str:
        """``"int >= 1, default 20: iterations"`` for listings."""
        return f"{self.requirement()}; default {format_value(self.default)}" + (f": {self.doc}" if self.doc else "")

    def coerce(self, value: Any) -> Any:
        """The checked value; :class:`ValueError` says what is wrong (the plugin adds who it is)."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(self._wrong(value))
        if self.type is object:
            return value
        if isinstance(value, str) and self.list:
            value = parse_value(value)  # text from a config or the API: "[0,8/255]"
        if self.list:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            if len(items) < self.min_items:
                raise ValueError(self._wrong(value))
            try:
                out = [self._item(v) for v in items]
            except ValueError:
                raise ValueError(self._wrong(value)) from None
            return sorted(out) if self.sort else out
        return self._item(value)

    def _item(self, value: Any) -> Any:
        kind = self.type
        if isinstance(value, str) and kind is not str:
            value = parse_value(value)  # text from a config or the API: "20", "8/255", "true"
        ok = True
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        elif kind is str:
            ok = isinstance(value, str)
        if ok and self.numeric:
            ok = all(
                bound is None or test(value, bound)
                for bound, test in (
                    (self.ge, lambda v, b: v >= b),
                    (self.gt, lambda v, b: v > b),
                    (self.le, lambda v, b: v <= b),
                    (self.lt, lambda v, b: v < b),
                )
            )
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.check is not None:
            ok = bool(self.check(value))
        if not ok:
            raise ValueError(self._wrong(value))
        return value

    def _wrong(self, value: Any) -> str:
        return f"parameter {self.name!r} must be {self.requirement()}, got {value!r}"


def _num(value: float) -> str:
    return format_value(float(value)) if not float(value).is_integer() else str(int(value))


def declared_params(cls: type) -> dict[str, Param]:
    """Every :class:`Param` of ``cls`` and its bases, the subclass's declaration winning, in order."""
    found: dict[str, Param] = {}
    for klass in reversed(cls.__mro__):
        for key, value in vars(klass).items():
            if isinstance(value, Param):
                found[key] = value  # a subclass re-declaring a parameter keeps its place in the order
    return found


def resolve(owner: str, declared: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``given``, every value checked; problems raise :class:`UsageError` prefixed by ``owner``."""
    for key in given:
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise UsageError(f"{owner} has no parameter {key!r}{suggest(key, declared)}; parameters: {known}")
    values = {}
    for key, param in declared.items():
        try:
            values[key] = param.coerce(given[key] if key in given else param.default)
        except ValueError as exc:
            raise UsageError(f"{owner}: {exc}") from None
    return values


def resolve_params(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`resolve` with parameters declared by their defaults alone (plain loader options)."""
    return resolve(owner, {k: infer_param(k, v) for k, v in defaults.items()}, given)


def infer_param(name: str, default: Any) -> Param:
    """A :class:`Param` declared by its default alone; a ``None`` or empty default accepts any value."""
    sample = default[0] if isinstance(default, (list, tuple)) and default else default
    known = type(sample) in (int, float, bool, str)
    param = Param(default, type=type(sample) if known else object, list=known and isinstance(default, (list, tuple)))
    param.name = name
    return param
