"""robustcheck.models.loading: registry names, import paths, TorchScript / ONNX files, hub models, errors."""

from __future__ import annotations

import sys
import textwrap
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from robustcheck.errors import InputError, UnknownPluginError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import IMAGENET_MEAN, IMAGENET_STD, load_model, load_state_dict
from robustcheck.plugins import create_defense, create_probe

torch.manual_seed(0)


def _x(n: int = 2, shape=(1, 8, 8)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(3))


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


# ---------------------------------------------------------------------------------------------------
# registry names
# ---------------------------------------------------------------------------------------------------
def test_registry_models_carry_their_metadata() -> None:
    mlp = load_model("digits-mlp")
    cnn = load_model("digits-cnn")
    assert isinstance(mlp, ImageClassifier) and mlp.name == "digits-mlp"
    assert (
        mlp.default_data == "digits"
        and mlp.input_shape == (1, 8, 8)
        and mlp.labels == [str(i) for i in range(10)]
    )
    assert cnn.default_data == "digits-rgb32" and cnn.input_shape == (3, 32, 32) and cnn.normalize is not None
    assert not mlp.training and not cnn.training
    assert mlp.is_relu_network() and not cnn.is_relu_network()


def test_registry_model_with_weights_option_and_adapter_options(tmp_path: Path) -> None:
    base = load_model("digits-mlp")
    state = {k: torch.zeros_like(v) for k, v in base.module.state_dict().items()}
    torch.save(state, tmp_path / "zeros.pt")
    zeros = load_model(f"digits-mlp:weights={tmp_path / 'zeros.pt'}")
    assert torch.equal(zeros(_x()), torch.zeros(2, 10))
    renamed = load_model("digits-mlp:name=mine,bounds=[0,2]")
    assert renamed.name == "mine" and renamed.bounds == (0.0, 2.0) and renamed.default_data == "digits"
    torch.testing.assert_close(renamed(_x()), base(_x()))
    with pytest.raises(UsageError, match="does not accept options"):
        load_model("digits-mlp:width=3")


def test_passing_a_classifier_applies_options() -> None:
    base = load_model("digits-mlp")
    assert load_model(base) is base
    relabelled = load_model(base, labels=list("abcdefghij"), bounds=(0, 2))
    assert (
        relabelled.labels[0] == "a"
        and relabelled.bounds == (0.0, 2.0)
        and relabelled.input_shape == (1, 8, 8)
    )
    with pytest.raises(UsageError, match="unknown model options"):
        load_model(base, colour="red")
    plain = load_model(SmallCNN(), name="small")
    assert isinstance(plain, ImageClassifier) and plain.name == "small"


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(
        UnknownPluginError, match=r"unknown model 'digits-cn'; did you mean 'digits-cnn'"
    ) as info:
        load_model("digits-cn")
    assert "digits-cnn" in info.value.suggestions
    with pytest.raises(UnknownPluginError, match="did you mean 'pgd-linf'"):
        create_probe("pgd-lnf")
    with pytest.raises(UnknownPluginError, match="did you mean 'bit-depth'"):
        create_defense("bit-dept")


# ---------------------------------------------------------------------------------------------------
# import paths
# ---------------------------------------------------------------------------------------------------
MODULE_SOURCE = """
import torch
from torch import nn
from robustcheck.models.classifier import ImageClassifier


def net(width: int = 4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 3))


def classifier():
    return ImageClassifier(net(), labels=["cat", "dog", "emu"], input_shape=(1, 8, 8), name="zoo-cls", bounds=(0, 1))


def not_a_module():
    return 42


def broken():
    raise RuntimeError("factory exploded")
"""


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"rc_test_factories_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_import_path_returning_a_module(factory_module: str) -> None:
    model = load_model(f"{factory_module}:net")
    assert isinstance(model, ImageClassifier) and model.name == f"{factory_module}:net"
    assert model.bounds == (0.0, 1.0) and model.normalize is None
    assert model(_x()).shape == (2, 3)
    wide = load_model(f"{factory_module}:net:width=7")
    assert wide.module[1].out_features == 7
    wide_kw = load_model(f"{factory_module}:net", width=5)
    assert wide_kw.module[1].out_features == 5
    with pytest.raises(UsageError, match="does not accept options"):
        load_model(f"{factory_module}:net:depth=2")


