"""A small ONNX -> PyTorch converter, so ONNX classifiers can be attacked with input gradients.

We do not use ``onnx2torch`` because it imports torchvision. :func:`load_onnx` reads a file with the
``onnx`` package (an optional extra, imported lazily) and returns an :class:`OnnxGraphModule` that
evaluates the graph node by node in topological order with plain ``torch`` operations, so the result
is differentiable with respect to its inputs.

Supported ops (default ``ai.onnx`` domain): Add, AveragePool, BatchNormalization (inference), Cast,
Clip, Concat, Constant, Conv, Div, Dropout (inference), Flatten, Gather, Gemm, GlobalAveragePool,
GlobalMaxPool, Identity, LeakyRelu, MatMul, MaxPool, Mul, Relu, Reshape, Shape, Sigmoid, Softmax,
Squeeze, Sub, Tanh, Transpose, Unsqueeze. Anything else raises :class:`InputError` naming the ops.

Batch size: most ops do not care about the batch dimension. The exception is a Reshape whose target
shape is a constant with the file's batch size baked in, e.g. ``(1, -1)`` or ``(1, 400)`` exported
for batch 1. When the model runs with a different batch size ``N`` (the leading dim of the first
input), a Reshape whose target starts with the file's batch size and whose input starts with ``N``
gets its leading target dim replaced by ``N``. With the file's own batch size nothing is rewritten,
so results are exactly ONNX's. Graphs whose first input has rank < 2 have no batch dim: those run
only with the shapes in the file.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.errors import InputError

__all__ = ["OnnxGraphModule", "load_onnx", "onnx_input_shape", "SUPPORTED_OPS"]

_ONNX_MISSING = "reading ONNX models needs the 'onnx' package: pip install 'robustcheck-harness[onnx]'"

Args = Sequence["torch.Tensor | None"]


class _NodeError(ValueError):
    """A node the converter cannot handle; the loader adds the file and node name to the message."""


@dataclass(frozen=True)
class _RunInfo:
    """Per-call facts that some ops need: the file's batch size and the batch size of this call."""

    file_batch: int | None
    batch: int | None


@dataclass(frozen=True)
class _Node:
    """The parts of an ONNX NodeProto a builder needs; attribute values are already Python/numpy."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    opset: int


#: An op at run time: (inputs, run info) -> one tensor or a tuple of tensors. Always a
#: ``functools.partial`` of a module-level function, so the module stays picklable.
OpFn = Callable[[Args, _RunInfo], Any]


@dataclass(frozen=True)
class _Step:
    """One node ready to run: names of its inputs ('' = absent optional input) and outputs."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: OpFn


