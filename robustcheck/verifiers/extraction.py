"""Extracting the :class:`~robustcheck.verifiers.network.Network` of a PyTorch module, an :class:`ImageClassifier` or ONNX.

Every affine piece of the original network (Linear, Conv2d, AvgPool2d, BatchNorm in eval mode, the adapter's
mean/std normalisation, Flatten and other reshapes, ONNX MatMul/Gemm/Add/Sub/Mul/Div by constants, ...) is
turned into a dense float64 matrix, and consecutive affine pieces are merged. Weights of Linear / Conv2d /
MatMul / Gemm are copied exactly (float32 -> float64 is exact); merged or probed pieces carry float64 rounding,
which the error analysis (:mod:`robustcheck.verifiers.rounding`) accounts for. Each piece also records the
magnitudes and the number of float32 roundings of the ops it replaces.

ONNX graphs may also hold Sigmoid / Tanh (relaxed by the bounds, never encoded exactly) and MaxPool (a window
matrix found by probing the op; encoded exactly by Z3 / MILP, relaxed by the bounds). Anything else (residual
branches, custom ``forward`` methods, ...) is refused with an :class:`~robustcheck.errors.InputError` naming
the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.errors import InputError
from robustcheck.models.classifier import ImageClassifier, Normalize
from robustcheck.models.onnx.graph import OnnxGraphModule, load_onnx, onnx_input_shape, run_step
from robustcheck.models.onnx.ops import RunInfo
from robustcheck.verifiers.network import (
    Activation,
    Affine,
    Layer,
    MaxPool,
    Network,
    ReLU,
    canonicalize,
    interleave,
)

#: Refuse dense matrices above this many entries (a conv layer on a large image): the encoding would not fit.
MAX_DENSE_ENTRIES = 30_000_000

SUPPORTED_LAYERS = (
    "Linear, Conv2d, ReLU, AvgPool2d, BatchNorm1d/2d (eval), Flatten, Unflatten, Identity, Dropout (eval), "
    "nn.Sequential and the adapter's mean/std normalisation"
)


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
    "Identity", "Dropout", "BatchNormalization", "AveragePool", "GlobalAveragePool", "Cast", "Pad",
}  # fmt: skip
#: smooth activations (relaxed by the bounds).
_ONNX_SMOOTH = {"Sigmoid": "sigmoid", "Tanh": "tanh"}
#: pooling ops turned into window matrices.
_ONNX_MAXPOOL = {"MaxPool", "GlobalMaxPool"}
#: float32 roundings an op adds per output beyond its dot product (bias add; element-wise ops and pooling: a few).
_ONNX_EXTRA_ROUNDINGS = {"MatMul": 1, "Gemm": 1, "Conv": 1} | dict.fromkeys(
    ("Add", "Sub", "Mul", "Div", "BatchNormalization", "AveragePool", "GlobalAveragePool"), 4
)
#: ops whose output depends only on the *shape* of their input (static even for a dynamic input).
_ONNX_SHAPE_ONLY = {"Shape"}


def from_onnx(path: str, *, name: str | None = None) -> tuple[Network, nn.Module, tuple[int, ...]]:
    """Read an ONNX file: the network, the float32 torch module (from :mod:`robustcheck.models.onnx.graph`) and the
    file's full input shape (batch dim included when the file has one; unknown dims read as 1)."""

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
        elif step.op_type in _ONNX_SMOOTH:
            layers.append(Activation(_ONNX_SMOOTH[step.op_type], label))
        elif step.op_type in _ONNX_MAXPOOL:
            layers.append(_onnx_maxpool(step, args, dyn[0], run, label))
        elif step.op_type == "Pad" and _is_identity(args[dyn[0]], outputs[0]):
            pass  # zero padding: the flat vector is unchanged
        elif step.op_type in _ONNX_AFFINE:
            layers.append(_onnx_affine(step, args, dyn[0], run, label))
        else:
            raise InputError(
                f"{name}: cannot verify {label}: only ReLU, Sigmoid, Tanh, MaxPool and affine ops "
                f"({', '.join(sorted(_ONNX_AFFINE))}) are supported"
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

    batch = int(full_shape[0]) if len(full_shape) >= 2 else None
    return RunInfo(module.file_batch, batch)


def _call_step(step: Any, args: list[torch.Tensor | None], run: Any, name: str) -> tuple[torch.Tensor, ...]:

    try:
        return run_step(step, args, run)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None


def _onnx_affine(step: Any, args: list[torch.Tensor | None], dyn: int, run: Any, label: str) -> Affine:
    """Probe one ONNX op as an affine map of its dynamic argument ``args[dyn]``."""
    x = args[dyn]
    assert x is not None
    in_shape = tuple(x.shape)

    apply = _batched_step(step, args, dyn, run)
    n = math.prod(in_shape)
    weight, bias = _probe_affine(lambda t: apply(t.reshape(t.shape[0], n)), (n,), label)
    extra = _ONNX_EXTRA_ROUNDINGS.get(step.op_type, 0)
    return Affine.exact(weight, bias, label, extra_roundings=extra)


def _is_identity(before: torch.Tensor | None, after: torch.Tensor) -> bool:
    return before is not None and tuple(before.shape) == tuple(after.shape)


def _batched_step(step: Any, args: list[torch.Tensor | None], dyn: int, run: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, n) -> (B, m)``: the step applied to each row (reshaped to the dynamic input's shape).

    With a leading batch dim of 1 the rows run as one batch when that gives the same result as one at a time
    (checked on two random rows); otherwise (shapes baked into the graph) one basis vector at a time.
    """
    x = args[dyn]
    assert x is not None
    in_shape = tuple(x.shape)

    def one_by_one(batch: torch.Tensor) -> torch.Tensor:
        outs = []
        for sample in batch:
            call = list(args)
            call[dyn] = sample.reshape(in_shape)
            result = step.fn(call, run)
            outs.append((result[0] if isinstance(result, tuple) else result).reshape(-1))
        return torch.stack(outs)

    def batched(batch: torch.Tensor) -> torch.Tensor:
        call = list(args)
        call[dyn] = batch.reshape(len(batch), *in_shape[1:])
        result = step.fn(call, type(run)(run.file_batch, len(batch)))
        return (result[0] if isinstance(result, tuple) else result).reshape(len(batch), -1)

    if len(in_shape) < 2 or in_shape[0] != 1:
        return one_by_one
    probe = torch.rand((2, math.prod(in_shape)), generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    try:
        same = torch.equal(batched(probe), one_by_one(probe))
    except Exception:  # an op that refuses another batch size: the slow path is always right
        same = False
    return batched if same else one_by_one


def _onnx_maxpool(step: Any, args: list[torch.Tensor | None], dyn: int, run: Any, label: str) -> MaxPool:
    """The window matrix of a max pooling op: output ``w`` takes the max over the inputs whose one-hot probe
    reaches it (others 0; padding never wins)."""
    x = args[dyn]
    assert x is not None
    n = x.numel()
    apply = _batched_step(step, args, dyn, run)
    members: list[list[int]] = []
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        basis = torch.zeros((stop - start, n), dtype=torch.float64)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        out = apply(basis)
        if not members:
            members = [[] for _ in range(out.shape[1])]
        rows, cols = torch.nonzero(out > 0.5, as_tuple=True)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            members[c].append(start + r)
    if any(not m for m in members):
        raise InputError(f"cannot verify {label}: a pooling window covers no input")
    width = max(len(m) for m in members)
    windows = np.array([m + [m[0]] * (width - len(m)) for m in members], dtype=np.int64)
    return MaxPool(windows, label)