def test_import_path_with_adapter_options(factory_module: str) -> None:
    spec = f"{factory_module}:net:bounds=[0,255],labels=[a,b,c],mean=[0.5],std=[0.25],input_shape=[1,8,8]"
    model = load_model(spec)
    assert model.bounds == (0.0, 255.0) and model.labels == ["a", "b", "c"] and model.input_shape == (1, 8, 8)
    x = _x()
    torch.testing.assert_close(model(x), model.module((x - 0.5) / 0.25))
    kw = load_model(f"{factory_module}:net", bounds=(0, 255), mean=[0.5], std=[0.25], name="kw")
    torch.testing.assert_close(kw(x), model(x))
    assert kw.name == "kw"


def test_import_path_returning_a_classifier(factory_module: str) -> None:
    model = load_model(f"{factory_module}:classifier")
    assert (
        model.name == "zoo-cls" and model.labels == ["cat", "dog", "emu"] and model.input_shape == (1, 8, 8)
    )
    relabelled = load_model(f"{factory_module}:classifier:labels=[x,y,z],bounds=[0,1]")
    assert (
        relabelled.labels == ["x", "y", "z"]
        and relabelled.name == "zoo-cls"
        and relabelled.input_shape == (1, 8, 8)
    )
    torch.testing.assert_close(relabelled(_x()), model(_x()))


def test_import_path_errors(factory_module: str) -> None:
    with pytest.raises(InputError, match=r"cannot import module 'rc_no_such_module_xyz'"):
        load_model("rc_no_such_module_xyz:net")
    with pytest.raises(InputError, match=f"module '{factory_module}' has no attribute 'missing'"):
        load_model(f"{factory_module}:missing")
    with pytest.raises(InputError, match="returned int, expected a torch.nn.Module"):
        load_model(f"{factory_module}:not_a_module")


def test_factory_that_raises_is_an_input_error_naming_it(factory_module: str) -> None:
    with pytest.raises(InputError, match=f"model factory '{factory_module}:broken' raised RuntimeError: factory exploded"):
        load_model(f"{factory_module}:broken")


def test_import_path_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mymodel:build`` works from the folder of mymodel.py without PYTHONPATH; sys.path is left as it was."""
    name = f"rc_cwd_model_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE_SOURCE))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])  # as the installed script has it
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=f"cannot import module '{name}'.*looked in the current folder.*path/to/file.py:net"):
        load_model(f"{name}:net")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    model = load_model(f"{name}:net")
    assert model(_x()).shape == (2, 3)
    assert sys.path == before
    sys.modules.pop(name, None)


def test_import_path_whose_module_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rc_bad_import_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text("raise ValueError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match=f"importing module '{name}' for model '{name}:net' raised ValueError: needs a GPU"):
        load_model(f"{name}:net")


# ---------------------------------------------------------------------------------------------------
# Python files: path/to/file.py:factory
# ---------------------------------------------------------------------------------------------------
SIBLING_SOURCE = """
from torch import nn


def head(width):
    return nn.Linear(width, 3)
"""
FILE_SOURCE = """
import torch
from torch import nn

from rc_sibling_layers import head  # a sibling module of this file


def build(width: int = 4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), head(width))


def lazy():
    import rc_sibling_layers  # imported when the factory runs

    return nn.Sequential(nn.Flatten(), rc_sibling_layers.head(64))


def broken():
    raise KeyError("weights")


NOT_CALLABLE = 3
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    folder = tmp_path / "path" / "to"
    folder.mkdir(parents=True)
    (folder / "rc_sibling_layers.py").write_text(textwrap.dedent(SIBLING_SOURCE))
    path = folder / "my-model.py"
    path.write_text(textwrap.dedent(FILE_SOURCE))
    before = set(sys.modules)
    yield path
    for name in set(sys.modules) - before:
        if name == "rc_sibling_layers" or name.startswith("_robustcheck_model_"):
            del sys.modules[name]