# ---------------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------------
class OnnxGraphModule(nn.Module):
    """Evaluates an ONNX graph with torch ops.

    Float initializers and Constant outputs are frozen ``nn.Parameter``s (``requires_grad=False``: the
    imported weights are constants, yet input gradients flow through them); integer and bool ones are
    buffers. ``forward(*inputs)`` takes one tensor per graph input (initializers excluded), in the
    graph's order, and returns the single output tensor or a tuple when the graph has several.
    """

    def __init__(
        self,
        input_names: Sequence[str],
        output_names: Sequence[str],
        constants: dict[str, torch.Tensor],
        steps: Sequence[_Step],
        file_batch: int | None,
    ) -> None:
        super().__init__()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.steps = tuple(steps)
        self.file_batch = file_batch
        # ONNX names may hold '.', '/' or ':', which attribute names cannot: map them to safe ones.
        self._attr_of: dict[str, str] = {}
        for onnx_name, value in constants.items():
            attr = _unique_attr_name(onnx_name, self._attr_of.values())
            self._attr_of[onnx_name] = attr
            if value.is_floating_point():
                self.register_parameter(attr, nn.Parameter(value, requires_grad=False))
            else:
                self.register_buffer(attr, value)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph; ``inputs`` are the graph inputs in order, e.g. one ``(N, C, H, W)`` image batch."""
        if len(inputs) != len(self.input_names):
            raise InputError(
                f"ONNX graph takes {len(self.input_names)} input(s) {list(self.input_names)}, got {len(inputs)}"
            )
        env: dict[str, torch.Tensor] = {name: getattr(self, attr) for name, attr in self._attr_of.items()}
        env.update(zip(self.input_names, inputs, strict=True))
        first = inputs[0] if inputs else None
        batch = int(first.shape[0]) if first is not None and first.dim() >= 2 else None
        run = _RunInfo(self.file_batch, batch)
        for step in self.steps:
            args = [env[name] if name else None for name in step.inputs]
            results = _run_step(step, args, run)
            for name, value in zip(step.outputs, results, strict=False):
                if name:
                    env[name] = value
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        ops = ", ".join(sorted({step.op_type for step in self.steps}))
        return f"inputs={list(self.input_names)}, outputs={list(self.output_names)}, nodes={len(self.steps)}, ops=[{ops}]"


def _run_step(step: _Step, args: list[torch.Tensor | None], run: _RunInfo) -> tuple[torch.Tensor, ...]:
    """Run one node; torch errors become an InputError naming the node and its input shapes."""
    try:
        result = step.fn(args, run)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        shapes = [tuple(a.shape) if a is not None else None for a in args]
        label = f"{step.name!r} " if step.name else ""
        raise InputError(
            f"ONNX node {label}({step.op_type}) failed on inputs of shapes {shapes}: {exc}"
        ) from exc
    return result if isinstance(result, tuple) else (result,)


def _unique_attr_name(onnx_name: str, taken: Any) -> str:
    base = "c_" + re.sub(r"\W", "_", onnx_name)
    taken = set(taken)
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------
def load_onnx(path: str | Path) -> OnnxGraphModule:
    """Read an ONNX file and return an equivalent, differentiable :class:`OnnxGraphModule`.

    Raises:
        InputError: the ``onnx`` package is missing, the file is missing or not a valid ONNX model,
            or the graph uses unsupported ops (all of them are listed).
    """
    path = Path(path)
    model = _read_model(path)
    try:
        return _convert(model)
    except _NodeError as exc:
        raise InputError(f"ONNX model {str(path)!r}: {exc}") from None


def onnx_input_shape(path: str | Path) -> tuple[int | None, ...] | None:
    """Shape of the first graph input that is not an initializer, e.g. ``(1, 3, 32, 32)``.

    Symbolic or unknown dims are ``None``; the result is ``None`` when the input carries no shape.
    """
    path = Path(path)
    model = _read_model(path)
    names = _graph_input_names(model.graph)
    if not names:
        return None
    value_info = next(vi for vi in model.graph.input if vi.name == names[0])
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)


SUPPORTED_OPS: tuple[str, ...]  # filled in below, once the builders are defined


# ---------------------------------------------------------------------------------------------------
# Reading and converting
# ---------------------------------------------------------------------------------------------------
def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise InputError(_ONNX_MISSING) from None
    return onnx


def _read_model(path: Path) -> Any:
    """Parse ``path`` into an ``onnx.ModelProto``, turning every failure into a one-line InputError."""
    onnx = _import_onnx()
    where = f"cannot read ONNX model {str(path)!r}"
    if not path.exists():
        raise InputError(f"{where}: file not found")
    if not path.is_file():
        raise InputError(f"{where}: not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise InputError(f"{where}: {exc.strerror or exc}") from None
    if not head:
        raise InputError(f"{where}: the file is empty")
    if _looks_like_markup(head):
        # A common mistake: saving the download web page instead of the raw file.
        raise InputError(
            f"{where}: it is an HTML/XML text file, not an ONNX protobuf (a web page saved instead of the model?)"
        )
    if head.startswith(b"version https://git-lfs"):
        raise InputError(f"{where}: it is a Git LFS pointer, not the model itself (run 'git lfs pull')")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises assorted errors on garbage; all mean "not ONNX"
        raise InputError(
            f"{where}: not a valid ONNX file, truncated or another format ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not model.graph.output or (not model.graph.node and not model.graph.input):
        raise InputError(f"{where}: no ONNX graph in the file (truncated or not an ONNX model?)")
    return model


def _looks_like_markup(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--"))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no details"


def _graph_input_names(graph: Any) -> list[str]:
    """Graph inputs that are real inputs: IR < 4 files also list every initializer as an input."""
    initializers = {init.name for init in graph.initializer}
    return [vi.name for vi in graph.input if vi.name not in initializers]


def _default_opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    # No entry for the default domain: the IR spec then implies opset 1 semantics; 1 is as good as any.
    return 1


def _convert(model: Any) -> OnnxGraphModule:
    """Build the module: constants, then one step per node in topological order."""
    from onnx import numpy_helper

    graph = model.graph
    opset = _default_opset(model)
    nodes = [_node_of(proto, opset) for proto in graph.node]
    _check_supported(nodes)

    constants = {init.name: _tensor_of(numpy_helper.to_array(init)) for init in graph.initializer}
    input_names = _graph_input_names(graph)
    steps: list[_Step] = []
    for node in _topological_order(nodes, set(constants) | set(input_names)):
        if node.op_type == "Constant":
            constants[node.outputs[0]] = _constant_value(node)
        else:
            steps.append(_Step(node.op_type, node.name, node.inputs, node.outputs, _build(node)))
    output_names = [vi.name for vi in graph.output]
    return OnnxGraphModule(input_names, output_names, constants, steps, _file_batch(graph, input_names))


def _build(node: _Node) -> OpFn:
    """Bind a node's attributes to its op; malformed attributes become a _NodeError naming the node."""
    try:
        return _BUILDERS[node.op_type](node)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, _NodeError):
            raise
        raise _NodeError(
            f"node {node.name!r} ({node.op_type}): bad or missing attribute ({type(exc).__name__}: {exc})"
        ) from None


