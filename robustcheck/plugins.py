"""Turning names, import paths and files into model adapters, probes and defenses.

Model sources understood by :func:`load_model`:

* registry names: ``digits-cnn`` (group ``robustcheck.models``), with ``:weights=FILE`` if the factory takes it;
* import paths: ``package.module:factory`` returning an ``nn.Module`` or :class:`ImageClassifier`;
* TorchScript files (``.pt``, ``.pth``, ``.ts``) and ONNX files (``.onnx``, extra ``[onnx]``);
* ``torchvision:NAME`` and ``timm:NAME`` when the package and locally cached weights exist.

Adapter options go after the source as ``key=value`` pairs or keyword arguments: ``bounds``,
``mean``, ``std``, ``labels``, ``input_shape``, ``name``.
"""

from __future__ import annotations

from typing import Any

from robustcheck import registry
from robustcheck.api import Defense, Probe
from robustcheck.errors import UsageError
from robustcheck.params import parse_spec


def _create(kind: str, base: type, spec: str, params: dict[str, Any]) -> Any:
    name, spec_params = parse_spec(spec)
    cls = registry.get(kind, name).obj
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UsageError(f"{kind} plugin {name!r} is {cls!r}, not a {base.__name__} subclass")
    return cls(**{**spec_params, **params})


def _probe_kind(name: str) -> str:
    """``"probe"``, or ``"verifier"`` for a name only the verifier group knows (verifiers run as probes)."""
    return "verifier" if name not in registry.names("probe") and name in registry.names("verifier") else "probe"


def plugin_class(spec: str) -> Any:
    """The class registered under the probe (or verifier) name of ``spec``, without creating it."""
    name, _ = parse_spec(spec)
    return registry.get(_probe_kind(name), name).obj


def create_probe(spec: str, **params: Any) -> Probe:
    """``create_probe("pgd-linf:steps=20", epsilons=[0, 0.03])``; verifiers are found here too."""
    name, _ = parse_spec(spec)
    return _create(_probe_kind(name), Probe, spec, params)


def create_defense(spec: str, **params: Any) -> Defense:
    """``create_defense("bit-depth:bits=4")``."""
    return _create("defense", Defense, spec, params)