def test_python_file_factory(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path_before = list(sys.path)
    model = load_model(f"{model_file}:build")
    assert isinstance(model, ImageClassifier) and model.name == f"{model_file}:build"
    assert model(_x()).shape == (2, 3) and sys.path == path_before
    wide = load_model(f"{model_file}:build:width=6,labels=[a,b,c]")
    assert wide.module[1].out_features == 6 and wide.labels == ["a", "b", "c"]
    monkeypatch.delitem(sys.modules, "rc_sibling_layers")
    assert load_model(f"{model_file}:lazy")(_x()).shape == (2, 3)  # the folder is importable while the factory runs
    monkeypatch.chdir(model_file.parent.parent)
    relative = load_model("to/my-model.py:build")
    torch.testing.assert_close(relative(_x()), model(_x()))


def test_python_file_factory_errors(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"model file '.*nope.py' does not exist \(model '.*nope.py:build'\)"):
        load_model(f"{tmp_path / 'nope.py'}:build")
    with pytest.raises(InputError, match=r"file '.*my-model.py' has no attribute 'missing'"):
        load_model(f"{model_file}:missing")
    with pytest.raises(InputError, match=r"model factory '.*my-model.py:broken' raised KeyError: 'weights'"):
        load_model(f"{model_file}:broken")
    with pytest.raises(InputError, match=r"model factory '.*my-model.py:NOT_CALLABLE' is a int"):
        load_model(f"{model_file}:NOT_CALLABLE")
    with pytest.raises(UsageError, match="does not accept options"):
        load_model(f"{model_file}:build:depth=2")
    bad = tmp_path / "bad.py"
    bad.write_text("import rc_no_such_dependency_xyz\n")
    with pytest.raises(InputError, match=r"importing model file '.*bad.py' for factory '.*bad.py:build' raised ModuleNotFoundError"):
        load_model(f"{bad}:build")
    assert not any(name.startswith("_robustcheck_model_bad_") for name in sys.modules)


# ---------------------------------------------------------------------------------------------------
# TorchScript and ONNX files
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_file(tmp_path: Path, how: str) -> None:
    net = SmallCNN().eval()
    with warnings.catch_warnings():  # torch >= 2.10 deprecates creating TorchScript (loading is fine)
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, _x())
    path = tmp_path / f"small.{'pt' if how == 'script' else 'ts'}"
    scripted.save(str(path))
    model = load_model(str(path))
    assert model.name == path.name and not model.training
    x = _x(3)
    torch.testing.assert_close(model(x), net(x))
    with_opts = load_model(f"{path}:labels=[a,b,c,d],name=ts")
    assert with_opts.labels == ["a", "b", "c", "d"] and with_opts.name == "ts"
    with pytest.raises(UsageError, match="unknown model options for file"):
        load_model(str(path), width=3)