def _node_of(proto: Any, opset: int) -> _Node:
    from onnx import helper

    attrs = {attr.name: _attr_value(helper.get_attribute_value(attr)) for attr in proto.attribute}
    op_type = proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}:{proto.op_type}"
    return _Node(op_type, proto.name, tuple(proto.input), tuple(proto.output), attrs, opset)


def _attr_value(value: Any) -> Any:
    """Attribute values as plain Python: strings decoded, tensors as numpy arrays."""
    from onnx import TensorProto, numpy_helper

    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_attr_value(v) for v in value]
    return value


def _check_supported(nodes: Sequence[_Node]) -> None:
    unsupported = sorted(
        {node.op_type for node in nodes if node.op_type not in _BUILDERS and node.op_type != "Constant"}
    )
    if unsupported:
        raise _NodeError(
            f"unsupported op type(s): {', '.join(unsupported)} (supported: {', '.join(SUPPORTED_OPS)})"
        )


def _topological_order(nodes: Sequence[_Node], available: set[str]) -> list[_Node]:
    """Nodes sorted so each runs after its producers (files are usually sorted already; we do not rely on it)."""
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[_Node] = []
    while pending:
        waiting: list[_Node] = []
        for node in pending:  # one pass suffices for a sorted graph
            if all(name in ready for name in node.inputs):
                ordered.append(node)
                ready.update(node.outputs)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            node = waiting[0]
            missing = [name for name in node.inputs if name not in ready]
            raise _NodeError(
                f"node {node.name!r} ({node.op_type}) uses tensor(s) {missing} that no input, initializer or node "
                "produces (truncated file or a cycle?)"
            )
        pending = waiting
    return ordered


def _file_batch(graph: Any, input_names: Sequence[str]) -> int | None:
    """The fixed leading dim of the first input when it has rank >= 2, i.e. the exported batch size."""
    if not input_names:
        return None
    value_info = next(vi for vi in graph.input if vi.name == input_names[0])
    dims = value_info.type.tensor_type.shape.dim
    if len(dims) < 2 or not dims[0].HasField("dim_value"):
        return None
    return int(dims[0].dim_value)


def _tensor_of(array: np.ndarray) -> torch.Tensor:
    """numpy -> torch; copying because ``to_array`` may return read-only views (torch warns on those)."""
    if array.dtype.kind in "OSU":
        raise _NodeError(f"string tensors are not supported (dtype {array.dtype})")
    return torch.from_numpy(np.array(array, copy=True))


