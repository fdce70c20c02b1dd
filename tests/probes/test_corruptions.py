"""The ``corruptions`` probe: metrics from records (accuracy per corruption and severity, mCE against a
reference model), pre-generated images from a CIFAR-10-C style folder, defenses, budget, shards, the CLI,
and (slow) accuracy falling with severity for every corruption on a CIFAR-10 CNN."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from robustcheck.api import RunContext
from robustcheck.data.formats.corrupted import load_corruption_folder
from robustcheck.data.loading import load_data
from robustcheck.errors import InputError, ProbeTimeout, UsageError
from robustcheck.models.loading import load_model
from robustcheck.ops.corruptions import CORRUPTION_NAMES
from robustcheck.plugins import create_probe
from robustcheck.probes.corruptions.measure import compute_metrics

FEW = {"corruptions": ["gaussian_noise", "fog", "contrast"], "severities": [1, 3, 5]}


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    """Small models and many small batches: one thread is faster."""


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any]:
    return load_model("digits-cnn"), load_data("digits-rgb32").sample(30, 0)


def test_metrics_records_table_and_examples(digits: tuple[Any, Any]) -> None:
    model, data = digits
    result = create_probe("corruptions", **FEW, examples=2)(model, data, batch_size=16)
    m = result.metrics
    assert result.status == "ok" and m["samples"] == 30 and m["preset"] == "cifar"
    assert m["sources"] == dict.fromkeys(FEW["corruptions"], "generated")
    assert set(m["corruption_accuracy"]) == set(FEW["corruptions"])
    assert all(set(row) == {"1", "3", "5"} for row in m["corruption_accuracy"].values())
    pairs = [v for row in m["corruption_accuracy"].values() for v in row.values()]
    assert m["mean_corruption_accuracy"] == pytest.approx(np.mean(pairs))
    assert result.score == pytest.approx(min(1.0, m["mean_corruption_accuracy"] / m["clean_accuracy"]))
    assert m["accuracy_by_severity"]["0"] == m["clean_accuracy"] > 0.9
    assert (
        m["corruption_accuracy"]["contrast"]["5"] < m["corruption_accuracy"]["contrast"]["1"]
    )  # 0.15 of the contrast left
    records = result.records
    assert len(records) == 30 and {
        "index",
        "label",
        "prediction",
        "correct",
        "first_failure",
        "fog/3",
    } <= set(records.columns)
    assert records["correct"].mean() == m["clean_accuracy"]
    assert records["corrupted_accuracy"].mean() == pytest.approx(m["mean_corruption_accuracy"])
    table = result.tables[0].frame
    assert table["corruption"].tolist() == ["clean", "gaussian_noise", "fog", "contrast", "mean"]
    assert table.loc[2, "3"] == m["corruption_accuracy"]["fog"]["3"]
    assert len(result.artifacts) == 3 * 2 and all(
        len(a.images) == 4 for a in result.artifacts
    )  # clean, 1, 3, 5
    assert result.artifacts[0].captions[1].startswith("severity 1:")
    json.dumps(m)  # results.json must hold every metric
    again = create_probe("corruptions", **FEW, examples=2)(model, data, batch_size=16)
    assert again.metrics == m  # same seed, same corrupted images, same numbers
    other = create_probe("corruptions", corruptions=["gaussian_noise"], severities=[5])(
        model, data, batch_size=16, seed=1
    )
    assert other.records["gaussian_noise/5"].tolist() != [] and other.seed == 1


def test_corruption_error_and_mce_from_records() -> None:
    # model: clean 3/4 right; under "fog" 2/4 then 1/4 wrong ... reference: clean 4/4, fog 3/4 then 2/4
    records = pd.DataFrame(
        {
            "correct": [True, True, True, False],
            "fog/1": [True, True, False, False],
            "fog/2": [True, False, False, False],
            "reference_correct": [True, True, True, True],
            "reference:fog/1": [True, True, True, False],
            "reference:fog/2": [True, True, False, False],
        }
    )
    m = compute_metrics(records, ["fog"], [1, 2])
    # errors 0.5 + 0.75 over the reference's 0.25 + 0.5; relative: (0.25 + 0.5) / (0.25 + 0.5)
    assert m["corruption_error"]["fog"] == pytest.approx(1.25 / 0.75) and m["mce"] == pytest.approx(
        1.25 / 0.75
    )
    assert (
        m["relative_corruption_error"]["fog"]
        == pytest.approx((0.25 + 0.5) / (0.25 + 0.5))
        == m["relative_mce"]
    )
    assert m["reference_clean_accuracy"] == 1.0 and m["reference_mean_corruption_accuracy"] == pytest.approx(
        0.625
    )
    records["reference:fog/1"] = records["reference:fog/2"] = True  # a reference that makes no error: no CE
    m = compute_metrics(records, ["fog"], [1, 2])
    assert m["mce"] is None and m["mce_undefined"] == ["fog"]


def test_reference_model_gives_ce_per_corruption(digits: tuple[Any, Any]) -> None:
    model, data = digits
    result = create_probe("corruptions", **FEW, reference="digits-cnn", examples=0)(
        model, data, batch_size=30
    )
    m = result.metrics
    assert m["reference"] == "digits-cnn" and m["reference_clean_accuracy"] == m["clean_accuracy"]
    defined = [v for v in m["corruption_error"].values() if v is not None]
    assert defined and all(v == pytest.approx(1.0) for v in defined)  # the model against itself
    assert {"CE", "relative CE"} <= set(result.tables[0].frame.columns) and result.artifacts == []


def test_parameters_are_checked() -> None:
    with pytest.raises(UsageError, match="'corruptions' must be a non-empty list of one of"):
        create_probe("corruptions", corruptions=["fgo"])
    with pytest.raises(UsageError, match="'severities'"):
        create_probe("corruptions", severities=[0])
    probe = create_probe("corruptions", corruptions=["fog", "gaussian_noise", "fog"], severities=[5, 1, 5])
    assert probe.names == ["gaussian_noise", "fog"] and probe.levels == [1, 5]


class _Budget(RunContext):
    """A run context whose budget runs out after ``calls`` checks."""

    def __init__(self, calls: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.left = calls

    def check_time(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ProbeTimeout("time budget spent")


def test_budget_keeps_the_finished_batches(digits: tuple[Any, Any]) -> None:
    model, data = digits
    probe = create_probe("corruptions", **FEW)
    result = probe.run(model, data, _Budget(9 + 4, batch_size=10))  # 9 pairs per batch: batch 2 is cut
    assert result.status == "timeout" and result.metrics["samples"] == 10
    assert "10 of 30 samples measured under every corruption" in result.message
    with pytest.raises(ProbeTimeout, match="before the first batch finished"):
        probe.run(model, data, _Budget(3, batch_size=10))


def _corruption_folder(folder: Path, data: Any, names: list[str]) -> None:
    """A CIFAR-10-C style folder: clean.npy, labels.npy (repeated per severity) and <name>.npy, where
    severity s of every image is the clean image darkened to (1 - s / 5) of its brightness."""
    folder.mkdir()
    clean = np.round(data.x.numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    np.save(folder / "clean.npy", clean)
    np.save(folder / "labels.npy", np.tile(data.y.numpy().astype(np.uint8), 5))
    stacked = np.concatenate([np.round(clean * (1 - s / 5)).astype(np.uint8) for s in range(1, 6)])
    for name in names:
        np.save(folder / f"{name}.npy", stacked)
    np.save(folder / "speckle_noise.npy", stacked)  # an extra CIFAR-10-C file: listed, not used


def test_pre_generated_images_are_used(digits: tuple[Any, Any], tmp_path: Path) -> None:
    model, data = digits
    _corruption_folder(tmp_path / "c", data, ["fog", "contrast"])
    loaded = load_data(str(tmp_path / "c"))
    assert loaded.corruptions == ("fog", "contrast") and loaded.meta["ignored"] == ["speckle_noise.npy"]
    sampled = loaded.sample(12, seed=3)  # what the runner does: the corrupted copies follow the draw
    probe = create_probe("corruptions", **FEW)
    result = probe(model, sampled, batch_size=5)
    m = result.metrics
    assert m["sources"] == {"gaussian_noise": "generated", "fog": "data", "contrast": "data"}
    assert m["corruption_accuracy"]["fog"] == m["corruption_accuracy"]["contrast"]  # the same stored images
    darkest = torch.from_numpy(
        np.round(np.round(sampled.x.numpy() * 255) * 0.0) / 255
    ).float()  # severity 5: black
    assert m["corruption_accuracy"]["fog"]["5"] == pytest.approx(
        float((model.predict(darkest).argmax(1) == sampled.y).float().mean())
    )
    assert result.tables[0].frame.set_index("corruption").loc["fog", "source"] == "data"
    generated = create_probe("corruptions", **FEW, source="generate")(model, sampled, batch_size=5)
    assert set(generated.metrics["sources"].values()) == {"generated"}
    with pytest.raises(InputError, match="source=data but data .* carries no images for gaussian_noise"):
        create_probe("corruptions", **FEW, source="data")(model, sampled)
    with pytest.raises(InputError, match="not a CIFAR-10-C"):
        create_probe("corruptions", source="data")(model, data)


def test_runner_with_a_defense_shards_and_cli(tmp_path: Path, cli: Any) -> None:
    from robustcheck.run.runner import Runner, RunSpec

    runner = Runner(None, quiet=True)
    specs = [
        RunSpec(model="digits-cnn", probe="corruptions", defense="median-filter", params=FEW, samples=12),
        RunSpec(model="digits-cnn", probe="corruptions", params=FEW, samples=12, shards=2),
    ]
    runner.check(specs)
    defended, sharded = runner.run(specs)
    assert defended.result.status == "ok" and 0.0 <= defended.result.score <= 1.0
    whole = create_probe("corruptions", **FEW)(
        load_model("digits-cnn"), load_data("digits-rgb32").sample(12, 0)
    )
    assert sharded.result.status == "ok" and sharded.result.metrics["samples"] == 12
    assert sharded.result.metrics["clean_accuracy"] == whole.metrics["clean_accuracy"]
    out = tmp_path / "out"
    result = cli(
        "audit",
        "--samples",
        "10",
        "--probe",
        "corruptions:corruptions=[fog,pixelate],severities=[1,5]",
        "--quiet",
        "--out",
        out,
    )
    assert result.code == 0, result.err
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["probe"] == "corruptions" and set(run["metrics"]["corruption_accuracy"]) == {"fog", "pixelate"}
    assert "corruptions" in (out / "report.html").read_text()


def test_folder_without_clean_images_says_how_to_give_them(digits: tuple[Any, Any], tmp_path: Path) -> None:
    _, data = digits
    _corruption_folder(tmp_path / "c", data, ["fog"])
    (tmp_path / "c" / "clean.npy").unlink()
    with pytest.raises(InputError, match="no clean images: put them in clean.npy"):
        load_data(str(tmp_path / "c"))
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=np.round(data.x.numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8), y=data.y.numpy())
    loaded = load_data(f"{tmp_path / 'c'}:clean={clean},limit=7")
    assert len(loaded) == 7 and loaded.corrupted("fog", 5).abs().max() == 0.0
    assert load_corruption_folder(tmp_path / "c", clean=load_data(str(clean))).source_count == 30


# --------------------------------------------------------------------------- slow: a CIFAR-10 CNN
@pytest.mark.slow
def test_accuracy_falls_with_severity_for_every_corruption_on_cifar(cifar_model: tuple[Any, Any]) -> None:
    model, held_out = cifar_model
    data = held_out.head(200)
    result = create_probe("corruptions", examples=1)(model, data, batch_size=100)
    m = result.metrics
    assert result.status == "ok" and m["clean_accuracy"] > 0.7 and m["preset"] == "cifar"
    for name in CORRUPTION_NAMES:
        row = m["corruption_accuracy"][name]
        mild, strong = (row["1"] + row["2"]) / 2, (row["4"] + row["5"]) / 2
        assert row["5"] < m["clean_accuracy"] and strong < mild, (name, m["clean_accuracy"], row)
    by_severity = [m["accuracy_by_severity"][str(s)] for s in range(6)]
    assert all(b < a for a, b in zip(by_severity, by_severity[1:], strict=False)), by_severity
    assert 0.0 < result.score < 1.0 and len(result.artifacts) == 15
