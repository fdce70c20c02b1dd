"""Shared fixtures for the runner, CLI and plugin tests (helpers that tests import live in helpers.py)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import HELPER_PROBES, HELPERS_MODULE, HELPERS_SOURCE, SHARED_DATA, CliResult


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run torch on one thread: the tiny test audits are faster so, above all on a busy machine
    (two threads on two shared cores thrash), and in-process and subprocess results stay comparable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary folder, with a wide terminal for rich tables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The ``rc_helpers`` module, importable (on sys.path) with its probes registered in-process."""
    from robustcheck import registry

    folder = tmp_path / "helpers"
    folder.mkdir()
    (folder / f"{HELPERS_MODULE}.py").write_text(HELPERS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(HELPERS_MODULE, None)
    module = importlib.import_module(HELPERS_MODULE)
    try:
        yield module
    finally:
        for name in HELPER_PROBES:
            registry.unregister("probe", name)
        sys.modules.pop(HELPERS_MODULE, None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``robustcheck.cli.main.main`` in-process: ``cli("audit", "--quiet", ...)`` -> CliResult."""
    from robustcheck.cli.main import main

    def run(*argv: str | Path) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# --------------------------------------------------------------------------- CIFAR-10 model for slow tests

CIFAR_NPZ = SHARED_DATA / "cifar10-test-jpeg.npz"
CIFAR_MODEL_VERSION = "v2"  # bump when the architecture or training recipe changes (invalidates the cache)


@pytest.fixture(scope="session")
def cifar_model(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """A small CIFAR-10 CNN trained here on 8,000 of the shared CIFAR-10 test images, and the other 2,000.

    Returns ``(ImageClassifier for 3x32x32 inputs in [0, 1], held-out ImageDataset)``; the held-out images
    cycle through the classes (0, 1, ..., 9, 0, 1, ...), so ``head(n)`` is class-balanced. The weights are cached
    in pytest's cache folder, so only the first slow run pays for training (about 2 minutes on 2 cores).
    Skips when ``../shared/data/cifar10-test-jpeg.npz`` is absent.
    """
    if not CIFAR_NPZ.exists():
        pytest.skip(f"CIFAR-10 data not found at {CIFAR_NPZ}")
    import numpy as np
    import torch

    from robustcheck.data.dataset import ImageDataset, hwc_uint8_to_tensor
    from robustcheck.models.classifier import ImageClassifier
    from robustcheck.zoo.cifar import CIFAR_MEAN, CIFAR_STD, cifar_cnn, held_out_split, train_cifar_cnn

    with np.load(CIFAR_NPZ) as npz:
        x, y, classes = hwc_uint8_to_tensor(npz["x"]), torch.from_numpy(npz["y"].astype(np.int64)), [str(c) for c in npz["classes"]]
    train, held_out = held_out_split(y)  # every fifth image (200 per class), classes interleaved
    weights = Path(request.config.cache.mkdir("robustcheck-cifar")) / f"cifar-cnn-{CIFAR_MODEL_VERSION}.pt"
    module = cifar_cnn()
    if weights.exists():
        module.load_state_dict(torch.load(weights, weights_only=True))
    else:
        module = train_cifar_cnn(x[train], y[train])
        torch.save(module.state_dict(), weights)
    model = ImageClassifier(
        module.eval(), bounds=(0.0, 1.0), mean=CIFAR_MEAN, std=CIFAR_STD, labels=classes, input_shape=(3, 32, 32), name="cifar-cnn"
    )
    return model, ImageDataset(x[held_out], y[held_out], classes, name="cifar10-test-jpeg:held-out")
