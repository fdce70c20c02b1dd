"""The default audit of ordinary fixed-size models: a CIFAR-shaped CNN with a Linear head (3x32x32 only) and no
declared input shape, given as a module factory, a TorchScript file and ONNX files, audited with the default
probes and defenses on a small 3x32x32 npz: every run ends with status ok (no probe feeds the network
another image size)."""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robustcheck.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")

MODULE = "rc_fixed_cnn"
MODULE_SOURCE = '''
import torch
from torch import nn


def build():
    """A seeded CIFAR-shaped CNN: two conv blocks, then a Linear head that takes 16 x 8 x 8 features only."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()
'''
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SOURCES = ["factory", "torchscript", "onnx", "onnx-symbolic"]


@pytest.fixture
def fixed_cnn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``rc_fixed_cnn`` (factory ``build``) importable from a temporary folder; returns the module."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return importlib.import_module(MODULE)


def _npz(path: Path, n: int = 40) -> Path:
    """``n`` random 32x32 RGB images (HWC uint8), labels cycling through the 10 classes, with class names."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % 10, classes=np.array(CLASSES))
    return path


def _torchscript(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


def _onnx(module: torch.nn.Module, path: Path, dims: list[Any]) -> Path:
    """The same network as an ONNX graph (Conv, Relu, MaxPool, Flatten, Gemm) with input dimensions ``dims``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    conv1, conv2, linear = module[0], module[3], module[7]
    weights = {
        "w1": conv1.weight, "b1": conv1.bias, "w2": conv2.weight, "b2": conv2.bias, "wl": linear.weight, "bl": linear.bias,
    }  # fmt: skip
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], **pool),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], **pool),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wl", "bl"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed-cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(t.detach().numpy().astype(np.float32), name) for name, t in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def _model_source(kind: str, fixed_cnn: Any, folder: Path) -> str:
    if kind == "factory":
        return f"{MODULE}:build"
    module = fixed_cnn.build()
    if kind == "torchscript":
        return str(_torchscript(module, folder / "fixed-cnn.pt"))
    dims = ["N", 3, 32, 32] if kind == "onnx" else ["N", "C", "H", "W"]  # onnx-symbolic: no shape in the file
    return str(_onnx(module, folder / f"{kind}.onnx", dims))


def test_the_model_files_compute_the_same_network(fixed_cnn: Any, tmp_path: Path) -> None:
    """The TorchScript and ONNX files hold the factory's network (so the audits below test the same model)."""
    from robustcheck.models.loading import load_model

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = load_model(f"{MODULE}:build").predict(x)
    for kind in SOURCES[1:]:
        model = load_model(_model_source(kind, fixed_cnn, tmp_path))
        torch.testing.assert_close(model.predict(x), expected, atol=1e-4, rtol=1e-4)
        # the Linear head takes 32x32 only (the bug the audit hit: a probe feeding 36x36 crops)
        with pytest.raises(InputError, match=r"input of shape \(2, 3, 36, 36\)|1296"):
            model.predict(torch.rand(2, 3, 36, 36))


def _audit(cli: Any, source: str, data: Path, out: Path, *extra: str) -> dict[str, str]:
    result = cli("audit", "--model", source, "--data", data, "--samples", "20", "--quiet", "--out", out, *extra)
    runs = json.loads((out / "results.json").read_text())["runs"] if (out / "results.json").exists() else []
    status = {f"{run['defense'] or 'none'}/{run['probe']}": f"{run['status']} {run.get('message', '')}".strip() for run in runs}
    assert result.code == 0, (result.code, result.err, status)
    # every defense (bare included) ran every probe: none was dropped for the model's lack of a declared shape
    defenses, probes = {k.split("/")[0] for k in status}, {k.split("/")[1] for k in status}
    assert "translation" in probes and len(status) == len(defenses) * len(probes) >= 2, status
    return status


@pytest.mark.parametrize("kind", SOURCES)
def test_default_audit_of_a_fixed_size_model_with_input_shape(cli: Any, fixed_cnn: Any, tmp_path: Path, kind: str) -> None:
    status = _audit(cli, _model_source(kind, fixed_cnn, tmp_path), _npz(tmp_path / "cifar-like.npz"), tmp_path / "out", "--input-shape", "3,32,32")
    assert all(s == "ok" for s in status.values()), status


@pytest.mark.parametrize("kind", SOURCES)
def test_default_audit_of_a_fixed_size_model_takes_the_input_shape_from_the_data(
    cli: Any, fixed_cnn: Any, tmp_path: Path, kind: str
) -> None:
    status = _audit(cli, _model_source(kind, fixed_cnn, tmp_path), _npz(tmp_path / "cifar-like.npz"), tmp_path / "out")
    assert all(s == "ok" for s in status.values()), status
