"""Model adapter: one wrapper that every probe, defense and verifier talks to.

:class:`ImageClassifier` wraps any ``torch.nn.Module`` that maps images to logits. Inputs are
float tensors of shape ``(B, C, H, W)`` inside ``bounds`` (``(0, 1)`` by default); an optional
mean/std normalisation is applied *inside* the wrapper, so attacks work in image space.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from robustcheck.data.dataset import ImageDataset
from robustcheck.deadline import interrupt_if_spent
from robustcheck.errors import InputError, ProbeTimeout, RobustCheckError

#: Modules whose composition is a piecewise-linear ReLU network (what exact verifiers need).
RELU_NETWORK_MODULES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Sequential, nn.Identity, nn.Unflatten)


#: How to declare a model's input size, for error messages (CLI, API / pytest fixture, TOML).
INPUT_SHAPE_HINT = (
    "declare it with --input-shape C,H,W (CLI), input_shape=(C, H, W) (API, pytest fixture) "
    "or input_shape = [C, H, W] in the TOML model table"
)


def extract_logits(output: Any, name: str | None = None) -> torch.Tensor:
    """Return the logits tensor from a model output: a tensor, a dict, an object with ``.logits``, a tuple.

    ``name``: the model's name, for the error message.
    """
    if isinstance(output, torch.Tensor):
        return output
    who = f"model {name!r}" if name is not None else "model"
    if isinstance(output, dict):
        for key in ("logits", "out", "output"):
            if key in output and isinstance(output[key], torch.Tensor):
                return output[key]
        raise InputError(f"{who} returned a dict without a 'logits' tensor (keys: {sorted(output)})")
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise InputError(f"{who} returned {type(output).__name__}, expected a logits tensor")


def check_finite(
    values: torch.Tensor, who: str, what: str, verb: str = "returned", inputs: torch.Tensor | None = None
) -> None:
    """Raise :class:`InputError` ``"{who} {verb} NaN {what} for 3 of 64 inputs ..."`` if ``values`` (first
    dimension: one row per input) holds NaN or Inf (``"NaN and Inf"`` when both occur).

    ``inputs`` (one row per input too): rows whose input is itself non-finite are not the model's fault
    and are not counted (an attack may probe such points); nothing is raised when only they are affected.
    One reduction on a detached view when all is well: cheap on every forward pass, and autograd
    through ``values`` is untouched.
    """
    detached = values.detach()
    if bool(torch.isfinite(detached).all()):
        return
    rows = detached.reshape(len(detached), -1) if detached.ndim else detached.reshape(1, 1)
    nan, inf = torch.isnan(rows).any(1), torch.isinf(rows).any(1)
    if inputs is not None and len(inputs) == len(rows):
        finite_input = torch.isfinite(inputs.detach().reshape(len(inputs), -1)).all(1).to(rows.device)
        nan, inf = nan & finite_input, inf & finite_input
    bad = int((nan | inf).sum())
    if not bad:
        return
    kind = "NaN and Inf" if nan.any() and inf.any() else "NaN" if nan.any() else "Inf"
    raise InputError(
        f"{who} {verb} {kind} {what} for {bad} of {len(rows)} inputs: robustness cannot be measured on "
        "non-finite values"
    )


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``x`` is ``(B, C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise InputError(f"std must be positive, got {list(std)}")
        if len(mean) != len(std):
            raise InputError(f"mean and std need one value per channel each, got {list(mean)} and {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """A classifier over images in ``bounds``, returning logits ``(B, num_classes)``.

    Args:
        module: the network; may return a tensor, a dict with ``logits``, or an object with ``.logits``.
        bounds: ``(low, high)`` of valid pixel values.
        mean, std: per-channel normalisation applied inside the wrapper (``None``: none).
        labels: class names, index = class id.
        input_shape: ``(C, H, W)`` the network expects; checked on every validated input.
        name: display name (used in reports; escaped there).
        default_data: name of the data source this model was built for (lets ``--data`` be omitted).
        device: where to run; defaults to the module's parameters' device.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        labels: Sequence[str] | None = None,
        input_shape: Sequence[int] | None = None,
        name: str = "model",
        default_data: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        low, high = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise InputError(f"bounds must be finite with low < high, got {bounds}")
        self.module = module
        self.bounds = (low, high)
        if (mean is None) != (std is None):
            raise InputError(f"give mean and std together (got mean={mean}, std={std})")
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else None
        self.labels = list(labels) if labels is not None else None
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.name = name
        self.default_data = default_data
        if device is None:
            param = next(iter(module.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.to(self.device)
        if not module.training:  # a module handed over in eval mode: the wrapper (and Normalize) too
            for own in (self, self.normalize):
                if own is not None:
                    own.training = False

    def move_to(self, device: str | torch.device) -> ImageClassifier:
        """Move the network to ``device`` (in place) and return this adapter; batches follow ``self.device``
        (:meth:`predict` moves them, probes move theirs)."""
        device = torch.device(device)
        if device != self.device:
            self.to(device)
            self.device = device
        return self

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` for images ``x`` of shape ``(B, C, H, W)`` in ``bounds`` (not validated)."""
        interrupt_if_spent()  # a long attack loop ends here once the run's budget is spent
        try:
            output = self.module(self.normalize(x) if self.normalize is not None else x)
        except ProbeTimeout:  # from an inner adapter (a defended model's): not the network's fault
            raise
        except InputError as exc:
            # from the ONNX converter (say which model), or from an inner adapter (which named itself)
            if "model '" in str(exc):
                raise
            raise InputError(f"model {self.name!r}: {exc}{self._shape_hint(x)}") from exc
        except Exception as exc:
            raise InputError(f"model {self.name!r} raised {type(exc).__name__} on input of shape {tuple(x.shape)}: {exc}{self._shape_hint(x)}") from exc
        return self.check_logits(extract_logits(output, self.name), x)

    def check_logits(self, logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``logits`` if they are a finite ``(len(inputs), classes)`` tensor, else :class:`InputError` naming the
        model and the problem (wrong number of dimensions, one row per input missing, NaN / Inf where the input
        was finite). Checked on a detached view: autograd through ``logits`` is untouched."""
        batch = len(inputs)
        if logits.ndim != 2 or logits.shape[0] != batch:
            if logits.ndim != 2:
                why = "expected 2-D logits (batch, classes)"
            else:
                why = f"expected one row of logits per input, ({batch}, classes)"
            raise InputError(f"model {self.name!r} returned shape {tuple(logits.shape)} for {batch} inputs: {why}")
        check_finite(logits, f"model {self.name!r}", "logits", inputs=inputs)
        return logits

    def _declared_hint(self) -> str:
        """For inputs that do not fit the declared ``input_shape``: where the shape comes from."""
        return f"; give data of that shape or, if the model takes another size, {INPUT_SHAPE_HINT}"

    def _shape_hint(self, x: torch.Tensor) -> str:
        """For errors on inputs ``x`` the network rejects: how to declare its input size when it declares none,
        or the declared size when ``x`` has another."""
        if self.input_shape is not None:
            if x.ndim == 4 and tuple(x.shape[1:]) != self.input_shape:
                return f" (model {self.name!r} declares input_shape {self.input_shape}, the input has {tuple(x.shape[1:])})"
            return ""
        return f" (model {self.name!r} declares no input_shape; if it takes one image size only, {INPUT_SHAPE_HINT})"

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits for ``x`` computed in eval mode, in batches, without gradients; returned on the CPU."""
        with self.eval_mode():
            parts = [self(x[i : i + batch_size].to(self.device)).float().cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.num_classes or 0)

    def input_gradients(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Gradients ``(B, C, H, W)`` of each image's cross-entropy loss (logits vs label ``y``) with respect to
        its pixels, in eval mode with the parameters frozen, in batches; returned on the CPU as float32.

        Zero where the output does not depend on the input (a constant model). NaN or Inf gradients (or logits)
        raise :class:`InputError` naming the model (see :meth:`check_gradients`): gradient attacks on them would
        report robustness they did not measure.
        """
        parts = []
        with self.eval_mode(), self.frozen(), torch.enable_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].detach().to(self.device).requires_grad_(True)
                yb = y[i : i + batch_size].to(self.device).long()
                logits = self(xb).float()
                try:
                    loss = nn.functional.cross_entropy(logits, yb, reduction="sum")
                except (IndexError, RuntimeError) as exc:  # labels outside the classes
                    raise InputError(
                        f"model {self.name!r}: labels must lie in 0..{logits.shape[1] - 1} for its "
                        f"{logits.shape[1]} logits ({type(exc).__name__}: {exc})"
                    ) from exc
                grad = torch.autograd.grad(loss, xb, allow_unused=True)[0] if loss.requires_grad else None
                grad = torch.zeros_like(xb) if grad is None else grad
                self.check_gradients(grad, inputs=xb)
                parts.append(grad.detach().float().cpu())
        return torch.cat(parts) if parts else torch.empty(0, *x.shape[1:])

    def check_gradients(
        self, grad: torch.Tensor, what: str = "input gradients", inputs: torch.Tensor | None = None
    ) -> None:
        """Raise :class:`InputError` (``"model 'm' has NaN input gradients for 3 of 64 inputs ..."``) if ``grad``
        (one row per input) holds NaN or Inf; for gradient probes that compute gradients themselves. Rows whose
        ``inputs`` (when given) are non-finite themselves are not counted."""
        check_finite(grad, f"model {self.name!r}", what, verb="has", inputs=inputs)

    @property
    def num_classes(self) -> int | None:
        return len(self.labels) if self.labels is not None else None

    def label(self, index: int) -> str:
        """Human-readable class name of ``index``."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return str(self.labels[index])
        return str(index)

    # -- validation ----------------------------------------------------------------------------
    def validate(self, x: torch.Tensor, what: str = "input", *, larger_ok: bool = False) -> None:
        """Raise :class:`InputError` naming the problem if ``x`` is not a valid image batch.

        With ``larger_ok``, images may be larger than ``input_shape`` (same channels): for probes that
        cut model-sized windows out of bigger photos themselves.
        """
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"{what} must be floating point, got dtype {x.dtype}")
        if x.ndim != 4:
            raise InputError(f"{what} must have shape (B, C, H, W), got {tuple(x.shape)}")
        if self.input_shape is not None and larger_ok:
            channels, height, width = self.input_shape
            if x.shape[1] != channels or x.shape[2] < height or x.shape[3] < width:
                raise InputError(
                    f"model {self.name!r} needs images with {channels} channels and at least {height}x{width} pixels, "
                    f"{what} has shape {tuple(x.shape[1:])} (C, H, W){self._declared_hint()}"
                )
        elif self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"model {self.name!r} expects images of shape {self.input_shape} (C, H, W), {what} has "
                f"{tuple(x.shape[1:])}{self._declared_hint()}"
            )
        if not torch.isfinite(x).all():
            raise InputError(f"{what} contains NaN or Inf values")
        low, high = self.bounds
        if x.numel() and (x.min() < low or x.max() > high):
            raise InputError(
                f"{what} values lie in [{x.min().item():.4g}, {x.max().item():.4g}], outside the model bounds [{low:g}, {high:g}]"
            )

    # -- modes ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Put every submodule in eval mode for the block, then restore each one's original mode."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Disable ``requires_grad`` on every parameter for the block (attacks need input gradients
        only; eagerpy's ``backward()`` would otherwise fill parameters' ``.grad``), then restore."""
        params = [(p, p.requires_grad, p.grad) for p in self.parameters()]
        for p, _, _ in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag, grad in params:
                p.requires_grad_(flag)
                p.grad = grad

    # -- capabilities --------------------------------------------------------------------------
    @property
    def gradients(self) -> str:
        """``"exact"``: gradients through the model are the true ones (defenses may weaken this)."""
        return "exact"

    def is_relu_network(self) -> bool:
        """True if the network is built only of Linear/Conv2d/ReLU/Flatten layers (exact verification)."""
        return all(isinstance(m, RELU_NETWORK_MODULES) for m in self.module.modules())

    def adapter_options(self) -> dict[str, Any]:
        """The adapter options this wrapper holds (``bounds``, ``labels``, ``input_shape``, ``name``,
        ``default_data`` and, with normalisation, ``mean`` / ``std``), as keyword arguments."""
        options: dict[str, Any] = {
            "bounds": self.bounds,
            "labels": self.labels,
            "input_shape": self.input_shape,
            "name": self.name,
            "default_data": self.default_data,
        }
        if self.normalize is not None:
            options["mean"] = self.normalize.mean.flatten().tolist()
            options["std"] = self.normalize.std.flatten().tolist()
        return options

    def with_options(self, options: dict[str, Any]) -> ImageClassifier:
        """The same network re-wrapped with ``options`` overriding this wrapper's adapter options."""
        merged = {**self.adapter_options(), **options}
        merged["bounds"] = tuple(merged["bounds"])
        return ImageClassifier(self.module, device=self.device, **merged)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (name, bounds, shape, classes, normalisation)."""
        return {
            "name": self.name,
            "bounds": list(self.bounds),
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "num_classes": self.num_classes,
            "normalize": None
            if self.normalize is None
            else {"mean": self.normalize.mean.flatten().tolist(), "std": self.normalize.std.flatten().tolist()},
        }


def as_classifier(model: nn.Module | ImageClassifier, **kwargs: Any) -> ImageClassifier:
    """Wrap a bare module (or pass an :class:`ImageClassifier` through unchanged)."""
    return model if isinstance(model, ImageClassifier) else ImageClassifier(model, **kwargs)


def audited_model(model: ImageClassifier, data: ImageDataset) -> ImageClassifier:
    """``model`` re-wrapped with what it does not declare and ``data`` supplies (what the runner audits):
    ``input_shape`` from the images, ``labels`` from the data's class names when their count equals the
    model's number of outputs (a classifier only). ``model`` itself when it declares both."""
    options: dict[str, Any] = {}
    if model.input_shape is None:
        options["input_shape"] = tuple(int(d) for d in data.x.shape[1:])
    if model.labels is None and data.classes and not getattr(model, "is_captioner", False) and len(data):
        try:
            outputs = model.predict(data.x[:1]).shape[1]
        except RobustCheckError:  # a model that fails on the data fails where it runs (check, execute)
            outputs = None
        if outputs == len(data.classes):
            options["labels"] = [str(c) for c in data.classes]
    return rewrap(model, options) if options else model


def rewrap(model: ImageClassifier, options: dict[str, Any]) -> ImageClassifier:
    """``model`` with adapter ``options`` (``input_shape``, ``labels``) overriding its own, same network.

    :meth:`ImageClassifier.with_options` where the class provides it; a subclass that does not (its
    constructor differs) gets a shallow copy with the attributes replaced, so it keeps its behaviour.
    """
    if type(model) is ImageClassifier or type(model).with_options is not ImageClassifier.with_options:
        return model.with_options(options)
    adapted = copy.copy(model)
    for key, value in options.items():
        setattr(adapted, key, tuple(int(d) for d in value) if key == "input_shape" else list(value) if key == "labels" else value)
    return adapted
