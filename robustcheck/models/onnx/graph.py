"""ONNX file -> differentiable torch module: :func:`load_onnx`, :func:`onnx_input_shape` and :class:`OnnxGraphModule`.

We do not use ``onnx2torch`` because it imports torchvision. :func:`load_onnx` reads a file with the
``onnx`` package (an optional extra, imported lazily), refuses files that are not ONNX models with a one-line
:class:`~robustcheck.errors.InputError`, turns every node into a torch op with
:mod:`robustcheck.models.onnx.ops` (which lists the supported ops; any other raises :class:`InputError`
naming them) and returns an :class:`OnnxGraphModule` that evaluates the nodes in topological order with
plain ``torch`` operations, so the result is differentiable with respect to its inputs.

Batch size: most ops do not care about the batch dimension. The exception is a Reshape whose target
shape is a constant with the file's batch size baked in, e.g. ``(1, -1)`` or ``(1, 400)`` exported
for batch 1. When the model runs with a different batch size ``N`` (the leading dim of the first
input), a Reshape whose target starts with the file's batch size and whose input starts with ``N``
gets its leading target dim replaced by ``N``. With the file's own batch size nothing is rewritten,
so results are exactly ONNX's. Graphs whose first input has rank < 2 have no batch dim: those run
only with the shapes in the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcheck.errors import InputError
from robustcheck.models.onnx.ops import (
    SUPPORTED_OPS,
    Node,
    NodeError,
    OpFn,
    RunInfo,
    build_op,
    constant_value,
    tensor_of,
)

__all__ = ["OnnxGraphModule", "load_onnx", "onnx_input_shape", "run_step", "SUPPORTED_OPS"]

_ONNX_MISSING = "reading ONNX models needs the 'onnx' package: pip install 'robustcheck-harness[onnx]'"


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
        run = RunInfo(self.file_batch, batch)
        for step in self.steps:
            args = [env[name] if name else None for name in step.inputs]
            results = run_step(step, args, run)
            for name, value in zip(step.outputs, results, strict=False):
                if name:
                    env[name] = value
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        ops = ", ".join(sorted({step.op_type for step in self.steps}))
        return f"inputs={list(self.input_names)}, outputs={list(self.output_names)}, nodes={len(self.steps)}, ops=[{ops}]"


def run_step(step: _Step, args: list[torch.Tensor | None], run: RunInfo) -> tuple[torch.Tensor, ...]:
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
    except NodeError as exc:
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

    constants = {init.name: tensor_of(numpy_helper.to_array(init)) for init in graph.initializer}
    input_names = _graph_input_names(graph)
    steps: list[_Step] = []
    for node in _topological_order(nodes, set(constants) | set(input_names)):
        if node.op_type == "Constant":
            constants[node.outputs[0]] = constant_value(node)
        else:
            steps.append(_Step(node.op_type, node.name, node.inputs, node.outputs, build_op(node)))
    output_names = [vi.name for vi in graph.output]
    return OnnxGraphModule(input_names, output_names, constants, steps, _file_batch(graph, input_names))


def _node_of(proto: Any, opset: int) -> Node:
    from onnx import helper

    attrs = {attr.name: _attr_value(helper.get_attribute_value(attr)) for attr in proto.attribute}
    op_type = proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}:{proto.op_type}"
    return Node(op_type, proto.name, tuple(proto.input), tuple(proto.output), attrs, opset)


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


def _check_supported(nodes: Sequence[Node]) -> None:
    unsupported = sorted({node.op_type for node in nodes if node.op_type not in SUPPORTED_OPS})
    if unsupported:
        raise NodeError(
            f"unsupported op type(s): {', '.join(unsupported)} (supported: {', '.join(SUPPORTED_OPS)})"
        )


def _topological_order(nodes: Sequence[Node], available: set[str]) -> list[Node]:
    """Nodes sorted so each runs after its producers (files are usually sorted already; we do not rely on it)."""
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[Node] = []
    while pending:
        waiting: list[Node] = []
        for node in pending:  # one pass suffices for a sorted graph
            if all(name in ready for name in node.inputs):
                ordered.append(node)
                ready.update(node.outputs)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            node = waiting[0]
            missing = [name for name in node.inputs if name not in ready]
            raise NodeError(
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

