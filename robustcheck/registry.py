"""Plugin registry: names are the API (``load_model("digits-cnn")``), entry points find plugins.

Built-ins and third-party packages register the same way, and only that way: through the entry-point
groups ``robustcheck.models``, ``robustcheck.data``, ``robustcheck.probes``, ``robustcheck.defenses``
and ``robustcheck.verifiers``. Loading an entry point imports its module. In-process objects (tests,
notebooks) may be registered with the :func:`register` decorator instead.

Every object is checked when it is registered or loaded, the way pluggy validates hook
implementations: factories must be callable, and the plugin API (:mod:`robustcheck.api`) adds the
checks of its kinds with :func:`add_check` (right base class, valid defaults, a documented score), so
a wrong object fails at once with its name, not later in a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from robustcheck.errors import UnknownPluginError, UsageError

PLUGIN_KINDS = ("probe", "defense", "verifier")
GROUPS: dict[str, str] = {
    "model": "robustcheck.models",
    "data": "robustcheck.data",
    "probe": "robustcheck.probes",
    "defense": "robustcheck.defenses",
    "verifier": "robustcheck.verifiers",
}

T = TypeVar("T")


@dataclass
class Entry:
    """One registered plugin: ``obj`` is a class (probes, defenses, verifiers) or a factory."""

    kind: str
    name: str
    obj: Any
    source: str = "builtin"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        doc = (getattr(self.obj, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


_registry: dict[str, dict[str, Entry]] = {kind: {} for kind in GROUPS}
_checks: dict[str, list[Callable[[str, Any], None]]] = {kind: [] for kind in GROUPS}


def add_check(kind: str, check: Callable[[str, Any], None]) -> None:
    """Have every ``kind`` object pass ``check(name, obj)`` (raising ``TypeError`` saying what is wrong)."""
    _check_kind(kind)
    _checks[kind].append(check)


def _validate(kind: str, name: str, obj: Any, origin: str) -> None:
    if kind in ("model", "data") and not callable(obj):
        problem = f"is {obj!r}, not a callable factory"
    else:
        problem = ""
        if kind in PLUGIN_KINDS and isinstance(obj, type):
            obj.name = name  # the registry name is the plugin's name
        for check in _checks[kind]:
            try:
                check(name, obj)
            except TypeError as exc:
                problem = str(exc)
                break
    if problem:
        raise UsageError(f"{kind} plugin {name!r} {origin}{problem}")


def _check_kind(kind: str) -> None:
    if kind not in GROUPS:
        raise UsageError(f"unknown plugin kind {kind!r}; kinds are {', '.join(GROUPS)}")


def register(kind: str, name: str | None = None, **meta: Any) -> Callable[[T], T]:
    """Decorator registering a plugin class or factory under ``name`` (default: its ``name`` attribute)."""
    _check_kind(kind)

    def decorate(obj: T) -> T:
        key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not key:
            raise UsageError(f"cannot register {obj!r} as a {kind}: it has no name")
        _validate(kind, key, obj, "")
        _registry[kind][key] = Entry(kind, key, obj, meta.pop("source", "in-process"), dict(meta))
        return obj

    return decorate


def unregister(kind: str, name: str) -> None:
    """Remove an in-process registration (tests)."""
    _registry[kind].pop(name, None)


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def _load(kind: str, ep: EntryPoint) -> Entry:
    try:
        obj = ep.load()
    except Exception as exc:  # a broken third-party plugin must not look like our bug
        dist = ep.dist.name if ep.dist else "?"
        raise UsageError(f"{kind} plugin {ep.name!r} from {dist} failed to load ({ep.value}): {exc}") from exc
    source = ep.dist.name if ep.dist else "entry point"
    _validate(kind, ep.name, obj, f"from {source} ({ep.value}) ")
    entry = Entry(kind, ep.name, obj, source if source != "robustcheck-harness" else "builtin")
    _registry[kind][ep.name] = entry
    return entry


def names(kind: str) -> list[str]:
    """All names of ``kind``, without importing any plugin."""
    _check_kind(kind)
    return sorted(set(_registry[kind]) | set(_entry_points(kind)))


def get(kind: str, name: str) -> Entry:
    """Look ``name`` up, loading its entry point on first use; unknown names suggest close ones."""
    _check_kind(kind)
    if name in _registry[kind]:
        return _registry[kind][name]
    ep = _entry_points(kind).get(name)
    if ep is None:
        raise UnknownPluginError(kind, name, names(kind))
    return _load(kind, ep)


def entries(kind: str) -> list[Entry]:
    """Every plugin of ``kind``, loaded."""
    return [get(kind, name) for name in names(kind)]


def in_process_entries() -> list[Entry]:
    """Plugins registered with :func:`register` rather than found through an entry point.

    Remote workers (:mod:`robustcheck.run.ray`) re-register these: entry points they find themselves.
    """
    return [e for kind in GROUPS for e in _registry[kind].values() if e.name not in _entry_points(kind)]
