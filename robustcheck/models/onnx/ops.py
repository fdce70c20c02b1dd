"""The ONNX operators the converter supports: one torch implementation and one builder per op type.

An op implementation is a module-level function ``(inputs, run info, *, attributes) -> tensor(s)``; its
builder checks a :class:`Node`'s attributes and binds them with ``functools.partial``, so a converted module
stays picklable. :func:`build_op` picks the builder by op type; Constant nodes are folded into tensors at
conversion time instead (:func:`constant_value`). Also here: the small types the graph module
(:mod:`robustcheck.models.onnx.graph`) hands to the ops, :class:`Node` and :class:`RunInfo`, and
:class:`NodeError` for nodes the converter cannot handle.

Supported ops (:data:`SUPPORTED_OPS`, default ``ai.onnx`` domain): Add, AveragePool, BatchNormalization
(inference), Cast, Clip, Concat, Constant, Conv, Div, Dropout (inference), Flatten, Gather, Gemm,
GlobalAveragePool, GlobalMaxPool, Identity, LeakyRelu, MatMul, MaxPool, Mul, Pad, Relu, Reshape, Shape, Sigmoid,
Softmax, Squeeze, Sub, Tanh, Transpose, Unsqueeze.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SUPPORTED_OPS", "Node", "NodeError", "OpFn", "RunInfo", "build_op", "constant_value", "tensor_of"]

Args = Sequence["torch.Tensor | None"]


class NodeError(ValueError):
    """A node the converter cannot handle; the loader adds the file and node name to the message."""


@dataclass(frozen=True)
class RunInfo:
    """Per-call facts that some ops need: the file's batch size and the batch size of this call."""

    file_batch: int | None
    batch: int | None


@dataclass(frozen=True)
class Node:
    """The parts of an ONNX NodeProto a builder needs; attribute values are already Python/numpy."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    opset: int


#: An op at run time: (inputs, run info) -> one tensor or a tuple of tensors. Always a
#: ``functools.partial`` of a module-level function, so the module stays picklable.
OpFn = Callable[[Args, RunInfo], Any]


def tensor_of(array: np.ndarray) -> torch.Tensor:
    """numpy -> torch; copying because ``to_array`` may return read-only views (torch warns on those)."""
    if array.dtype.kind in "OSU":
        raise NodeError(f"string tensors are not supported (dtype {array.dtype})")
    return torch.from_numpy(np.array(array, copy=True))


def constant_value(node: Node) -> torch.Tensor:
    """The tensor a Constant node holds (its ``value``, ``value_float(s)`` or ``value_int(s)`` attribute)."""
    attrs = node.attrs
    if "value" in attrs:
        return tensor_of(attrs["value"])
    if "value_float" in attrs:
        return torch.tensor(float(attrs["value_float"]), dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor([float(v) for v in attrs["value_floats"]], dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(int(attrs["value_int"]), dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor([int(v) for v in attrs["value_ints"]], dtype=torch.int64)
    raise NodeError(f"Constant node {node.name!r} has an unsupported value attribute {sorted(attrs)}")


# ---------------------------------------------------------------------------------------------------
# Op implementations: module-level functions, bound to their attributes with functools.partial
# ---------------------------------------------------------------------------------------------------
def _require(value: torch.Tensor | None, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"missing required input {what}")
    return value


def _unary(args: Args, run: RunInfo, *, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return fn(_require(args[0], "X"))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _leaky_relu(args: Args, run: RunInfo, *, alpha: float) -> torch.Tensor:
    return F.leaky_relu(_require(args[0], "X"), negative_slope=alpha)


def _binary(args: Args, run: RunInfo, *, op: str) -> torch.Tensor:
    """Add/Sub/Mul/Div with numpy broadcasting (torch's rules are ONNX's multidirectional ones)."""
    a, b = _require(args[0], "A"), _require(args[1], "B")
    if op == "Add":
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        return a * b
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates, like C
    return a / b


def _matmul(args: Args, run: RunInfo) -> torch.Tensor:
    return torch.matmul(_require(args[0], "A"), _require(args[1], "B"))


def _gemm(
    args: Args, run: RunInfo, *, alpha: float, beta: float, trans_a: bool, trans_b: bool
) -> torch.Tensor:
    """``alpha * A' @ B' + beta * C`` with A' ``(M, K)``, B' ``(K, N)``, C broadcastable to ``(M, N)``."""
    a, b = _require(args[0], "A"), _require(args[1], "B")
    a = a.transpose(0, 1) if trans_a else a
    b = b.transpose(0, 1) if trans_b else b
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    c = args[2] if len(args) > 2 else None
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else c * beta)
    return y


def _spatial_pads(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial dim; SAME_* pads depend on the input size, hence at run time."""
    n = len(spatial)
    if auto_pad in ("NOTSET", ""):
        pads = list(pads) if pads else [0] * (2 * n)
        return pads[:n], pads[n:]
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins, ends


