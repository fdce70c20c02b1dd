"""Creating probes, defenses and verifiers from their specs (``pgd-linf:steps=20``) through the registry.

A probe name may also be a verifier's: verifiers run as probes (score = share proved safe).
"""

from __future__ import annotations

from typing import Any

from robustcheck import registry
from robustcheck.api import Defense, Plugin, Probe
from robustcheck.errors import UnknownPluginError
from robustcheck.params import PluginSpec


def probe_spec(spec: str | PluginSpec) -> PluginSpec:
    """``spec`` as a probe's :class:`PluginSpec` (kind ``"verifier"`` for a name only verifiers carry);
    an unknown name raises :class:`~robustcheck.errors.UnknownPluginError` with close matches."""
    parsed = PluginSpec.parse("probe", spec)
    probes, verifiers = registry.names("probe"), registry.names("verifier")
    kind = "verifier" if parsed.name not in probes and parsed.name in verifiers else "probe"
    if parsed.name not in probes and kind == "probe":
        raise UnknownPluginError("probe", parsed.name, probes + verifiers)
    return PluginSpec(kind, parsed.name, dict(parsed.params))


def defense_spec(spec: str | PluginSpec) -> PluginSpec:
    """``spec`` as a defense's :class:`PluginSpec`; an unknown name raises with close matches."""
    parsed = PluginSpec.parse("defense", spec)
    registry.get("defense", parsed.name)
    return parsed


def plugin_class(spec: str | PluginSpec) -> type[Plugin]:
    """The class registered under a probe (or verifier) spec's name, without creating it."""
    spec = spec if isinstance(spec, PluginSpec) and spec.kind != "probe" else probe_spec(spec)
    return registry.get(spec.kind, spec.name).obj


def create(spec: PluginSpec, **params: Any) -> Plugin:
    """An instance of ``spec``'s plugin with its parameters (``params`` override them), checked."""
    kind = "defense" if spec.kind == "defense" else probe_spec(spec).kind
    return registry.get(kind, spec.name).obj(**{**spec.params, **params})


def create_probe(spec: str | PluginSpec, **params: Any) -> Probe:
    """``create_probe("pgd-linf:steps=20", epsilons=[0, 0.03])``; verifiers are found here too."""
    return create(probe_spec(spec), **params)  # type: ignore[return-value]


def create_defense(spec: str | PluginSpec, **params: Any) -> Defense:
    """``create_defense("bit-depth:bits=4")``."""
    return create(defense_spec(spec), **params)  # type: ignore[return-value]
