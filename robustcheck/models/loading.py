"""Turning model sources into :class:`~robustcheck.models.classifier.ImageClassifier` adapters
(:func:`load_model`), and reading weights files (:func:`load_state_dict`).

Model sources understood by :func:`load_model`:

* registry names: ``digits-cnn`` (group ``robustcheck.models``), with ``:weights=FILE`` if the factory takes it;
* import paths: ``package.module:factory`` returning an ``nn.Module`` or :class:`ImageClassifier`;
* TorchScript files (``.pt``, ``.pth``, ``.ts``) and ONNX files (``.onnx``, extra ``[onnx]``);
* ``torchvision:NAME`` and ``timm:NAME`` when the package and locally cached weights exist.

Adapter options go after the source as ``key=value`` pairs or keyword arguments: ``bounds``,
``mean``, ``std``, ``labels``, ``input_shape``, ``name``, ``default_data``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcheck import registry
from robustcheck.errors import InputError, UnknownPluginError, UsageError
from robustcheck.models.classifier import ImageClassifier, as_classifier
from robustcheck.models.onnx.graph import load_onnx, onnx_input_shape
from robustcheck.params import parse_spec

ADAPTER_OPTIONS = ("bounds", "mean", "std", "labels", "input_shape", "name", "default_data")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _describe_bad_file(path: Path) -> str:
    """A short reason why ``path`` is not a weights file (e.g. an HTML page saved by a browser)."""
    head = path.read_bytes()[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page, not model weights (a download link that returned a web page?)"
    if not head:
        return "it is empty"
    return "it is not a file torch can read"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)``; unreadable files raise :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read weights {str(path)!r}: {_describe_bad_file(path)} ({type(exc).__name__})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return state


def load_model(source: str | nn.Module | ImageClassifier, **options: Any) -> ImageClassifier:
    """Resolve ``source`` (see module docstring) into an :class:`ImageClassifier`."""
    if isinstance(source, ImageClassifier):
        unknown = sorted(set(options) - set(ADAPTER_OPTIONS))
        if unknown:
            raise UsageError(f"unknown model options {unknown}; adapter options are {', '.join(ADAPTER_OPTIONS)}")
        return _apply_options(source, options)
    if isinstance(source, nn.Module):
        return as_classifier(source, **options)
    name, params = parse_spec(source)
    options = {**params, **options}
    adapter = {k: options.pop(k) for k in ADAPTER_OPTIONS if k in options}
    if name in registry.names("model"):
        model = _call_factory(registry.get("model", name).obj, name, options)
        return _apply_options(as_classifier(model, name=name), adapter)
    if name.startswith(("torchvision:", "timm:")):
        hub, _, arch = name.partition(":")
        unknown = sorted(set(options) - {"pretrained"})
        if unknown:
            raise UsageError(f"unknown options for model {name!r}: {', '.join(unknown)} (known: pretrained, {', '.join(ADAPTER_OPTIONS)})")
        model = (_torchvision_model if hub == "torchvision" else _timm_model)(arch, **options)
        return _apply_options(model, adapter)
    if _IMPORT_PATH.match(name) and not Path(name).exists():
        factory = _import_object(name)
        return _apply_options(as_classifier(_call_factory(factory, name, options), name=name), adapter)
    path = Path(name)
    if path.suffix.lower() in (".onnx", ".pt", ".pth", ".ts", ".torchscript") or path.exists():
        if options:
            raise UsageError(f"unknown model options for file {name!r}: {', '.join(options)}")
        return _apply_options(_load_file(path), adapter)
    raise UnknownPluginError("model", name, registry.names("model"))


def _apply_options(model: ImageClassifier, adapter: dict[str, Any]) -> ImageClassifier:
    """Re-wrap ``model`` when adapter options (bounds, labels, ...) override its own."""
    return model.with_options(adapter) if adapter else model


def _call_factory(factory: Any, name: str, options: dict[str, Any]) -> Any:
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise UsageError(f"model {name!r} does not accept options {sorted(options)}: {exc}") from exc
    except ValueError:  # builtins without a signature: just call
        pass
    model = factory(**options)
    if not isinstance(model, nn.Module):
        raise InputError(f"model factory {name!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _import_object(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"cannot import module {module_name!r} for model {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InputError(f"module {module_name!r} has no attribute {attr!r}") from None


def _load_file(path: Path) -> ImageClassifier:
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} {'is not a file' if path.exists() else 'does not exist'}")
    if path.suffix.lower() == ".onnx":

        module = load_onnx(path)
        shape = onnx_input_shape(path)
        # a symbolic C, H or W (None) leaves the shape unchecked; a symbolic batch dimension is fine
        input_shape = shape[1:] if shape is not None and len(shape) == 4 and None not in shape[1:] else None
        return ImageClassifier(module.eval(), input_shape=input_shape, name=path.name)
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; -W error must not break loading
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        if _is_state_dict(path):
            raise InputError(
                f"{str(path)!r} holds only weights (a state dict): give the architecture as an import path "
                f"'package.module:factory' whose factory loads them"
            ) from exc
        raise InputError(f"cannot load model {str(path)!r}: {_describe_bad_file(path)} (expected TorchScript or ONNX)") from exc
    return ImageClassifier(module.eval(), name=path.name)


def _is_state_dict(path: Path) -> bool:
    try:
        load_state_dict(path)
    except InputError:
        return False
    return True


def _cached_file(url_or_name: str, directory: Path) -> Path | None:
    candidate = directory / os.path.basename(url_or_name)
    return candidate if candidate.is_file() else None


def _torchvision_model(arch: str, *, pretrained: bool = True) -> ImageClassifier:
    """A torchvision classifier with weights from the local torch hub cache (never downloads)."""
    try:
        models = importlib.import_module("torchvision.models")
    except Exception as exc:
        raise InputError(f"'torchvision:{arch}' needs an importable torchvision ({type(exc).__name__}: {exc})") from exc
    try:
        module = models.get_model(arch, weights=None)
    except Exception as exc:
        raise InputError(f"torchvision has no model {arch!r}: {exc}") from exc
    labels = None
    if pretrained:
        try:
            weights = models.get_model_weights(arch).DEFAULT
        except Exception as exc:
            raise InputError(f"torchvision has no pretrained weights for {arch!r} ({exc}); pass pretrained=false") from exc
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        cached = _cached_file(weights.url, cache)
        if cached is None:
            raise InputError(
                f"no cached weights for torchvision:{arch} in {cache} (expected {os.path.basename(weights.url)}); "
                "robustcheck never downloads: place the file there, or pass pretrained=false"
            )
        try:
            module.load_state_dict(load_state_dict(cached))
        except RuntimeError as exc:  # keys or shapes do not match the architecture
            raise InputError(f"cached weights {str(cached)!r} do not fit torchvision:{arch}: {exc}") from exc
        labels = list(weights.meta.get("categories") or []) or None
    return ImageClassifier(module.eval(), mean=IMAGENET_MEAN, std=IMAGENET_STD, labels=labels, name=f"torchvision:{arch}")


def _timm_model(arch: str, *, pretrained: bool = True) -> ImageClassifier:
    """A timm classifier with weights from the local Hugging Face cache (never downloads)."""
    try:
        timm = importlib.import_module("timm")
    except Exception as exc:
        raise InputError(f"'timm:{arch}' needs the timm package ({type(exc).__name__}: {exc})") from exc
    overlay: dict[str, Any] = {}
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(arch)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        cached = None
        if repo:
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError as exc:
                raise InputError(f"'timm:{arch}' needs huggingface_hub to find cached weights ({exc})") from exc
            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(repo, filename)
                if isinstance(found, str):
                    cached = found
                    break
        if cached is None:
            raise InputError(
                f"no cached weights for timm:{arch} (hub id {repo!r}); robustcheck never downloads: "
                "fill the Hugging Face cache first, or pass pretrained=false"
            )
        overlay = {"file": cached}
    try:
        module = timm.create_model(arch, pretrained=pretrained, pretrained_cfg_overlay=overlay or None)
    except Exception as exc:
        raise InputError(f"timm could not build {arch!r}: {exc}") from exc
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    shape = cfg.get("input_size")
    return ImageClassifier(module.eval(), mean=mean, std=std, input_shape=shape, name=f"timm:{arch}")
