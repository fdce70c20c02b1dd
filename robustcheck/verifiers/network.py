"""Extract a verifiable piecewise-affine network from a PyTorch module, an :class:`ImageClassifier` or ONNX.

The verifier works on a canonical form::

    z_0 = W_0 x + b_0,  a_0 = relu(z_0),  ...,  z_{L-1} = W_{L-1} a_{L-2} + b_{L-1},  a_{L-1} = relu(z_{L-1}),
    y = W_L a_{L-1} + b_L

where ``x`` is the flattened (C-order) model input and ``y`` the logits. Every affine piece of the original
network (Linear, Conv2d, AvgPool2d, BatchNorm in eval mode, the adapter's mean/std normalisation, Flatten and
other reshapes, ONNX MatMul/Gemm/Add/Sub/Mul/Div by constants, ...) is turned into a dense float64 matrix, and
consecutive affine pieces are merged. Weights of Linear / Conv2d / MatMul / Gemm are copied exactly (float32 ->
float64 is exact); merged or probed pieces carry float64 rounding, which the error analysis accounts for.

Each :class:`Affine` also carries what a *float32* evaluation of the original chain of ops could deviate by
(``abs_weight``, ``abs_bias``, ``fan_in``): :func:`float32_error` turns them into a rigorous bound of the
difference between the float32 torch model and the real-valued network encoded here (standard dot-product
rounding analysis, ``|fl(w.x) - w.x| <= gamma_n |w|.|x|`` with ``gamma_n = n u / (1 - n u)``, ``u = 2^-24``).

Anything else (Sigmoid, MaxPool, residual branches, custom ``forward`` methods, ...) is refused with an
:class:`~robustcheck.errors.InputError` naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.errors import InputError
from robustcheck.models.classifier import ImageClassifier, Normalize

#: float32 unit roundoff, and float64's (for pieces we compute in float64 ourselves).
U32 = 2.0**-24
U64 = 2.0**-53
#: Refuse dense matrices above this many entries (a conv layer on a large image): the encoding would not fit.
MAX_DENSE_ENTRIES = 30_000_000

SUPPORTED_LAYERS = (
    "Linear, Conv2d, ReLU, AvgPool2d, BatchNorm1d/2d (eval), Flatten, Unflatten, Identity, Dropout (eval), "
    "nn.Sequential and the adapter's mean/std normalisation"
)


@dataclass
class Affine:
    """``y = W x + b`` on flat vectors; ``W`` ``(out, in)``, ``b`` ``(out,)``, both float64.

    ``abs_weight`` / ``abs_bias`` (same shapes) bound the magnitudes of every product and addend of the original
    float32 chain of ops that computes each output (for a single op: ``|W|`` and ``|b|``), and ``fan_in`` the
    number of roundings along it; :func:`float32_error` uses them.
    """

    weight: np.ndarray
    bias: np.ndarray
    abs_weight: np.ndarray
    abs_bias: np.ndarray
    fan_in: int
    name: str = "affine"

    @classmethod
    def exact(cls, weight: np.ndarray, bias: np.ndarray, name: str, extra_roundings: int = 1) -> Affine:
        """A single float32 op: one rounding per product and per addition (``fan_in`` = columns + bias)."""
        weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
        nnz = int(max(1, (weight != 0).sum(axis=1).max(initial=1)))
        return cls(weight, bias, np.abs(weight), np.abs(bias), nnz + extra_roundings, name)

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape  # type: ignore[return-value]

    def then(self, other: Affine) -> Affine:
        """The composition ``other(self(x))``, merged in float64."""
        weight = other.weight @ self.weight
        bias = other.weight @ self.bias + other.bias
        abs_weight = other.abs_weight @ self.abs_weight
        abs_bias = other.abs_weight @ self.abs_bias + other.abs_bias
        return Affine(
            weight, bias, abs_weight, abs_bias, self.fan_in + other.fan_in, f"{self.name}+{other.name}"
        )


@dataclass
class ReLU:
    """Elementwise ``max(0, x)``."""

    name: str = "relu"


Layer = Affine | ReLU


@dataclass
class Network:
    """Canonical ReLU network: ``affines[0]``, ReLU, ``affines[1]``, ReLU, ..., ``affines[-1]`` (the logits).

    Attributes:
        affines: the affine pieces; ``len(affines) - 1`` hidden ReLU layers.
        input_shape: shape of one model input (e.g. ``(C, H, W)``); ``x`` is its C-order flattening.
        name: where it came from (for messages).
        meta: extra facts from the conversion (e.g. an ONNX graph's ``output_shape``).
    """

    affines: list[Affine]
    input_shape: tuple[int, ...]
    name: str = "network"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return self.affines[0].shape[1]

    @property
    def num_outputs(self) -> int:
        return self.affines[-1].shape[0]

    @property
    def hidden_sizes(self) -> list[int]:
        return [a.shape[0] for a in self.affines[:-1]]

    @property
    def num_relus(self) -> int:
        return sum(self.hidden_sizes)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """float64 logits ``(B, K)`` of flat inputs ``x`` ``(B, n)`` (the real-valued network, float64 arithmetic)."""
        return self.forward_from(np.atleast_2d(np.asarray(x, np.float64)), 0)

    def forward_from(self, h: np.ndarray, layer: int) -> np.ndarray:
        """Logits from the input of ``affines[layer]`` (``layer`` 0: the input; k: post-ReLU activations of layer k-1)."""
        for k, affine in enumerate(self.affines[layer:], start=layer):
            h = h @ affine.weight.T + affine.bias
            if k < len(self.affines) - 1:
                h = np.maximum(h, 0.0)
        return h

    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Pre-activations ``z_k`` ``(B, n_k)`` of every hidden layer for flat inputs ``x`` ``(B, n)`` (float64)."""
        h, out = np.atleast_2d(np.asarray(x, np.float64)), []
        for affine in self.affines[:-1]:
            z = h @ affine.weight.T + affine.bias
            out.append(z)
            h = np.maximum(z, 0.0)
        return out

    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Post-ReLU activations ``(B, n_k)`` of every hidden layer for flat inputs ``x`` ``(B, n)``."""
        return [np.maximum(z, 0.0) for z in self.pre_activations(x)]

    def suffix(self, layer: int) -> Network:
        """The network from the post-ReLU activations of hidden layer ``layer - 1`` (``layer`` >= 1) to the logits."""
        if not 1 <= layer < len(self.affines):
            raise InputError(
                f"network {self.name!r} has hidden layers 1..{len(self.affines) - 1}, not {layer}"
            )
        return Network(self.affines[layer:], (self.affines[layer].shape[1],), f"{self.name}[{layer}:]")

    def prefix(self, layer: int) -> Network:
        """The network from the input to the pre-activations of hidden layer ``layer - 1`` (no final ReLU)."""
        return Network(self.affines[:layer], self.input_shape, f"{self.name}[:{layer}]")


# ---------------------------------------------------------------------------------------------------------------
# Canonical form
# ---------------------------------------------------------------------------------------------------------------
def canonicalize(layers: list[Layer], input_shape: tuple[int, ...], num_inputs: int, name: str) -> Network:
    """Merge consecutive affine layers and repeated ReLUs into the alternating canonical form."""
    affines: list[Affine] = []
    pending: Affine | None = None
    for layer in layers:
        if isinstance(layer, ReLU):
            if pending is None and not affines:  # a ReLU on the raw input: an identity affine first
                pending = _identity(num_inputs, "input")
            if pending is not None:
                affines.append(pending)
                pending = None
            # a ReLU right after a ReLU is idempotent: nothing to add
        else:
            pending = layer if pending is None else pending.then(layer)
    if pending is None:  # ends with a ReLU: the logits are the last activations
        size = affines[-1].shape[0] if affines else num_inputs
        pending = _identity(size, "output")
    affines.append(pending)
    for k in range(1, len(affines)):
        if affines[k].shape[1] != affines[k - 1].shape[0]:
            raise InputError(
                f"{name}: layer sizes do not chain ({affines[k - 1].shape} then {affines[k].shape})"
            )
    if affines[0].shape[1] != num_inputs:
        raise InputError(
            f"{name}: the first layer takes {affines[0].shape[1]} values, the input has {num_inputs}"
        )
    return Network(affines, tuple(input_shape), name)


def interleave(affines: list[Affine]) -> list[Layer]:
    """The layer list ``[A0, ReLU, A1, ReLU, ..., AL]`` of canonical affine pieces."""
    layers: list[Layer] = []
    for k, affine in enumerate(affines):
        if k:
            layers.append(ReLU())
        layers.append(affine)
    return layers


def _identity(size: int, name: str) -> Affine:
    eye = np.eye(size)
    return Affine(eye, np.zeros(size), eye, np.zeros(size), 0, name)


def _check_size(rows: int, cols: int, what: str) -> None:
    if rows * cols > MAX_DENSE_ENTRIES:
        raise InputError(
            f"{what} maps {cols} values to {rows}: its dense matrix ({rows * cols:,} entries) is too large for the "
            f"exact encoding (limit {MAX_DENSE_ENTRIES:,})"
        )


def _probe_affine(
    fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``(W, b)`` of an affine map on float64 tensors: ``b = fn(0)``, column i = ``fn(e_i) - b``.

    ``fn`` takes a batch ``(B, *in_shape)``. Exact for maps whose outputs are single products of a basis entry
    (reshapes, convolutions without bias); otherwise accurate to float64 rounding.
    """
    n = math.prod(in_shape)
    with torch.no_grad():
        bias = fn(torch.zeros((1, *in_shape), dtype=torch.float64)).reshape(-1)
        _check_size(bias.numel(), n, what)
        cols = []
        for start in range(0, n, 512):
            stop = min(n, start + 512)
            basis = torch.zeros((stop - start, n), dtype=torch.float64)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            cols.append(fn(basis.reshape(stop - start, *in_shape)).reshape(stop - start, -1) - bias)
    return torch.cat(cols).T.contiguous().numpy(), bias.numpy().copy()


# ---------------------------------------------------------------------------------------------------------------
# PyTorch modules
# ---------------------------------------------------------------------------------------------------------------
def from_classifier(model: ImageClassifier) -> Network:
    """Extract the network of an adapter (its mean/std normalisation included); needs ``model.input_shape``."""
    if model.input_shape is None:
        raise InputError(
            f"model {model.name!r} has no input_shape: the verifier needs the (C, H, W) it expects"
        )
    from robustcheck.models.onnx.graph import OnnxGraphModule

    prefix: list[Layer] = []
    shape = tuple(model.input_shape)
    if model.normalize is not None:
        prefix.append(_normalize_affine(model.normalize, shape))
    if isinstance(model.module, OnnxGraphModule):
        net = from_onnx_module(model.module, (1, *shape), name=model.name)
        layers = prefix + interleave(net.affines)
        return canonicalize(layers, shape, math.prod(shape), model.name)
    return from_module(model.module, shape, name=model.name, prefix=prefix)


def from_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    name: str = "module",
    prefix: list[Layer] | None = None,
) -> Network:
    """Extract a chain of supported layers from ``module`` taking one input of shape ``input_shape`` (no batch dim)."""
    if module.training:
        # BatchNorm / Dropout behave differently in training mode: verify what eval mode computes.
        raise InputError(f"{name}: the module is in training mode; call .eval() before verifying it")
    layers: list[Layer] = list(prefix or [])
    shape = tuple(int(d) for d in input_shape)
    leaves = _leaves(module, name)
    for path, leaf in leaves:  # refuse unsupported layers before any (possibly large) conversion work
        if isinstance(leaf, nn.MaxPool2d):
            _convert_leaf(leaf, path, shape)
    for path, leaf in leaves:
        new, shape = _convert_leaf(leaf, path, shape)
        layers.extend(new)
    return canonicalize(layers, input_shape, math.prod(input_shape), name)