def _torch_pad(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX (x1_begin.., x1_end..) -> F.pad's order, which starts from the last dim."""
    order: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends), strict=True):
        order += [begin, end]
    return order


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv(
    args: Args,
    run: RunInfo,
    *,
    strides: tuple[int, ...] | None,
    pads: tuple[int, ...] | None,
    dilations: tuple[int, ...] | None,
    group: int,
    auto_pad: str,
) -> torch.Tensor:
    """X ``(N, C, *spatial)``, W ``(M, C/group, *kernel)``, optional B ``(M,)`` -> ``(N, M, *out)``."""
    x, w = _require(args[0], "X"), _require(args[1], "W")
    bias = args[2] if len(args) > 2 else None
    n = w.dim() - 2
    if n not in _CONV:
        raise ValueError(f"Conv with {n} spatial dims is not supported")
    strides_, dilations_ = strides or (1,) * n, dilations or (1,) * n
    begins, ends = _spatial_pads(x.shape[2:], w.shape[2:], strides_, dilations_, pads, auto_pad)
    padding: list[int] = begins
    if begins != ends:  # torch convs take symmetric padding only
        x, padding = F.pad(x, _torch_pad(begins, ends)), [0] * n
    return _CONV[n](x, w, bias, stride=strides_, padding=padding, dilation=dilations_, groups=group)


def _max_pool(
    args: Args,
    run: RunInfo,
    *,
    kernel: tuple[int, ...],
    strides: tuple[int, ...] | None,
    pads: tuple[int, ...] | None,
    dilations: tuple[int, ...] | None,
    ceil_mode: bool,
    auto_pad: str,
) -> torch.Tensor:
    """X ``(N, C, *spatial)`` -> ``(N, C, *out)``; padding never wins the max (it is -inf)."""
    x = _require(args[0], "X")
    n = len(kernel)
    strides_, dilations_ = strides or (1,) * n, dilations or (1,) * n
    begins, ends = _spatial_pads(x.shape[2:], kernel, strides_, dilations_, pads, auto_pad)
    padding = begins
    # torch pads symmetrically and at most half a kernel; otherwise pad by hand.
    if begins != ends or any(2 * p > k for p, k in zip(begins, kernel, strict=True)):
        x, padding = F.pad(x, _torch_pad(begins, ends), value=float("-inf")), [0] * n
    return _MAX_POOL[n](x, kernel, strides_, padding, dilations_, ceil_mode=ceil_mode)