def _constant_value(node: _Node) -> torch.Tensor:
    attrs = node.attrs
    if "value" in attrs:
        return _tensor_of(attrs["value"])
    if "value_float" in attrs:
        return torch.tensor(float(attrs["value_float"]), dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor([float(v) for v in attrs["value_floats"]], dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(int(attrs["value_int"]), dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor([int(v) for v in attrs["value_ints"]], dtype=torch.int64)
    raise _NodeError(f"Constant node {node.name!r} has an unsupported value attribute {sorted(attrs)}")


# ---------------------------------------------------------------------------------------------------
# Op implementations: module-level functions, bound to their attributes with functools.partial
# ---------------------------------------------------------------------------------------------------
def _require(value: torch.Tensor | None, what: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"missing required input {what}")
    return value


def _unary(args: Args, run: _RunInfo, *, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return fn(_require(args[0], "X"))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _leaky_relu(args: Args, run: _RunInfo, *, alpha: float) -> torch.Tensor:
    return F.leaky_relu(_require(args[0], "X"), negative_slope=alpha)


def _binary(args: Args, run: _RunInfo, *, op: str) -> torch.Tensor:
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


def _matmul(args: Args, run: _RunInfo) -> torch.Tensor:
    return torch.matmul(_require(args[0], "A"), _require(args[1], "B"))


def _gemm(
    args: Args, run: _RunInfo, *, alpha: float, beta: float, trans_a: bool, trans_b: bool
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
    run: _RunInfo,
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
    run: _RunInfo,
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
    run: _RunInfo,
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


def _global_pool(args: Args, run: _RunInfo, *, reduce: str) -> torch.Tensor:
    """X ``(N, C, *spatial)`` -> ``(N, C, 1, ...)``."""
    x = _require(args[0], "X")
    dims = tuple(range(2, x.dim()))
    return x.mean(dim=dims, keepdim=True) if reduce == "mean" else x.amax(dim=dims, keepdim=True)


def _batch_norm(args: Args, run: _RunInfo, *, epsilon: float) -> torch.Tensor:
    """Inference batch norm over channel dim 1 of X ``(N, C, ...)`` with running mean/var ``(C,)``."""
    x, scale, bias, mean, var = (
        _require(a, w) for a, w in zip(args, ("X", "scale", "B", "mean", "var"), strict=True)
    )
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)


def _clip(args: Args, run: _RunInfo, *, low: float | None, high: float | None) -> torch.Tensor:
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


def _dropout(args: Args, run: _RunInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference dropout: the input unchanged, and an all-true mask for an optional second output."""
    x = _require(args[0], "X")
    return x, torch.ones_like(x, dtype=torch.bool)


def _flatten(args: Args, run: _RunInfo, *, axis: int) -> torch.Tensor:
    """``(d0, .., dn)`` -> ``(d0*..*d[axis-1], d[axis]*..*dn)``."""
    x = _require(args[0], "X")
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(args: Args, run: _RunInfo, *, allowzero: bool) -> torch.Tensor:
    """ONNX Reshape: 0 copies the input dim (unless ``allowzero``), -1 is inferred.

    A leading target dim equal to the file's batch size follows the actual batch (see module docs).
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


def _transpose(args: Args, run: _RunInfo, *, perm: tuple[int, ...] | None) -> torch.Tensor:
    x = _require(args[0], "data")
    return x.permute(perm if perm is not None else tuple(reversed(range(x.dim()))))


def _axes_from(args: Args, attr_axes: tuple[int, ...] | None) -> list[int] | None:
    """Axes from the second input (opset >= 13) or from the attribute (older opsets)."""
    if len(args) > 1 and args[1] is not None:
        return [int(v) for v in args[1].reshape(-1).tolist()]
    return list(attr_axes) if attr_axes is not None else None


def _squeeze(args: Args, run: _RunInfo, *, axes: tuple[int, ...] | None) -> torch.Tensor:
    x = _require(args[0], "data")
    chosen = _axes_from(args, axes)
    if chosen is None:
        return x.squeeze()
    return x.squeeze(tuple(a + x.dim() if a < 0 else a for a in chosen))


def _unsqueeze(args: Args, run: _RunInfo, *, axes: tuple[int, ...] | None) -> torch.Tensor:
    x = _require(args[0], "data")
    chosen = _axes_from(args, axes)
    if chosen is None:
        raise ValueError("Unsqueeze needs axes")
    rank = x.dim() + len(chosen)  # negative axes count from the end of the *output*
    for axis in sorted(a + rank if a < 0 else a for a in chosen):
        x = x.unsqueeze(axis)
    return x


def _softmax(args: Args, run: _RunInfo, *, axis: int, coerce_2d: bool) -> torch.Tensor:
    """Softmax along ``axis``; before opset 13 ONNX flattens dims ``axis..`` into one and normalises that."""
    x = _require(args[0], "input")
    if not coerce_2d:
        return F.softmax(x, dim=axis)
    axis = axis + x.dim() if axis < 0 else axis
    flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return F.softmax(flat, dim=1).reshape(x.shape)


def _concat(args: Args, run: _RunInfo, *, axis: int) -> torch.Tensor:
    return torch.cat([a for a in args if a is not None], dim=axis)


def _shape(args: Args, run: _RunInfo, *, start: int, end: int | None) -> torch.Tensor:
    x = _require(args[0], "data")
    return torch.tensor(tuple(x.shape)[start:end], dtype=torch.int64, device=x.device)


def _gather(args: Args, run: _RunInfo, *, axis: int) -> torch.Tensor:
    """``data.shape[:axis] + indices.shape + data.shape[axis+1:]``; negative indices count from the end."""
    data, indices = _require(args[0], "data"), _require(args[1], "indices")
    axis = axis + data.dim() if axis < 0 else axis
    indices = indices.long()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    picked = torch.index_select(data, axis, indices.reshape(-1))
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))


def _cast(args: Args, run: _RunInfo, *, dtype: torch.dtype) -> torch.Tensor:
    return _require(args[0], "input").to(dtype)


# ---------------------------------------------------------------------------------------------------
# Builders: validate a node's attributes and bind them to its op function
# ---------------------------------------------------------------------------------------------------
def _ints(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value) if value is not None else None


def _single_output(node: _Node) -> None:
    if len([name for name in node.outputs if name]) > 1:
        raise _NodeError(f"node {node.name!r} ({node.op_type}): only the first output is supported")


def _check_auto_pad(node: _Node) -> str:
    auto_pad = str(node.attrs.get("auto_pad", "NOTSET"))
    if auto_pad not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise _NodeError(f"node {node.name!r} ({node.op_type}): unknown auto_pad {auto_pad!r}")
    return auto_pad


def _build_unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[_Node], OpFn]:
    return lambda node: functools.partial(_unary, fn=fn)


def _build_binary(node: _Node) -> OpFn:
    if "axis" in node.attrs:  # pre-opset-7 broadcasting along an axis differs from numpy's
        raise _NodeError(f"node {node.name!r} ({node.op_type}): legacy 'axis' broadcasting is not supported")
    return functools.partial(_binary, op=node.op_type)


def _build_gemm(node: _Node) -> OpFn:
    a = node.attrs
    return functools.partial(
        _gemm,
        alpha=float(a.get("alpha", 1.0)),
        beta=float(a.get("beta", 1.0)),
        trans_a=bool(a.get("transA", 0)),
        trans_b=bool(a.get("transB", 0)),
    )


def _build_conv(node: _Node) -> OpFn:
    a = node.attrs
    return functools.partial(
        _conv,
        strides=_ints(a.get("strides")),
        pads=_ints(a.get("pads")),
        dilations=_ints(a.get("dilations")),
        group=int(a.get("group", 1)),
        auto_pad=_check_auto_pad(node),
    )


def _pool_kernel(node: _Node) -> tuple[int, ...]:
    kernel = _ints(node.attrs.get("kernel_shape"))
    if not kernel or len(kernel) not in _MAX_POOL:
        raise _NodeError(f"node {node.name!r} ({node.op_type}): needs kernel_shape with 1 to 3 dims")
    return kernel


def _build_max_pool(node: _Node) -> OpFn:
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


def _build_avg_pool(node: _Node) -> OpFn:
    a = node.attrs
    if any(d != 1 for d in a.get("dilations", ())):
        raise _NodeError(f"node {node.name!r} (AveragePool): dilations are not supported")
    return functools.partial(
        _avg_pool,
        kernel=_pool_kernel(node),
        strides=_ints(a.get("strides")),
        pads=_ints(a.get("pads")),
        ceil_mode=bool(a.get("ceil_mode", 0)),
        count_include_pad=bool(a.get("count_include_pad", 0)),
        auto_pad=_check_auto_pad(node),
    )


def _build_batch_norm(node: _Node) -> OpFn:
    _single_output(node)
    if node.attrs.get("training_mode", 0) or node.attrs.get("spatial", 1) != 1 or len(node.inputs) != 5:
        raise _NodeError(
            f"node {node.name!r} (BatchNormalization): only inference mode (spatial) is supported"
        )
    return functools.partial(_batch_norm, epsilon=float(node.attrs.get("epsilon", 1e-5)))


def _build_clip(node: _Node) -> OpFn:
    low, high = node.attrs.get("min"), node.attrs.get("max")
    return functools.partial(
        _clip, low=float(low) if low is not None else None, high=float(high) if high is not None else None
    )


def _build_reshape(node: _Node) -> OpFn:
    return functools.partial(_reshape, allowzero=bool(node.attrs.get("allowzero", 0)))


def _build_softmax(node: _Node) -> OpFn:
    coerce = node.opset < 13
    return functools.partial(
        _softmax, axis=int(node.attrs.get("axis", 1 if coerce else -1)), coerce_2d=coerce
    )


def _build_shape(node: _Node) -> OpFn:
    end = node.attrs.get("end")
    return functools.partial(
        _shape, start=int(node.attrs.get("start", 0)), end=int(end) if end is not None else None
    )


def _build_cast(node: _Node) -> OpFn:
    from onnx import helper

    try:
        dtype = _tensor_of(np.zeros(0, dtype=helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))).dtype
    except (KeyError, TypeError, ValueError) as exc:
        raise _NodeError(f"node {node.name!r} (Cast): unsupported target type ({exc})") from None
    return functools.partial(_cast, dtype=dtype)


_BUILDERS: dict[str, Callable[[_Node], OpFn]] = {
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