def _leaves(module: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """Leaf modules in execution order; only ``nn.Sequential`` containers have a known order."""
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            out.extend(_leaves(child, f"{path}.{child_name}"))
        return out
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.AvgPool2d,
                           nn.BatchNorm1d, nn.BatchNorm2d, Normalize, nn.MaxPool2d)):  # fmt: skip
        return [(path, module)]
    if any(True for _ in module.children()):
        raise InputError(
            f"cannot verify layer {path!r} ({type(module).__name__}): a container with its own forward(); only "
            f"nn.Sequential chains of {SUPPORTED_LAYERS} are supported"
        )
    raise InputError(
        f"cannot verify layer {path!r} ({type(module).__name__}): supported layers are {SUPPORTED_LAYERS}"
    )


def _out_shape(leaf: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(leaf(torch.zeros((1, *shape))).shape[1:])


def _convert_leaf(leaf: nn.Module, path: str, shape: tuple[int, ...]) -> tuple[list[Layer], tuple[int, ...]]:
    """One leaf module -> its layers and the output shape (per sample)."""
    if isinstance(leaf, nn.MaxPool2d):
        raise InputError(
            f"cannot verify layer {path!r} (MaxPool2d): max pooling is not encoded by z3-safety (it needs a "
            f"disjunction per pooling window); use average pooling or strided convolutions. Supported: {SUPPORTED_LAYERS}"
        )
    try:
        out_shape = _out_shape(leaf, shape)
    except RuntimeError as exc:
        raise InputError(
            f"layer {path!r} ({type(leaf).__name__}) rejects inputs of shape {shape}: {exc}"
        ) from None
    if isinstance(leaf, nn.ReLU):
        return [ReLU(path)], out_shape
    if isinstance(leaf, (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)):
        # C-order reshapes leave the flat vector unchanged; dropout is the identity in eval
        return [], out_shape
    if isinstance(leaf, nn.Linear):
        weight = leaf.weight.detach().double().numpy()
        bias = leaf.bias.detach().double().numpy() if leaf.bias is not None else np.zeros(weight.shape[0])
        return [Affine.exact(weight, bias, path)], out_shape
    if isinstance(leaf, nn.Conv2d):
        return [_conv_affine(leaf, path, shape, out_shape)], out_shape
    if isinstance(leaf, nn.AvgPool2d):
        weight, bias = _probe_affine(lambda t: leaf(t), shape, f"layer {path!r} (AvgPool2d)")
        return [Affine.exact(weight, bias, path, extra_roundings=2)], out_shape
    if isinstance(leaf, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return [_batchnorm_affine(leaf, path, shape)], out_shape
    if isinstance(leaf, Normalize):
        return [_normalize_affine(leaf, shape)], out_shape
    raise InputError(
        f"cannot verify layer {path!r} ({type(leaf).__name__}): supported layers are {SUPPORTED_LAYERS}"
    )


def _conv_affine(conv: nn.Conv2d, path: str, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Affine:
    if conv.padding_mode != "zeros":
        raise InputError(
            f"cannot verify layer {path!r} (Conv2d): padding_mode {conv.padding_mode!r} is not supported"
        )
    weight64 = conv.weight.detach().double()

    def apply(t: torch.Tensor) -> torch.Tensor:
        # without bias: every output of a basis input is one exact product
        return F.conv2d(t, weight64, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    weight, _ = _probe_affine(apply, shape, f"layer {path!r} (Conv2d)")
    bias_c = conv.bias.detach().double().numpy() if conv.bias is not None else np.zeros(out_shape[0])
    bias = np.repeat(bias_c, math.prod(out_shape[1:]))
    return Affine.exact(weight, bias, path)


def _batchnorm_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d, path: str, shape: tuple[int, ...]) -> Affine:
    if bn.running_mean is None or bn.running_var is None:
        raise InputError(f"cannot verify layer {path!r} ({type(bn).__name__}): no running statistics")
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(mean)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.eps)
    per = math.prod(shape[1:]) if len(shape) > 1 else 1
    diag, shift = np.repeat(scale, per), np.repeat(beta - mean * scale, per)
    # float32 evaluation: subtract mean, rsqrt, multiply, add -- a handful of roundings per element.
    abs_bias = np.repeat(np.abs(beta) + np.abs(mean * scale), per)
    return Affine(np.diag(diag), shift, np.diag(np.abs(diag)), abs_bias, 6, path)


def _normalize_affine(norm: Normalize, shape: tuple[int, ...]) -> Affine:
    """``(x - mean) / std`` per channel as a diagonal affine map on the flat ``(C, H, W)`` input."""
    mean = norm.mean.detach().double().flatten().numpy()
    std = norm.std.detach().double().flatten().numpy()
    per = math.prod(shape[1:])
    inv = np.repeat(1.0 / std, per)
    shift = np.repeat(-mean / std, per)
    return Affine(np.diag(inv), shift, np.diag(np.abs(inv)), np.abs(shift), 3, "normalize")


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------
#: ONNX ops that are affine in their one dynamic input (the others being constants).
_ONNX_AFFINE = {
    "MatMul", "Gemm", "Conv", "Add", "Sub", "Mul", "Div", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Identity", "Dropout", "BatchNormalization", "AveragePool", "GlobalAveragePool", "Cast",
}  # fmt: skip
#: float32 roundings an op adds per output beyond its dot product (bias add; element-wise ops and pooling: a few).
_ONNX_EXTRA_ROUNDINGS = {"MatMul": 1, "Gemm": 1, "Conv": 1} | dict.fromkeys(
    ("Add", "Sub", "Mul", "Div", "BatchNormalization", "AveragePool", "GlobalAveragePool"), 4
)
#: ops whose output depends only on the *shape* of their input (static even for a dynamic input).
_ONNX_SHAPE_ONLY = {"Shape"}


def from_onnx(path: str, *, name: str | None = None) -> tuple[Network, nn.Module, tuple[int, ...]]:
    """Read an ONNX file: the network, the float32 torch module (from :mod:`robustcheck.models.onnx.graph`) and the
    file's full input shape (batch dim included when the file has one; unknown dims read as 1)."""
    from robustcheck.models.onnx.graph import load_onnx, onnx_input_shape

    module = load_onnx(path)
    file_shape = onnx_input_shape(path)
    if file_shape is None:
        raise InputError(f"ONNX model {path!r}: its input carries no shape; the verifier needs one")
    full_shape = tuple(int(d) if d else 1 for d in file_shape)
    return from_onnx_module(module, full_shape, name=name or str(path)), module, full_shape


def from_onnx_module(module: nn.Module, full_shape: tuple[int, ...], *, name: str = "onnx") -> Network:
    """Walk the steps of an :class:`~robustcheck.models.onnx.graph.OnnxGraphModule` fed a single input of ``full_shape``.

    Every step with a dynamic input (one that depends on the model input's values) must be a ReLU or an op in
    ``_ONNX_AFFINE`` with exactly one dynamic input; its dense affine map is probed in float64.
    """
    if len(module.input_names) != 1 or len(module.output_names) != 1:
        raise InputError(f"{name}: the verifier needs a graph with one input and one output")
    env: dict[str, torch.Tensor] = {}
    for onnx_name, attr in module._attr_of.items():
        value = getattr(module, attr).detach()
        env[onnx_name] = value.double() if value.is_floating_point() else value
    source = module.input_names[0]
    env[source] = torch.zeros(full_shape, dtype=torch.float64)
    dynamic = {source}
    run = _run_info(module, full_shape)
    layers: list[Layer] = []
    for step in module.steps:
        args = [env[n] if n else None for n in step.inputs]
        dyn = [i for i, n in enumerate(step.inputs) if n in dynamic]
        outputs = _call_step(step, args, run, name)
        for out_name, value in zip(step.outputs, outputs, strict=False):
            if out_name:
                env[out_name] = value
        if not dyn or step.op_type in _ONNX_SHAPE_ONLY:
            continue
        label = f"ONNX node {step.name or step.outputs[0]!r} ({step.op_type})"
        if len(dyn) > 1:
            raise InputError(
                f"{name}: cannot verify {label}: it combines two values computed from the input (branches are not supported)"
            )
        if step.op_type == "Relu":
            layers.append(ReLU(label))
        elif step.op_type in _ONNX_AFFINE:
            layers.append(_onnx_affine(step, args, dyn[0], run, label))
        else:
            raise InputError(
                f"{name}: cannot verify {label}: only ReLU and affine ops ({', '.join(sorted(_ONNX_AFFINE))}) are supported"
            )
        dynamic.add(step.outputs[0])
    output = module.output_names[0]
    if output not in dynamic:
        raise InputError(f"{name}: the graph output does not depend on its input")
    num_inputs = math.prod(full_shape)
    net = canonicalize(layers, full_shape, num_inputs, name)
    net.meta["output_shape"] = tuple(env[output].shape)
    return net


def _run_info(module: nn.Module, full_shape: tuple[int, ...]) -> Any:
    from robustcheck.models.onnx.graph import _RunInfo

    batch = int(full_shape[0]) if len(full_shape) >= 2 else None
    return _RunInfo(module.file_batch, batch)


def _call_step(step: Any, args: list[torch.Tensor | None], run: Any, name: str) -> tuple[torch.Tensor, ...]:
    from robustcheck.models.onnx.graph import _run_step

    try:
        return _run_step(step, args, run)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None


def _onnx_affine(step: Any, args: list[torch.Tensor | None], dyn: int, run: Any, label: str) -> Affine:
    """Probe one ONNX op as an affine map of its dynamic argument ``args[dyn]``."""
    x = args[dyn]
    assert x is not None
    in_shape = tuple(x.shape)

    def apply(batch: torch.Tensor) -> torch.Tensor:
        outs = []
        for sample in batch:  # graph shapes are fixed (often batch 1): feed one basis vector at a time
            call = list(args)
            call[dyn] = sample.reshape(in_shape)
            result = step.fn(call, run)
            outs.append(result[0] if isinstance(result, tuple) else result)
        return torch.stack([o.reshape(-1) for o in outs])

    n = math.prod(in_shape)
    weight, bias = _probe_affine(lambda t: apply(t.reshape(t.shape[0], n)), (n,), label)
    extra = _ONNX_EXTRA_ROUNDINGS.get(step.op_type, 0)
    return Affine.exact(weight, bias, label, extra_roundings=extra)


# ---------------------------------------------------------------------------------------------------------------
# float32 evaluation error
# ---------------------------------------------------------------------------------------------------------------
def gamma(n: int, unit: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)`` for a chain of ``n`` roundings of unit ``unit`` (float32 by default), plus
    float64 slack ``4 n 2^-53`` for our own merging / probing of the pieces (``unit`` 0: that slack alone)."""
    n = max(int(n), 1)
    return n * unit / (1.0 - n * unit) + 4.0 * n * U64


def float32_error(net: Network, magnitudes: list[np.ndarray]) -> np.ndarray:
    """A crude bound of ``|y_float32(x) - y_real(x)|`` per logit over a region (see :func:`local_errors`).

    ``magnitudes[k]`` bounds ``|input of affines[k]|`` elementwise over the region. Errors entering a layer are
    propagated through ``abs_weight`` (ReLU is 1-Lipschitz and exact), which ignores cancellation:
    :func:`spec_error` is much tighter.
    """
    return local_errors(net, magnitudes)[1][-1]


def local_errors(
    net: Network, magnitudes: list[np.ndarray], unit: float = U32
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per affine piece: the rounding error it adds itself (``gamma_n (|W| |input| + |b|)``, with the float
    input's magnitude), and the crude accumulated deviation of its output (errors through ``abs_weight``).
    ``unit`` is the evaluation's unit roundoff (:func:`gamma`)."""
    dev = np.zeros(net.num_inputs)
    local, accumulated = [], []
    for affine, mag in zip(net.affines, magnitudes, strict=True):
        own = gamma(affine.fan_in, unit) * (affine.abs_weight @ (mag + dev) + affine.abs_bias)
        dev = affine.abs_weight @ dev + own
        local.append(own)
        accumulated.append(dev)
    return local, accumulated


def spec_error(net: Network, spec: np.ndarray, lower: list[np.ndarray], upper: list[np.ndarray],
               magnitudes: list[np.ndarray], unit: float = U32) -> np.ndarray:  # fmt: skip
    """Bound ``|spec @ (y_float32(x) - y_real(x))|`` per row over a region with pre-activation bounds ``lower`` /
    ``upper`` (of the real network); ``spec`` ``(m, K)``, result ``(m,)`` in logit units.

    With ``unit=0`` it bounds only the float64 rounding of our merged / probed weights: the deviation of the
    encoded network from the exact real-valued composition of the original layers (``"real"`` semantics).

    The deviation obeys ``dz_{k+1} = W D_k dz_k + e_{k+1}`` with each layer's own rounding ``|e_k| <= local_k``
    and ``D_k`` diagonal: 1 where both networks' ReLU is surely active, 0 where surely inactive, somewhere in
    ``[0, 1]`` otherwise (``relu(z + d) - relu(z) = t d`` with ``t`` in ``[0, 1]``). Backwards from ``spec``, the
    coefficient of each ``e_k`` is kept as an interval, so cancellations inside the weights count.
    """
    local, accumulated = local_errors(net, magnitudes, unit)
    center = spec @ net.affines[-1].weight
    radius = np.zeros_like(center)
    total = np.abs(spec) @ local[-1]
    for k in range(len(net.affines) - 2, -1, -1):
        dev = accumulated[k]
        active, inactive = lower[k] - dev > 0, upper[k] + dev < 0
        unstable = ~active & ~inactive
        c_lo = np.where(inactive, 0.0, np.where(unstable, np.minimum(center - radius, 0.0), center - radius))
        c_hi = np.where(inactive, 0.0, np.where(unstable, np.maximum(center + radius, 0.0), center + radius))
        total = total + np.maximum(np.abs(c_lo), np.abs(c_hi)) @ local[k]
        center, radius = (c_lo + c_hi) / 2, (c_hi - c_lo) / 2
        weight = net.affines[k].weight
        center, radius = center @ weight, radius @ np.abs(weight)
    return total * (1.0 + 1e-6) + 1e-12
