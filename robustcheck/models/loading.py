"""Turning model sources into :class:`~robustcheck.models.classifier.ImageClassifier` adapters
(:func:`load_model`), and reading weights files (:func:`load_state_dict`).

Model sources understood by :func:`load_model`:

* registry names: ``digits-cnn`` (group ``robustcheck.models``), with ``:weights=FILE`` if the factory takes it;
* import paths: ``package.module:factory`` returning an ``nn.Module`` or :class:`ImageClassifier`; the
  current folder is importable for it (as with ``python -m``);
* Python files: ``path/to/file.py:factory``, the file imported as a module of its own (its folder importable
  while it loads, so its sibling modules are found);
* TorchScript files (``.pt``, ``.pth``, ``.ts``) and ONNX files (``.onnx``, extra ``[onnx]``);
* pickled whole modules (``torch.save(model)``) only with ``trust_pickle=True`` (CLI ``--trust-pickle``), since
  unpickling runs code named in the file;
* ``torchvision:NAME`` and ``timm:NAME`` when the package and locally cached weights exist.

Adapter options go after the source as ``key=value`` pairs or keyword arguments: ``bounds``,
``mean``, ``std``, ``labels``, ``input_shape``, ``name``, ``default_data``. Loading options
(:data:`LOAD_OPTIONS`): ``trust_pickle``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcheck import registry
from robustcheck.errors import InputError, RobustCheckError, UnknownPluginError, UsageError
from robustcheck.models.classifier import ImageClassifier, as_classifier
from robustcheck.models.onnx.graph import load_onnx, onnx_input_shape
from robustcheck.params import parse_spec

ADAPTER_OPTIONS = ("bounds", "mean", "std", "labels", "input_shape", "name", "default_data")
LOAD_OPTIONS = ("trust_pickle",)  # how a source is loaded, not passed to factories or adapters
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_FILE_FACTORY = re.compile(r"^(?P<file>.+\.py):(?P<attr>[A-Za-z_]\w*)$")
PICKLE_HINT = "pass --trust-pickle if you trust it (TOML model table: trust_pickle = true; Python: trust_pickle=True)"


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


def load_model(source: str | nn.Module | ImageClassifier, *, trust_pickle: bool = False, **options: Any) -> ImageClassifier:
    """Resolve ``source`` (see module docstring) into an :class:`ImageClassifier`.

    ``trust_pickle=True`` allows a file holding a pickled whole module (``torch.save(model)``): unpickling
    runs code the file names, so it is refused without it. It has no effect on other sources.
    """
    if isinstance(source, ImageClassifier):
        unknown = sorted(set(options) - set(ADAPTER_OPTIONS))
        if unknown:
            raise UsageError(f"unknown model options {unknown}; adapter options are {', '.join(ADAPTER_OPTIONS)}")
        return _apply_options(source, options)
    if isinstance(source, nn.Module):
        return as_classifier(source, **options)
    name, params = parse_spec(source)
    options = {**params, **options}
    trust_pickle = _flag(options.pop("trust_pickle", trust_pickle), "trust_pickle")
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
    file_factory = _FILE_FACTORY.match(name)
    if file_factory and not Path(name).exists():
        file = Path(file_factory["file"])
        module = _import_file(file, name)
        factory = _attribute(module, file_factory["attr"], f"file {str(file)!r}")
        with _importable(file.resolve().parent):  # lazy sibling imports inside the factory
            model = _call_factory(factory, name, options)
        return _apply_options(as_classifier(model, name=name), adapter)
    if _IMPORT_PATH.match(name) and not Path(name).exists():
        with _importable(Path.cwd()):  # as ``python -m`` does: modules of the current folder are importable
            factory = _import_object(name)
            model = _call_factory(factory, name, options)
        return _apply_options(as_classifier(model, name=name), adapter)
    path = Path(name)
    if path.suffix.lower() in (".onnx", ".pt", ".pth", ".ts", ".torchscript") or path.exists():
        if options:
            raise UsageError(f"unknown model options for file {name!r}: {', '.join(options)}")
        return _apply_options(_load_file(path, trust_pickle=trust_pickle), adapter)
    raise UnknownPluginError("model", name, registry.names("model"))


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"model option {key!r} must be true or false, got {value!r}")
    return value


def _apply_options(model: ImageClassifier, adapter: dict[str, Any]) -> ImageClassifier:
    """Re-wrap ``model`` when adapter options (bounds, labels, ...) override its own."""
    return model.with_options(adapter) if adapter else model


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call_factory(factory: Any, name: str, options: dict[str, Any]) -> Any:
    if not callable(factory):
        raise InputError(f"model factory {name!r} is a {type(factory).__name__}, not a function or class")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise UsageError(f"model {name!r} does not accept options {sorted(options)}: {exc}") from exc
    except ValueError:  # builtins without a signature: just call
        pass
    try:
        model = factory(**options)
    except RobustCheckError:  # already a message for the user (e.g. an unreadable weights file)
        raise
    except Exception as exc:
        raise InputError(f"model factory {name!r} raised {_one_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"model factory {name!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _on_sys_path(folder: Path) -> bool:
    for entry in sys.path:
        try:
            if Path(entry or ".").resolve() == folder:
                return True
        except (OSError, RuntimeError):
            continue
    return False


@contextlib.contextmanager
def _importable(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the block runs, unless it is there already."""
    folder = folder.resolve()
    added = not _on_sys_path(folder)
    if added:
        sys.path.insert(0, str(folder))
        importlib.invalidate_caches()  # files written a moment ago (tests, notebooks) are found
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(folder))