def _onnx_cnn(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {
        "W": (rng.standard_normal((3, 1, 3, 3)) * 0.5).astype(np.float32),
        "B": rng.standard_normal(3).astype(np.float32),
        "fcW": (rng.standard_normal((4, 3 * 8 * 8)) * 0.1).astype(np.float32),
        "fcB": rng.standard_normal(4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fcW", "fcB"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_onnx_file_matches_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "small.onnx"
    _onnx_cnn(path)
    model = load_model(str(path))
    assert model.name == "small.onnx" and model.input_shape == (1, 8, 8)
    x = _x(5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(model.predict(x).numpy(), expected, atol=1e-5, rtol=1e-5)
    # differentiable with respect to the input (attacks need it)
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(InputError, match=r"expects images of shape \(1, 8, 8\)"):
        model.validate(torch.rand(1, 1, 9, 9))


# ---------------------------------------------------------------------------------------------------
# file errors
# ---------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(InputError, match="does not exist"):
        load_model(str(tmp_path / "nope.onnx"))
    with pytest.raises(InputError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pt")
    folder = tmp_path / "weights.pt"
    folder.mkdir()
    with pytest.raises(InputError, match="is not a file"):
        load_model(str(folder))


def test_html_page_saved_as_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("<!DOCTYPE html>\n<html><body>Sign in to download</body></html>")
    with pytest.raises(InputError, match="it is an HTML page, not model weights"):
        load_model(str(path))
    with pytest.raises(InputError, match="HTML page"):
        load_state_dict(path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="it is empty"):
        load_model(str(empty))


def test_state_dict_file_asks_for_an_import_path(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(SmallCNN().state_dict(), path)
    with pytest.raises(
        InputError, match=r"holds only weights \(a state dict\): give the architecture as an import path"
    ):
        load_model(str(path))
    nested = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": SmallCNN().state_dict()}, nested)
    assert set(load_state_dict(nested)) == set(SmallCNN().state_dict())
    with pytest.raises(InputError, match="holds only weights"):
        load_model(str(nested))
    not_tensors = tmp_path / "meta.pt"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(InputError, match="does not hold a state dict of tensors"):
        load_state_dict(not_tensors)


# ---------------------------------------------------------------------------------------------------
# pickled whole modules: only with trust_pickle
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zipped", [True, False])
def test_pickled_module_needs_trust(tmp_path: Path, zipped: bool) -> None:
    net = SmallCNN().eval()
    path = tmp_path / "whole.pth"
    torch.save(net, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(InputError, match=r"'.*whole.pth' is a pickled module: loading it runs code from the file; pass --trust-pickle if you trust it"):
        load_model(str(path))
    model = load_model(str(path), trust_pickle=True)
    assert model.name == "whole.pth" and not model.training
    torch.testing.assert_close(model(_x()), net(_x()))
    assert load_model(f"{path}:trust_pickle=true,name=p").name == "p"
    assert load_model("digits-mlp", trust_pickle=True).name == "digits-mlp"  # no effect on other sources
    with pytest.raises(UsageError, match="'trust_pickle' must be true or false"):
        load_model(str(path), trust_pickle="yes")


def test_pickled_classifier_and_other_objects(tmp_path: Path) -> None:
    classifier = ImageClassifier(SmallCNN().eval(), labels=list("abcd"), input_shape=(1, 8, 8), name="mine")
    torch.save(classifier, tmp_path / "classifier.pt")
    loaded = load_model(str(tmp_path / "classifier.pt"), trust_pickle=True)
    assert loaded.labels == list("abcd") and loaded.name == "mine"
    torch.save({"net": SmallCNN(), "epoch": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(InputError, match="holds a pickled dict, expected a whole torch.nn.Module"):
        load_model(str(tmp_path / "checkpoint.pt"), trust_pickle=True)


def test_pickled_module_whose_class_cannot_be_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rc_pickled_cls_{abs(hash(str(tmp_path))) % 10**8}"
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / f"{name}.py").write_text("from torch import nn\n\nclass Net(nn.Linear):\n    def forward(self, x):\n        return super().forward(x.flatten(1))\n")
    monkeypatch.syspath_prepend(str(folder))
    module = __import__(name)
    torch.save(module.Net(64, 2), tmp_path / "net.pt")
    sys.path.remove(str(folder))
    del sys.modules[name]
    with pytest.raises(InputError, match=r"cannot unpickle model '.*net.pt': ModuleNotFoundError.*must be importable"):
        load_model(str(tmp_path / "net.pt"), trust_pickle=True)
    (tmp_path / f"{name}.py").write_text((folder / f"{name}.py").read_text())  # beside the file: found
    assert load_model(str(tmp_path / "net.pt"), trust_pickle=True)(_x()).shape == (2, 2)
    sys.modules.pop(name, None)


# ---------------------------------------------------------------------------------------------------
# torchvision and timm
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hub", ["torchvision", "timm"])
def test_hub_models_without_the_package(monkeypatch: pytest.MonkeyPatch, hub: str) -> None:
    monkeypatch.setitem(sys.modules, hub, None)  # import fails even where the package is installed
    monkeypatch.delitem(sys.modules, f"{hub}.models", raising=False)
    with pytest.raises(InputError, match=f"'{hub}:resnet18' needs"):
        load_model(f"{hub}:resnet18")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


WEIGHTS_URL = "https://download.example.org/models/tinynet-0123abcd.pth"
CATEGORIES = ["tench", "goldfish", "great white shark"]


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    """A ``torchvision`` whose ``models`` knows one architecture, and a torch hub dir in tmp_path."""
    calls: list[tuple[str, object]] = []

    def get_model(name: str, weights=None):
        calls.append((name, weights))
        if name != "tinynet":
            raise ValueError(f"Unknown model {name}")
        torch.manual_seed(1)
        return TinyNet()

    def get_model_weights(name: str):
        if name != "tinynet":
            raise ValueError(f"no weights for {name}")
        return SimpleNamespace(DEFAULT=SimpleNamespace(url=WEIGHTS_URL, meta={"categories": CATEGORIES}))

    package = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.get_model, models.get_model_weights = get_model, get_model_weights
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setattr(torch.hub, "_hub_dir", getattr(torch.hub, "_hub_dir", None))  # restored afterwards
    torch.hub.set_dir(str(tmp_path / "hub"))
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return SimpleNamespace(calls=calls, checkpoints=checkpoints)


def test_torchvision_with_cached_weights(fake_torchvision: SimpleNamespace) -> None:
    torch.manual_seed(7)
    trained = TinyNet()
    fake_torchvision.checkpoints.mkdir(parents=True)
    torch.save(trained.state_dict(), fake_torchvision.checkpoints / "tinynet-0123abcd.pth")
    model = load_model("torchvision:tinynet")
    assert fake_torchvision.calls == [("tinynet", None)]  # never asks torchvision to download
    assert model.name == "torchvision:tinynet" and model.labels == CATEGORIES and not model.training
    assert model.normalize.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    x = torch.rand(2, 3, 16, 16)
    expected = trained(
        (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    )
    torch.testing.assert_close(model(x), expected)
    assert load_model("torchvision:tinynet:name=tv").name == "tv"


def test_torchvision_missing_weights_and_pretrained_false(fake_torchvision: SimpleNamespace) -> None:
    with pytest.raises(
        InputError,
        match=r"no cached weights for torchvision:tinynet .*tinynet-0123abcd.pth.*pretrained=false",
    ):
        load_model("torchvision:tinynet")
    model = load_model("torchvision:tinynet:pretrained=false")
    assert model.labels is None and model(torch.rand(1, 3, 8, 8)).shape == (1, 3)
    assert load_model("torchvision:tinynet", pretrained=False).labels is None


def test_torchvision_errors(fake_torchvision: SimpleNamespace) -> None:
    with pytest.raises(InputError, match="torchvision has no model 'resnet9000'"):
        load_model("torchvision:resnet9000")
    with pytest.raises(UsageError, match="unknown options for model 'torchvision:tinynet': depth"):
        load_model("torchvision:tinynet:depth=3")
    fake_torchvision.checkpoints.mkdir(parents=True)
    torch.save({"other.weight": torch.zeros(1)}, fake_torchvision.checkpoints / "tinynet-0123abcd.pth")
    with pytest.raises(InputError, match="do not fit torchvision:tinynet"):
        load_model("torchvision:tinynet")
    (fake_torchvision.checkpoints / "tinynet-0123abcd.pth").write_text("<html>404</html>")
    with pytest.raises(InputError, match="HTML page"):
        load_model("torchvision:tinynet")


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    created: list[dict] = []

    def get_pretrained_cfg(name: str):
        return SimpleNamespace(hf_hub_id=f"timm/{name}.test") if name == "tinynet" else None

    def create_model(name: str, pretrained: bool = False, pretrained_cfg_overlay=None):
        created.append({"name": name, "pretrained": pretrained, "overlay": pretrained_cfg_overlay})
        module = TinyNet()
        module.pretrained_cfg = {
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
            "input_size": (3, 16, 16),
        }
        return module

    timm = types.ModuleType("timm")
    timm.models = SimpleNamespace(get_pretrained_cfg=get_pretrained_cfg)
    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    return SimpleNamespace(created=created)


def test_timm_pretrained_false_and_missing_cache(
    fake_timm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model("timm:tinynet:pretrained=false")
    assert fake_timm.created == [{"name": "tinynet", "pretrained": False, "overlay": None}]
    assert model.name == "timm:tinynet" and model.input_shape == (3, 16, 16)
    assert model.normalize.std.flatten().tolist() == [0.25] * 3
    with pytest.raises(
        InputError, match=r"no cached weights for timm:other \(hub id None\).*pretrained=false"
    ):
        load_model("timm:other")
    hf = types.ModuleType("huggingface_hub")
    hf.try_to_load_from_cache = lambda repo, filename: None
    monkeypatch.setitem(sys.modules, "huggingface_hub", hf)
    with pytest.raises(
        InputError, match=r"no cached weights for timm:tinynet \(hub id 'timm/tinynet.test'\)"
    ):
        load_model("timm:tinynet")


def test_timm_uses_the_cached_file(
    fake_timm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hf = types.ModuleType("huggingface_hub")
    cached = tmp_path / "model.safetensors"
    hf.try_to_load_from_cache = lambda repo, filename: (
        str(cached) if filename == "model.safetensors" else None
    )
    monkeypatch.setitem(sys.modules, "huggingface_hub", hf)
    model = load_model("timm:tinynet")
    assert fake_timm.created[-1] == {"name": "tinynet", "pretrained": True, "overlay": {"file": str(cached)}}
    assert model.input_shape == (3, 16, 16)


def test_timm_without_huggingface_hub(fake_timm: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(InputError, match="needs huggingface_hub"):
        load_model("timm:tinynet")
