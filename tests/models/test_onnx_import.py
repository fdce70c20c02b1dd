"""robustcheck.models.onnx (graph.py, ops.py): our ONNX -> torch converter, checked op by op against onnxruntime."""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import SHARED_DATA  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from robustcheck.errors import InputError  # noqa: E402
from robustcheck.models.onnx.graph import OnnxGraphModule, load_onnx, onnx_input_shape  # noqa: E402

VNNCOMP = SHARED_DATA / "vnncomp-test"
ATOL = 1e-5
IR_VERSION = 8  # onnxruntime 1.32 reads it; opsets 10-13 are valid under it

Shape = Sequence["int | str | None"]


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _model(
    nodes: list[Any],
    inputs: Sequence[tuple[str, Shape]],
    outputs: Sequence[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 13,
) -> Any:
    """A float32 model; output shapes are left to the runtime."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[numpy_helper.from_array(value, name) for name, value in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def _save(model: Any, tmp_path: Path, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _ort_run(path: Path, *arrays: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, arrays, strict=True)))


def _ours(path: Path, *arrays: np.ndarray) -> list[np.ndarray]:
    module = load_onnx(path)
    with torch.no_grad():
        out = module(*(torch.from_numpy(a.copy()) for a in arrays))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def _check(model: Any, tmp_path: Path, *arrays: np.ndarray) -> list[np.ndarray]:
    """Save ``model``, run it with both engines and require equal shapes and values within ATOL."""
    path = _save(model, tmp_path)
    expected, got = _ort_run(path, *arrays), _ours(path, *arrays)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=ATOL, rtol=1e-5)
    return got


def _cnn(batch: int = 2) -> tuple[Any, np.ndarray]:
    """Conv -> BatchNormalization -> Relu -> MaxPool -> AveragePool -> Flatten -> MatMul -> Add."""
    inits = {
        "W": _rand(4, 3, 3, 3, seed=1, scale=0.3),
        "B": _rand(4, seed=2),
        "scale": _rand(4, seed=3),
        "bias": _rand(4, seed=4),
        "mean": _rand(4, seed=5, scale=0.1),
        "var": np.abs(_rand(4, seed=6)) + 0.5,
        "fcW": _rand(4 * 3 * 3, 5, seed=7, scale=0.2),
        "fcB": _rand(5, seed=8),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "AveragePool", ["mp"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Flatten", ["ap"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "fcW"], ["m"]),
        helper.make_node("Add", ["m", "fcB"], ["y"]),
    ]
    return _model(nodes, [("x", (batch, 3, 12, 12))], ["y"], inits), _rand(batch, 3, 12, 12, seed=9)


# ---------------------------------------------------------------------------------------------------
# Ops against onnxruntime
# ---------------------------------------------------------------------------------------------------
def test_mlp_gemm_relu(tmp_path: Path) -> None:
    inits = {
        "W1": _rand(8, 6, seed=1),
        "b1": _rand(8, seed=2),
        "W2": _rand(8, 3, seed=3),
        "b2": _rand(3, seed=4),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], alpha=0.5, beta=2.0),
    ]
    _check(_model(nodes, [("x", (4, 6))], ["y"], inits), tmp_path, _rand(4, 6, seed=5))


@pytest.mark.parametrize(
    ("trans_a", "trans_b", "alpha", "beta", "with_c"),
    [(0, 0, 1.0, 1.0, True), (1, 0, 1.5, 0.5, True), (1, 1, 1.0, 1.0, False), (0, 1, -2.0, 0.0, True)],
)
def test_gemm_attributes(
    tmp_path: Path, trans_a: int, trans_b: int, alpha: float, beta: float, with_c: bool
) -> None:
    a = _rand(*((6, 4) if trans_a else (4, 6)), seed=1)
    inits = {"B": _rand(*((5, 6) if trans_b else (6, 5)), seed=2), "C": _rand(1, 5, seed=3)}
    node = helper.make_node(
        "Gemm",
        ["a", "B", "C"] if with_c else ["a", "B"],
        ["y"],
        transA=trans_a,
        transB=trans_b,
        alpha=alpha,
        beta=beta,
    )
    _check(_model([node], [("a", a.shape)], ["y"], inits), tmp_path, a)


def test_cnn_conv_batchnorm_pools_flatten_matmul(tmp_path: Path) -> None:
    model, x = _cnn()
    _check(model, tmp_path, x)


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [2, 2], "pads": [0, 1, 2, 1]},  # asymmetric pads
        {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
        {"group": 2},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
        {"auto_pad": "VALID"},
    ],
    ids=["asym-pads", "dilated", "grouped", "same-upper", "same-lower", "valid"],
)
def test_conv_variants(tmp_path: Path, attrs: dict[str, Any]) -> None:
    group = attrs.get("group", 1)
    inits = {"W": _rand(6, 4 // group, 3, 3, seed=1, scale=0.3)}
    node = helper.make_node("Conv", ["x", "W"], ["y"], **attrs)  # no bias
    _check(_model([node], [("x", (2, 4, 9, 8))], ["y"], inits), tmp_path, _rand(2, 4, 9, 8, seed=2))


def test_conv1d(tmp_path: Path) -> None:
    inits = {"W": _rand(3, 2, 4, seed=1), "B": _rand(3, seed=2)}
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 2], strides=[2])
    _check(_model([node], [("x", (2, 2, 11))], ["y"], inits), tmp_path, _rand(2, 2, 11, seed=3))


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("MaxPool", {"kernel_shape": [2, 3], "pads": [0, 2, 1, 0]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
        ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
        (
            "AveragePool",
            {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 2, 0], "count_include_pad": 0},
        ),
        (
            "AveragePool",
            {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 2, 0], "count_include_pad": 1},
        ),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("GlobalAveragePool", {}),
        ("GlobalMaxPool", {}),
    ],
)
def test_pools(tmp_path: Path, op: str, attrs: dict[str, Any]) -> None:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    _check(_model([node], [("x", (2, 3, 8, 7))], ["y"]), tmp_path, _rand(2, 3, 8, 7, seed=1))


def test_elementwise_broadcasting_and_reshape(tmp_path: Path) -> None:
    inits = {
        "row": _rand(1, 6, seed=1),
        "col": _rand(4, 1, seed=2),
        "scalar": np.array(2.5, dtype=np.float32),
        "den": np.abs(_rand(6, seed=3)) + 0.5,
        "shape": np.array([0, 3, -1], dtype=np.int64),  # 0 keeps dim 0, -1 is inferred
    }
    nodes = [
        helper.make_node("Sub", ["x", "row"], ["a"]),
        helper.make_node("Mul", ["a", "col"], ["b"]),
        helper.make_node("Div", ["b", "den"], ["c"]),
        helper.make_node("Add", ["scalar", "c"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["e"]),
        helper.make_node("Tanh", ["e"], ["f"]),
        helper.make_node("Reshape", ["f", "shape"], ["y"]),
    ]
    got = _check(_model(nodes, [("x", (4, 6))], ["y"], inits), tmp_path, _rand(4, 6, seed=4))
    assert got[0].shape == (4, 3, 2)


def test_structural_ops_opset13(tmp_path: Path) -> None:
    """Constant, Identity, Transpose, Unsqueeze/Squeeze with axes inputs, Concat, Softmax, Gather, Clip."""
    inits = {"idx": np.array([[2, -1], [0, 1]], dtype=np.int64), "lo": np.array(-0.5, dtype=np.float32)}
    nodes = [
        helper.make_node(
            "Constant", [], ["ax"], value=numpy_helper.from_array(np.array([0, -1], dtype=np.int64))
        ),
        helper.make_node("Constant", [], ["k"], value_float=0.5),
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Transpose", ["i"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["t", "ax"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["sk"]),
        helper.make_node("Concat", ["s", "sk"], ["cat"], axis=1),
        helper.make_node("Softmax", ["cat"], ["sm"], axis=1),
        helper.make_node("Gather", ["cat", "idx"], ["g"], axis=2),
        helper.make_node("Clip", ["g", "lo", ""], ["y2"]),
        helper.make_node("Transpose", ["sm"], ["y1"]),  # default perm reverses the dims
    ]
    _check(_model(nodes, [("x", (2, 3, 4))], ["y1", "y2"], inits), tmp_path, _rand(2, 3, 4, seed=1))


def test_legacy_opset10_attribute_axes_softmax_and_clip(tmp_path: Path) -> None:
    """Before opset 13: axes are attributes and Softmax normalises over all dims from ``axis`` on."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[4, 1]),
        helper.make_node("Squeeze", ["u"], ["s"], axes=[1, 4]),
        helper.make_node("Softmax", ["s"], ["sm"], axis=1),
        helper.make_node("Clip", ["sm"], ["y"], min=0.01, max=0.05),
        helper.make_node("Squeeze", ["z"], ["z2"]),  # no axes: drop every size-1 dim
    ]
    model = _model(nodes, [("x", (2, 3, 4)), ("z", (1, 3, 1))], ["y", "z2"], opset=10)
    got = _check(model, tmp_path, _rand(2, 3, 4, seed=1), _rand(1, 3, 1, seed=2))
    assert got[1].shape == (3,)