def _avg_pool(
    args: Args,
    run: RunInfo,
    *,
    kernel: tuple[int, ...],
    strides: tuple[int, ...] | None,
    pads: tuple[int, ...] | None,
    ceil_mode: bool,
    count_include_pad: bool,
    auto_pad: str,
) -> torch.Tensor:
    """X ``(N, C, *spatial)`` -> ``(N, C, *out)``; pads count in the mean only if ``count_include_pad``."""
    x = _require(args[0], "X")
    n = len(kernel)
    strides_ = strides or (1,) * n
    begins, ends = _spatial_pads(x.shape[2:], kernel, strides_, (1,) * n, pads, auto_pad)
    pool = functools.partial(_AVG_POOL[n], kernel_size=kernel, stride=strides_, ceil_mode=ceil_mode)
    if begins == ends and all(2 * p <= k for p, k in zip(begins, kernel, strict=True)):
        return pool(x, padding=begins, count_include_pad=count_include_pad)
    torch_pads = _torch_pad(begins, ends)
    summed = pool(F.pad(x, torch_pads), padding=0)
    if count_include_pad:
        return summed
    # Mean over real elements only: the same pool over a padded mask of ones gives their share.
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    return summed / pool(F.pad(ones, torch_pads), padding=0)


def _global_pool(args: Args, run: RunInfo, *, reduce: str) -> torch.Tensor:
    """X ``(N, C, *spatial)`` -> ``(N, C, 1, ...)``."""
    x = _require(args[0], "X")
    dims = tuple(range(2, x.dim()))
    return x.mean(dim=dims, keepdim=True) if reduce == "mean" else x.amax(dim=dims, keepdim=True)


def _batch_norm(args: Args, run: RunInfo, *, epsilon: float) -> torch.Tensor:
    """Inference batch norm over channel dim 1 of X ``(N, C, ...)`` with running mean/var ``(C,)``."""
    x, scale, bias, mean, var = (
        _require(a, w) for a, w in zip(args, ("X", "scale", "B", "mean", "var"), strict=True)
    )
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)


def _clip(args: Args, run: RunInfo, *, low: float | None, high: float | None) -> torch.Tensor:
    x = _require(args[0], "X")
    # opset >= 11 passes min/max as optional inputs, older opsets as attributes (low/high here).
    low_v = args[1] if len(args) > 1 and args[1] is not None else low
    high_v = args[2] if len(args) > 2 and args[2] is not None else high
    # Two clamps, since torch.clamp will not mix a tensor bound with a float one; min first, as ONNX.
    if low_v is not None:
        x = torch.clamp(x, min=low_v)
    if high_v is not None:
        x = torch.clamp(x, max=high_v)
    return x


def _pad(args: Args, run: RunInfo, *, mode: str, pads: tuple[int, ...] | None, value: float) -> torch.Tensor:
    """ONNX Pad: ``pads`` (x1_begin, x2_begin, .., x1_end, x2_end, ..) from the attribute (opset < 11) or the
    second input; the constant from ``value`` or the third input; modes constant / reflect / edge. Negative
    pads crop."""
    x = _require(args[0], "data")
    if pads is None:
        pads = tuple(int(p) for p in _require(args[1] if len(args) > 1 else None, "pads").tolist())
    if len(args) > 2 and args[2] is not None and args[2].numel():
        value = float(args[2].reshape(-1)[0])
    rank = x.dim()
    if len(pads) != 2 * rank:
        raise ValueError(f"pads has {len(pads)} entries, the input has rank {rank}")
    if not any(pads):
        return x
    if mode == "constant":
        return F.pad(x, _torch_pad(list(pads[:rank]), list(pads[rank:])), value=value)
    # reflect / replicate in torch pad only the trailing dims after (N, C): the leading pads must be zero
    if any(pads[:2]) or any(pads[rank : rank + 2]) or rank < 3:
        raise ValueError(f"{mode} padding of the batch or channel dim is not supported")
    torch_mode = "reflect" if mode == "reflect" else "replicate"
    return F.pad(x, _torch_pad(list(pads[2:rank]), list(pads[rank + 2 :])), mode=torch_mode)


