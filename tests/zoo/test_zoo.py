"""robustcheck.zoo: shipped weights load and are accurate; training reproduces them deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustcheck.data.loading import load_data
from robustcheck.errors import InputError
from robustcheck.models.loading import load_model
from robustcheck.zoo import ZOO, load_zoo_model


@pytest.mark.parametrize(
    ("name", "data", "shape"),
    [("digits-mlp", "digits", (1, 8, 8)), ("digits-cnn", "digits-rgb32", (3, 32, 32)), ("digits-mlp-robust", "digits", (1, 8, 8))],
)
def test_shipped_weights_are_accurate_on_held_out_data(
    name: str, data: str, shape: tuple[int, int, int]
) -> None:
    spec = ZOO[name]
    assert spec.weights_path.is_file() and spec.data == data
    model = load_model(name)
    assert model.default_data == data and model.input_shape == shape and model.bounds == (0.0, 1.0)
    test = load_data(data)  # the held-out (test) split
    assert len(test) == 450 and test.shape == shape
    model.validate(test.x)
    accuracy = (model.predict(test.x).argmax(1) == test.y).float().mean().item()
    assert accuracy >= 0.95, f"{name} accuracy {accuracy:.4f} on {data}"


def test_adversarially_trained_model_resists_pgd_where_the_plain_one_breaks() -> None:
    """digits-mlp-robust (PGD training at Linf 0.15) keeps most of its accuracy under 20-step PGD at 0.1, where the
    plainly trained digits-mlp loses most of it: a model on which strong and weak attacks differ."""
    from robustcheck.plugins import create_probe

    data = load_data("digits").head(200)
    probe = create_probe("pgd-linf", epsilons=[0.1], steps=20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention
    try:
        robust = probe(load_model("digits-mlp-robust"), data, seed=0, batch_size=200).metrics["robust_accuracy"]["0.1"]
        plain = probe(load_model("digits-mlp"), data, seed=0, batch_size=200).metrics["robust_accuracy"]["0.1"]
    finally:
        torch.set_num_threads(threads)
    assert robust >= 0.8 and plain <= 0.4, (robust, plain)
    assert ZOO["digits-mlp-robust"].adversarial is not None and ZOO["digits-mlp"].adversarial is None


def test_zoo_model_is_in_eval_mode_and_weights_are_replaceable(tmp_path: Path) -> None:
    model = load_zoo_model("digits-mlp")
    assert not any(m.training for m in model.modules())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read weights"):
        load_zoo_model("digits-mlp", bad)
    wrong = tmp_path / "cnn.pt"
    torch.save(ZOO["digits-cnn"].build().state_dict(), wrong)
    with pytest.raises(InputError, match=f"(?s)weights '{wrong}' do not fit model 'digits-mlp'.*Missing key"):
        load_zoo_model("digits-mlp", wrong)
    with pytest.raises(InputError, match="do not fit model 'digits-mlp'"):
        load_model(f"digits-mlp:weights={wrong}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_retraining_is_accurate_and_deterministic(name: str, tmp_path: Path) -> None:
    from robustcheck.zoo.train import train

    deterministic = torch.are_deterministic_algorithms_enabled()
    first, accuracy = train(name, tmp_path / "a", verbose=False)
    second, accuracy_again = train(name, tmp_path / "b", verbose=False)
    assert torch.are_deterministic_algorithms_enabled() == deterministic  # process-wide switch restored
    assert first == tmp_path / "a" / f"{name}.pt" and second.is_file()
    assert accuracy >= 0.95 and accuracy == accuracy_again
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the retrained weights load through the registry like the shipped ones
    model = load_model(f"{name}:weights={first}")
    data = load_data(ZOO[name].data)
    assert (model.predict(data.x).argmax(1) == data.y).float().mean().item() == pytest.approx(accuracy)


def test_training_restores_the_deterministic_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One quick epoch: ``train`` writes the weights and leaves torch's process-wide switch as it found it."""
    from dataclasses import replace

    from robustcheck.zoo import train as train_module

    monkeypatch.setitem(train_module.ZOO, "digits-mlp", replace(ZOO["digits-mlp"], epochs=1))
    before = torch.are_deterministic_algorithms_enabled()
    path, accuracy = train_module.train("digits-mlp", tmp_path, verbose=False)
    assert path == tmp_path / "digits-mlp.pt" and 0.0 <= accuracy <= 1.0
    assert torch.are_deterministic_algorithms_enabled() == before
    assert load_model(f"digits-mlp:weights={path}").input_shape == (1, 8, 8)

    def explode(*args, **kwargs):
        raise RuntimeError("no data")

    monkeypatch.setattr(train_module, "load_data", explode)
    with pytest.raises(RuntimeError, match="no data"):
        train_module.train("digits-mlp", tmp_path, verbose=False)
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.slow
def test_cifar_fixture_model_learns(cifar_model: tuple) -> None:
    """The CIFAR-10 CNN that slow tests of probes and defenses use is a real classifier (far above 10%)."""
    model, held_out = cifar_model
    accuracy = (model.predict(held_out.x).argmax(1) == held_out.y).float().mean().item()
    assert accuracy > 0.6, accuracy
    assert held_out.y[:20].tolist() == list(range(10)) * 2  # classes interleaved: head(n) is balanced
