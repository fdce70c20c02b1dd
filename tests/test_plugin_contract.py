"""One contract for every registered probe, defense and verifier (the way foolbox tests every attack
from one table): right base class, valid documented defaults, degenerate values refused with a
message naming plugin, parameter and value, and every plugin class in the package registered."""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from typing import Any

import pytest

import robustcheck
from robustcheck import registry
from robustcheck.api import Defense, Plugin, Probe, Verifier
from robustcheck.errors import UsageError
from robustcheck.params import Param

BASES = {"probe": Probe, "defense": Defense, "verifier": Verifier}
PLUGINS = [(kind, name) for kind in BASES for name in registry.names(kind)]


def _cls(kind: str, name: str) -> type[Plugin]:
    return registry.get(kind, name).obj


def _params(kind: str, name: str) -> list[tuple[str, str, Param]]:
    return [(kind, name, param) for param in _cls(kind, name).parameters.values()]


PARAMS = [item for kind, name in PLUGINS for item in _params(kind, name)]


def _refused(cls: type[Plugin], key: str, value: Any) -> str:
    with pytest.raises(UsageError) as info:
        cls(**{key: value})
    message = str(info.value)
    assert message.startswith(f"{cls.kind} {cls.name!r}: "), message
    assert repr(key) in message, message
    return message


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_registered_plugin_is_a_documented_subclass_with_valid_defaults(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    assert issubclass(cls, BASES[kind]) and cls.name == name and cls.kind in (kind, "verifier")
    assert (cls.__doc__ or "").strip(), f"{name} has no docstring (its line in `robustcheck list`)"
    if issubclass(cls, Probe):
        assert cls.score_doc.strip()
    plugin = cls()
    assert plugin.params == {key: param.coerce(param.default) for key, param in cls.parameters.items()}
    assert plugin.spec.params == {}  # defaults are not "changed" parameters


@pytest.mark.parametrize(("kind", "name", "param"), PARAMS, ids=[f"{n}.{p.name}" for _, n, p in PARAMS])
def test_every_parameter_is_declared_documented_and_checked(kind: str, name: str, param: Param) -> None:
    cls = _cls(kind, name)
    assert param.doc, f"{name}.{param.name} has no doc"
    assert getattr(cls(), param.name) == cls().params[param.name]  # readable as an attribute
    wrong_type = 123 if param.type is str else "not-a-value"
    if param.type is not object and param.choices is None:
        message = _refused(cls, param.name, wrong_type)
        assert param.requirement() in message
    if param.choices is not None:
        _refused(cls, param.name, "no-such-choice")
    if param.type is bool:
        _refused(cls, param.name, 2)
    if param.numeric and param.choices is None:
        assert param.ge is not None or param.gt is not None, f"{name}.{param.name} declares no lower bound"
        for degenerate in (math.nan, math.inf, -math.inf):
            _refused(cls, param.name, [degenerate] if param.list else degenerate)
        low = param.ge if param.ge is not None else param.gt
        below = low - 1 if param.ge is not None else low
        _refused(cls, param.name, [below] if param.list else below)
        if param.le is not None or param.lt is not None:
            high = param.le if param.le is not None else param.lt
            above = high + 1 if param.le is not None else high
            _refused(cls, param.name, [above] if param.list else above)
    if param.list and param.min_items:
        _refused(cls, param.name, [])


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_unknown_parameter_is_refused_with_a_suggestion(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    with pytest.raises(UsageError, match=rf"^{cls.kind} '{name}' has no parameter 'no_such_parameter'"):
        cls(no_such_parameter=1)


def test_every_plugin_class_in_the_package_is_registered() -> None:
    for info in pkgutil.walk_packages(robustcheck.__path__, "robustcheck."):
        importlib.import_module(info.name)
    registered = {_cls(kind, name) for kind, name in PLUGINS}
    concrete = set()
    for base in (Probe, Defense):
        stack = list(base.__subclasses__())
        while stack:
            cls = stack.pop()
            stack += cls.__subclasses__()
            if cls.__module__.startswith("robustcheck.") and not inspect.isabstract(cls) and not cls.__name__.startswith("_"):
                concrete.add(cls)
    abstract_bases = {cls for cls in concrete if any(issubclass(other, cls) and other is not cls for other in concrete)}
    assert concrete - abstract_bases - {Verifier} <= registered, sorted(c.__name__ for c in concrete - abstract_bases - registered)


def test_registration_refuses_wrong_objects() -> None:
    class NoScoreDoc(Probe):
        """A probe that does not say what its score means."""

    class BadDefault(Defense):
        """A defense whose default is out of its own range."""

        level = Param(0, "a level", ge=1)

    cases = [("probe", NoScoreDoc, "has no score_doc"), ("defense", BadDefault, "has invalid defaults"), ("probe", len, "not a robustcheck.api.Probe subclass")]
    for kind, obj, fragment in cases:
        with pytest.raises(UsageError, match=fragment):
            registry.register(kind, "contract-test")(obj)
        assert "contract-test" not in registry.names(kind)
    with pytest.raises(UsageError, match="not a callable factory"):
        registry.register("model", "contract-test")(42)