def _dropout(args: Args, run: RunInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference dropout: the input unchanged, and an all-true mask for an optional second output."""
    x = _require(args[0], "X")
    return x, torch.ones_like(x, dtype=torch.bool)


def _flatten(args: Args, run: RunInfo, *, axis: int) -> torch.Tensor:
    """``(d0, .., dn)`` -> ``(d0*..*d[axis-1], d[axis]*..*dn)``."""
    x = _require(args[0], "X")
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(args: Args, run: RunInfo, *, allowzero: bool) -> torch.Tensor:
    """ONNX Reshape: 0 copies the input dim (unless ``allowzero``), -1 is inferred.

    A leading target dim equal to the file's batch size follows the actual batch (see :mod:`robustcheck.models.onnx.graph`).
    """
    x, shape = _require(args[0], "data"), _require(args[1], "shape")
    target = [int(v) for v in shape.tolist()]
    if (
        target
        and run.file_batch is not None
        and run.batch is not None
        and run.batch != run.file_batch
        and target[0] == run.file_batch
        and x.dim() >= 1
        and x.shape[0] == run.batch
    ):
        target[0] = run.batch
    if not allowzero:
        target = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def _transpose(args: Args, run: RunInfo, *, perm: tuple[int, ...] | None) -> torch.Tensor:
    x = _require(args[0], "data")
    return x.permute(perm if perm is not None else tuple(reversed(range(x.dim()))))


def _axes_from(args: Args, attr_axes: tuple[int, ...] | None) -> list[int] | None:
    """Axes from the second input (opset >= 13) or from the attribute (older opsets)."""
    if len(args) > 1 and args[1] is not None:
        return [int(v) for v in args[1].reshape(-1).tolist()]
    return list(attr_axes) if attr_axes is not None else None


def _squeeze(args: Args, run: RunInfo, *, axes: tuple[int, ...] | None) -> torch.Tensor:
    x = _require(args[0], "data")
    chosen = _axes_from(args, axes)
    if chosen is None:
        return x.squeeze()
    return x.squeeze(tuple(a + x.dim() if a < 0 else a for a in chosen))


def _unsqueeze(args: Args, run: RunInfo, *, axes: tuple[int, ...] | None) -> torch.Tensor:
    x = _require(args[0], "data")
    chosen = _axes_from(args, axes)
    if chosen is None:
        raise ValueError("Unsqueeze needs axes")
    rank = x.dim() + len(chosen)  # negative axes count from the end of the *output*
    for axis in sorted(a + rank if a < 0 else a for a in chosen):
        x = x.unsqueeze(axis)
    return x


def _softmax(args: Args, run: RunInfo, *, axis: int, coerce_2d: bool) -> torch.Tensor:
    """Softmax along ``axis``; before opset 13 ONNX flattens dims ``axis..`` into one and normalises that."""
    x = _require(args[0], "input")
    if not coerce_2d:
        return F.softmax(x, dim=axis)
    axis = axis + x.dim() if axis < 0 else axis
    flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return F.softmax(flat, dim=1).reshape(x.shape)


def _concat(args: Args, run: RunInfo, *, axis: int) -> torch.Tensor:
    return torch.cat([a for a in args if a is not None], dim=axis)


def _shape(args: Args, run: RunInfo, *, start: int, end: int | None) -> torch.Tensor:
    x = _require(args[0], "data")
    return torch.tensor(tuple(x.shape)[start:end], dtype=torch.int64, device=x.device)


def _gather(args: Args, run: RunInfo, *, axis: int) -> torch.Tensor:
    """``data.shape[:axis] + indices.shape + data.shape[axis+1:]``; negative indices count from the end."""
    data, indices = _require(args[0], "data"), _require(args[1], "indices")
    axis = axis + data.dim() if axis < 0 else axis
    indices = indices.long()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    picked = torch.index_select(data, axis, indices.reshape(-1))
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))


def _cast(args: Args, run: RunInfo, *, dtype: torch.dtype) -> torch.Tensor:
    return _require(args[0], "input").to(dtype)


# ---------------------------------------------------------------------------------------------------
# Builders: validate a node's attributes and bind them to its op function
# ---------------------------------------------------------------------------------------------------
def _ints(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value) if value is not None else None


def _single_output(node: Node) -> None:
    if len([name for name in node.outputs if name]) > 1:
        raise NodeError(f"node {node.name!r} ({node.op_type}): only the first output is supported")


def _check_auto_pad(node: Node) -> str:
    auto_pad = str(node.attrs.get("auto_pad", "NOTSET"))
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise NodeError(f"node {node.name!r} ({node.op_type}): unknown auto_pad {auto_pad!r}")
    return auto_pad


def _build_unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Node], OpFn]:
    return lambda node: functools.partial(_unary, fn=fn)


def _build_binary(node: Node) -> OpFn:
    if "axis" in node.attrs:  # pre-opset-7 broadcasting along an axis differs from numpy's
        raise NodeError(f"node {node.name!r} ({node.op_type}): legacy 'axis' broadcasting is not supported")
    return functools.partial(_binary, op=node.op_type)


def _build_gemm(node: Node) -> OpFn:
    a = node.attrs
    return functools.partial(
        _gemm,
        alpha=float(a.get("alpha", 1.0)),
        beta=float(a.get("beta", 1.0)),
        trans_a=bool(a.get("transA", 0)),
        trans_b=bool(a.get("transB", 0)),
    )


def _build_conv(node: Node) -> OpFn:
    a = node.attrs
    return functools.partial(
        _conv,
        strides=_ints(a.get("strides")),
        pads=_ints(a.get("pads")),
        dilations=_ints(a.get("dilations")),
        group=int(a.get("group", 1)),
        auto_pad=_check_auto_pad(node),
    )


def _pool_kernel(node: Node) -> tuple[int, ...]:
    kernel = _ints(node.attrs.get("kernel_shape"))
    if not kernel or len(kernel) not in _MAX_POOL:
        raise NodeError(f"node {node.name!r} ({node.op_type}): needs kernel_shape with 1 to 3 dims")
    return kernel


def _build_max_pool(node: Node) -> OpFn:
    _single_output(node)  # the Indices output has no cheap torch equivalent with ONNX's layout
    a = node.attrs
    return functools.partial(
        _max_pool,
        kernel=_pool_kernel(node),
        strides=_ints(a.get("strides")),
        pads=_ints(a.get("pads")),
        dilations=_ints(a.get("dilations")),
        ceil_mode=bool(a.get("ceil_mode", 0)),
        auto_pad=_check_auto_pad(node),
    )


def _build_avg_pool(node: Node) -> OpFn:
    a = node.attrs
    if any(d != 1 for d in a.get("dilations", ())):
        raise NodeError(f"node {node.name!r} (AveragePool): dilations are not supported")
    return functools.partial(
        _avg_pool,
        kernel=_pool_kernel(node),
        strides=_ints(a.get("strides")),
        pads=_ints(a.get("pads")),
        ceil_mode=bool(a.get("ceil_mode", 0)),
        count_include_pad=bool(a.get("count_include_pad", 0)),
        auto_pad=_check_auto_pad(node),
    )


def _build_batch_norm(node: Node) -> OpFn:
    _single_output(node)
    if node.attrs.get("training_mode", 0) or node.attrs.get("spatial", 1) != 1 or len(node.inputs) != 5:
        raise NodeError(
            f"node {node.name!r} (BatchNormalization): only inference mode (spatial) is supported"
        )
    return functools.partial(_batch_norm, epsilon=float(node.attrs.get("epsilon", 1e-5)))


def _build_clip(node: Node) -> OpFn:
    low, high = node.attrs.get("min"), node.attrs.get("max")
    return functools.partial(
        _clip, low=float(low) if low is not None else None, high=float(high) if high is not None else None
    )


def _build_pad(node: Node) -> OpFn:
    mode = node.attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise NodeError(f"node {node.name!r} (Pad): mode {mode!r} is not supported")
    pads = _ints(node.attrs.get("pads")) if node.opset < 11 else None
    if node.opset < 11 and pads is None:
        raise NodeError(f"node {node.name!r} (Pad): needs the pads attribute")
    return functools.partial(_pad, mode=mode, pads=pads, value=float(node.attrs.get("value", 0.0)))


def _build_reshape(node: Node) -> OpFn:
    return functools.partial(_reshape, allowzero=bool(node.attrs.get("allowzero", 0)))


def _build_softmax(node: Node) -> OpFn:
    coerce = node.opset < 13
    return functools.partial(
        _softmax, axis=int(node.attrs.get("axis", 1 if coerce else -1)), coerce_2d=coerce
    )


def _build_shape(node: Node) -> OpFn:
    end = node.attrs.get("end")
    return functools.partial(
        _shape, start=int(node.attrs.get("start", 0)), end=int(end) if end is not None else None
    )


def _build_cast(node: Node) -> OpFn:
    from onnx import helper

    try:
        dtype = tensor_of(np.zeros(0, dtype=helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))).dtype
    except (KeyError, TypeError, ValueError) as exc:
        raise NodeError(f"node {node.name!r} (Cast): unsupported target type ({exc})") from None
    return functools.partial(_cast, dtype=dtype)


_BUILDERS: dict[str, Callable[[Node], OpFn]] = {
    "Add": _build_binary,
    "Sub": _build_binary,
    "Mul": _build_binary,
    "Div": _build_binary,
    "MatMul": lambda node: functools.partial(_matmul),
    "Gemm": _build_gemm,
    "Conv": _build_conv,
    "MaxPool": _build_max_pool,
    "AveragePool": _build_avg_pool,
    "GlobalAveragePool": lambda node: functools.partial(_global_pool, reduce="mean"),
    "GlobalMaxPool": lambda node: functools.partial(_global_pool, reduce="max"),
    "BatchNormalization": _build_batch_norm,
    "Relu": _build_unary(torch.relu),
    "Sigmoid": _build_unary(torch.sigmoid),
    "Tanh": _build_unary(torch.tanh),
    "Identity": _build_unary(_identity),
    "LeakyRelu": lambda node: functools.partial(_leaky_relu, alpha=float(node.attrs.get("alpha", 0.01))),
    "Clip": _build_clip,
    "Pad": _build_pad,
    "Dropout": lambda node: functools.partial(_dropout),
    "Flatten": lambda node: functools.partial(_flatten, axis=int(node.attrs.get("axis", 1))),
    "Reshape": _build_reshape,
    "Transpose": lambda node: functools.partial(_transpose, perm=_ints(node.attrs.get("perm"))),
    "Squeeze": lambda node: functools.partial(_squeeze, axes=_ints(node.attrs.get("axes"))),
    "Unsqueeze": lambda node: functools.partial(_unsqueeze, axes=_ints(node.attrs.get("axes"))),
    "Softmax": _build_softmax,
    "Concat": lambda node: functools.partial(_concat, axis=int(node.attrs["axis"])),
    "Shape": _build_shape,
    "Gather": lambda node: functools.partial(_gather, axis=int(node.attrs.get("axis", 0))),
    "Cast": _build_cast,
}

SUPPORTED_OPS = tuple(sorted([*_BUILDERS, "Constant"]))


def build_op(node: Node) -> OpFn:
    """Bind a node's attributes to its op; malformed attributes become a NodeError naming the node."""
    try:
        return _BUILDERS[node.op_type](node)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, NodeError):
            raise
        raise NodeError(
            f"node {node.name!r} ({node.op_type}): bad or missing attribute ({type(exc).__name__}: {exc})"
        ) from None