def _attribute(module: Any, attr: str, where: str) -> Any:
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InputError(f"{where} has no attribute {attr!r}") from None


def _import_object(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            hint = f" (looked in the current folder {str(Path.cwd())!r} and sys.path; a file is given as 'path/to/file.py:{attr}')"
        raise InputError(f"cannot import module {module_name!r} for model {path!r}: {exc}{hint}") from exc
    except Exception as exc:  # the module's own code failed (SyntaxError, a RuntimeError at import, ...)
        raise InputError(f"importing module {module_name!r} for model {path!r} raised {_one_line(exc)}") from exc
    return _attribute(module, attr, f"module {module_name!r}")


def _import_file(file: Path, spec: str) -> Any:
    """Import the Python file ``file`` as a module of its own (a name unique to its path), its folder importable."""
    if not file.is_file():
        raise InputError(f"model file {str(file)!r} {'is not a file' if file.exists() else 'does not exist'} (model {spec!r})")
    resolved = file.resolve()
    stem = re.sub(r"\W", "_", resolved.stem)
    module_name = f"_robustcheck_model_{stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"
    loader_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise InputError(f"cannot import model file {str(file)!r}: not a Python source file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses, pickling and typing look the module up by name
    try:
        with _importable(resolved.parent):
            loader_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if not isinstance(exc, Exception):
            raise
        raise InputError(f"importing model file {str(file)!r} for factory {spec!r} raised {_one_line(exc)}") from exc
    return module


def _load_file(path: Path, *, trust_pickle: bool = False) -> ImageClassifier:
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
        globals_ = _pickle_globals(path)
        if globals_:  # a pickle naming classes or functions: torch.save of a whole module (or another object)
            if not trust_pickle:
                what = "a pickled module" if any(g.startswith("torch.nn.") for g in globals_) else "a pickled Python object"
                raise InputError(f"{str(path)!r} is {what}: loading it runs code from the file; {PICKLE_HINT}") from exc
            return as_classifier(_unpickle_module(path).eval(), name=path.name)
        raise InputError(f"cannot load model {str(path)!r}: {_describe_bad_file(path)} (expected TorchScript or ONNX)") from exc
    return ImageClassifier(module.eval(), name=path.name)


def _is_state_dict(path: Path) -> bool:
    try:
        load_state_dict(path)
    except InputError:
        return False
    return True


def _pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a torch.save file refers to, read without unpickling (empty: not such a pickle)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return []
                streams = [archive.read(min(names, key=len))]
        else:  # the legacy format: a few pickles one after another (magic number, versions, the object)
            data = path.read_bytes()
            if not data.startswith(b"\x80"):
                return []
            streams, position = [], 0
            for _ in range(4):  # the object is the fourth; raw storage bytes follow the fifth
                try:
                    end = position + list(pickletools.genops(data[position:]))[-1][2] + 1
                except Exception:
                    break
                streams.append(data[position:end])
                position = end
        found: list[str] = []
        for stream in streams:
            strings: list[str] = []
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str):
                    strings.append(arg)
        return found
    except Exception:  # not a pickle pickletools can read: leave the verdict to the other checks
        return []


def _unpickle_module(path: Path) -> nn.Module:
    """``torch.load(weights_only=False)`` of a trusted file, with the current folder and the file's importable."""
    try:
        with _importable(Path.cwd()), _importable(path.resolve().parent), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(
            f"cannot unpickle model {str(path)!r}: {_one_line(exc)} (the classes it was saved with must be importable "
            "under the same module names: run from their folder, or save with TorchScript or ONNX)"
        ) from exc
    if not isinstance(obj, nn.Module):  # an ImageClassifier is one too, and keeps its options
        raise InputError(f"{str(path)!r} holds a pickled {type(obj).__name__}, expected a whole torch.nn.Module")
    return obj


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