def test_exported_dynamic_flatten_pattern(tmp_path: Path) -> None:
    """What torch.onnx emits for ``x.view(x.size(0), -1)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    inits = {
        "zero": np.array(0, dtype=np.int64),
        "minus1": np.array([-1], dtype=np.int64),
        "axes": np.array([0]),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Dropout", ["flat"], ["d"]),
        helper.make_node("LeakyRelu", ["d"], ["l"], alpha=0.2),
        helper.make_node("Cast", ["l"], ["y"], to=TensorProto.FLOAT),
    ]
    model = _model(nodes, [("x", ("N", 2, 3, 3))], ["y"], inits)
    got = _check(model, tmp_path, _rand(3, 2, 3, 3, seed=1))
    assert got[0].shape == (3, 18)


def test_multiple_outputs_give_a_tuple(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"])]
    module = load_onnx(_save(_model(nodes, [("x", (2, 3))], ["a", "b"]), tmp_path))
    out = module(torch.zeros(2, 3))
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[1], torch.full((2, 3), 0.5))


# ---------------------------------------------------------------------------------------------------
# Module behaviour: gradients, batch size, parameters
# ---------------------------------------------------------------------------------------------------
def test_input_gradients_flow_and_weights_are_frozen_parameters(tmp_path: Path) -> None:
    model, x = _cnn()
    module = load_onnx(_save(model, tmp_path))
    assert isinstance(module, OnnxGraphModule)
    params = dict(module.named_parameters())
    assert len(params) == 8 and not any(p.requires_grad for p in params.values())
    inputs = torch.from_numpy(x).requires_grad_(True)
    module(inputs)[:, 0].sum().backward()
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0


def test_deepcopy_keeps_working(tmp_path: Path) -> None:
    model, x = _cnn()
    module = load_onnx(_save(model, tmp_path))
    clone = copy.deepcopy(module)
    with torch.no_grad():
        assert torch.equal(clone(torch.from_numpy(x)), module(torch.from_numpy(x)))


def test_other_batch_size_than_the_file(tmp_path: Path) -> None:
    model, _ = _cnn(batch=2)
    module = load_onnx(_save(model, tmp_path))
    x = _rand(5, 3, 12, 12, seed=3)
    expected = np.concatenate([_ort_run(tmp_path / "model.onnx", x[i : i + 2])[0] for i in (0, 2)])
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 5)
    np.testing.assert_allclose(got[:4], expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("target", [[1, -1], [1, 2 * 4 * 4]], ids=["1,-1", "1,32"])
def test_reshape_with_the_file_batch_baked_in_follows_the_batch(tmp_path: Path, target: list[int]) -> None:
    inits = {
        "W": _rand(2, 2, 3, 3, seed=1),
        "shape": np.array(target, dtype=np.int64),
        "fc": _rand(32, 3, seed=2),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    path = _save(_model(nodes, [("x", (1, 2, 4, 4))], ["y"], inits), tmp_path)
    x = _rand(4, 2, 4, 4, seed=3)
    expected = np.concatenate([_ort_run(path, x[i : i + 1])[0] for i in range(4)])
    module = load_onnx(path)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-5)


def test_wrong_number_of_inputs_is_an_input_error(tmp_path: Path) -> None:
    module = load_onnx(
        _save(_model([helper.make_node("Relu", ["x"], ["y"])], [("x", (2, 3))], ["y"]), tmp_path)
    )
    with pytest.raises(InputError, match="takes 1 input"):
        module(torch.zeros(2, 3), torch.zeros(2, 3))


def test_shape_mismatch_at_run_time_names_the_node(tmp_path: Path) -> None:
    inits = {"W": _rand(3, 4, seed=1)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc1")]
    module = load_onnx(_save(_model(nodes, [("x", (2, 3))], ["y"], inits), tmp_path))
    with pytest.raises(
        InputError, match=r"ONNX node 'fc1' \(MatMul\) failed on inputs of shapes \[\(2, 5\), \(3, 4\)\]"
    ):
        module(torch.zeros(2, 5))


# ---------------------------------------------------------------------------------------------------
# onnx_input_shape
# ---------------------------------------------------------------------------------------------------
def test_onnx_input_shape(tmp_path: Path) -> None:
    model, _ = _cnn(batch=1)
    assert onnx_input_shape(_save(model, tmp_path, "fixed.onnx")) == (1, 3, 12, 12)
    dynamic = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", ("batch", 3, 32, 32))], ["y"])
    assert onnx_input_shape(_save(dynamic, tmp_path, "dynamic.onnx")) == (None, 3, 32, 32)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    """IR < 4 files list initializers among the graph inputs (the vnncomp ACAS Xu files do)."""
    model = _model(
        [helper.make_node("Add", ["x", "b"], ["y"])], [("b", (3,)), ("x", (2, 3))], ["y"], {"b": _rand(3)}
    )
    path = _save(model, tmp_path)
    assert onnx_input_shape(path) == (2, 3)
    assert load_onnx(path).input_names == ("x",)
    _check(model, tmp_path, _rand(2, 3, seed=1))


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cannot read ONNX model '.*nope\.onnx': file not found"):
        load_onnx(tmp_path / "nope.onnx")


def test_html_page_saved_as_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text(
        "<!DOCTYPE html>\n<html><head><title>model.onnx</title></head><body>Download</body></html>\n"
    )
    with pytest.raises(InputError, match=r"model\.onnx'.*HTML") as info:
        load_onnx(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="HTML"):
        onnx_input_shape(path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "lfs-pointer"])
def test_unreadable_files(tmp_path: Path, kind: str) -> None:
    model, _ = _cnn()
    data = {
        "truncated": model.SerializeToString()[:300],
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
        "lfs-pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n",
    }[kind]
    path = tmp_path / f"{kind}.onnx"
    path.write_bytes(data)
    with pytest.raises(InputError, match=rf"{kind}\.onnx") as info:
        load_onnx(path)
    assert "\n" not in str(info.value)


def test_unsupported_ops_are_all_listed(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Erf", ["a"], ["b"]),
        helper.make_node("Resize", ["b", "", "scales"], ["y"]),
    ]
    model = _model(nodes, [("x", (1, 1, 2, 2))], ["y"], {"scales": np.ones(4, dtype=np.float32)})
    with pytest.raises(InputError, match=r"unsupported op type\(s\): Erf, Resize \(supported: Add, "):
        load_onnx(_save(model, tmp_path))


def test_unsupported_attribute_is_named(tmp_path: Path) -> None:
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="pool")
    model = _model([node], [("x", (1, 1, 4, 4))], ["y"])
    with pytest.raises(InputError, match=r"node 'pool' \(MaxPool\): only the first output"):
        load_onnx(_save(model, tmp_path))


def test_missing_onnx_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes ``import onnx`` raise ImportError
    with pytest.raises(InputError, match=r"pip install 'robustcheck-harness\[onnx\]'"):
        load_onnx(tmp_path / "model.onnx")


# ---------------------------------------------------------------------------------------------------
# vnncomp test networks (when the shared data folder is present)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["test_nano", "test_tiny", "test_small", "test_sat"])
def test_vnncomp_networks_match_onnxruntime(name: str) -> None:
    path = VNNCOMP / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    shape = onnx_input_shape(path)
    # README: nano/tiny/small take one value of shape (1,); the ACAS Xu nets take (1, 1, 1, 5).
    assert shape == ((1, 1, 1, 5) if name == "test_sat" else (1,))
    module = load_onnx(path)
    for seed in range(5):
        x = np.random.default_rng(seed).uniform(-0.5, 0.5, size=shape).astype(np.float32)
        expected = _ort_run(path, x)[0]
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize(
    ("mode", "pads", "opset"),
    [("constant", [0, 0, 1, 2, 0, 0, 2, 1], 13), ("reflect", [0, 0, 1, 1, 0, 0, 2, 1], 13),
     ("edge", [0, 0, 2, 0, 0, 0, 1, 3], 13), ("constant", [0, 0, 0, 0, 0, 0, 0, 0], 13),
     ("constant", [0, 0, 1, 1, 0, 0, 1, 1], 9)],
)  # fmt: skip
def test_pad(tmp_path: Path, mode: str, pads: list[int], opset: int) -> None:
    if opset < 11:  # pads and value as attributes (the verivital nets' form)
        node = helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=pads, value=0.5)
        inits: dict[str, np.ndarray] = {}
    else:
        node = helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode=mode)
        inits = {"pads": np.array(pads, dtype=np.int64), "value": np.array(0.25, dtype=np.float32)}
    _check(_model([node], [("x", (2, 3, 5, 4))], ["y"], inits, opset=opset), tmp_path, _rand(2, 3, 5, 4, seed=1))
