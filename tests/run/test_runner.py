"""Tests of the runner (robustcheck.run.runner) and its run store (robustcheck.run.checkpoint), in-process."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import stored_runs

from robustcheck.api import Artifact
from robustcheck.errors import RequirementError, UsageError
from robustcheck.run.checkpoint import RunStore
from robustcheck.run.runner import Runner, RunSpec, records_table

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = {"model": "digits-cnn", "samples": 8, "seed": 0}


def _spec(probe: str, **changes: Any) -> RunSpec:
    return RunSpec(**{**SPEC, "probe": probe, **changes})


# --------------------------------------------------------------------------------------------- run specs


def test_run_id_ignores_the_budget_only() -> None:
    spec = _spec("fgsm", params={"epsilons": [0.0, 0.1]})
    assert spec.run_id == _spec("fgsm", params={"epsilons": [0.0, 0.1]}, budget_s=3.0).run_id
    for other in (_spec("fgsm"), _spec("fgsm", params={"epsilons": [0.0, 0.1]}, seed=1), _spec("pgd-linf", params={"epsilons": [0.0, 0.1]})):
        assert other.run_id != spec.run_id
    assert _spec("fgsm", defense="bit-depth").label == "digits-cnn+bit-depth / fgsm"


# --------------------------------------------------------------------------------------------- store


def test_store_round_trips_records_exactly(tmp_path: Path) -> None:
    records = pd.DataFrame(
        {
            "index": [0, 1, 2],
            "label": ["007", "12", "3"],  # strings that look like numbers stay strings
            "confidence": [0.5188802480697632, 1 / 3, 2 / 3],  # every digit survives
            "correct": [True, False, True],
            "min_epsilon": [None, 0.1, None],  # missing values stay NaN in a float column
            "note": ["a", None, "c"],
            "when_at": ["1234567890", "1", "2"],  # pandas would read this name as a date column
        }
    )
    store = RunStore(tmp_path / "runs.sqlite")
    artifact = Artifact("sample 0", [np.zeros((1, 4, 4))], ["clean"])
    store.save("abc", {"probe": "x"}, {"score": 0.5, "metrics": {"n": np.int64(3), "ok": np.bool_(True)}}, records, [artifact])
    result, loaded, artifacts = RunStore(tmp_path / "runs.sqlite").load("abc")
    pd.testing.assert_frame_equal(loaded, records)
    assert result == {"score": 0.5, "metrics": {"n": 3, "ok": True}}
    assert artifacts[0].title == "sample 0" and artifacts[0].png_images()[0].startswith(b"\x89PNG")
    assert store.load("missing") is None
    assert store.run_ids() == {"abc"}
    store.save("empty", {}, {}, pd.DataFrame(), [])
    assert store.load("empty")[1].empty
    store.clear()
    assert store.run_ids() == set()


def test_store_reads_records_written_by_0_1_0(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    store.save("old", {}, {"score": 1.0}, pd.DataFrame(), [])
    import sqlite3

    legacy = pd.DataFrame({"index": [0, 1], "correct": [True, False]}).to_json(orient="split", index=False)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET records = ? WHERE run_id = 'old'", (legacy,))
    assert store.load("old")[1]["correct"].tolist() == [True, False]


def test_store_rejects_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    from robustcheck.errors import InputError

    (tmp_path / "runs.sqlite").write_text("not a database " * 100)
    with pytest.raises(InputError, match="run store"):
        RunStore(tmp_path / "runs.sqlite")


# --------------------------------------------------------------------------------------------- runner


def test_check_fails_before_running_anything(helpers: Any, tmp_path: Path) -> None:
    runner = Runner(tmp_path / "o", quiet=True)
    with pytest.raises(RequirementError, match="Linear/Conv2d/ReLU"):
        runner.check([_spec("fgsm"), _spec("needs-relu")])
    with pytest.raises(UsageError, match="stepz"):
        runner.check([_spec("fgsm", params={"stepz": 3})])
    assert runner.store is not None and runner.store.run_ids() == set()


def test_same_seed_same_results(helpers: Any) -> None:
    specs = [_spec("pgd-linf", params={"steps": 3, "epsilons": [0.0, 0.03]}), _spec("sleepy", params={"sleep": 0.0})]
    runner = Runner(None, quiet=True)
    first, second = runner.run(specs), runner.run(specs)
    for a, b in zip(first, second, strict=True):
        assert a.result.score == b.result.score and a.result.metrics == b.result.metrics
        pd.testing.assert_frame_equal(a.result.records, b.result.records)
    other = runner.run([_spec("sleepy", params={"sleep": 0.0}, seed=1)])
    assert other[0].result.records["noise"].tolist() != first[1].result.records["noise"].tolist()


def test_probe_errors_and_timeouts_become_statuses(helpers: Any, tmp_path: Path) -> None:
    runner = Runner(tmp_path / "o", quiet=True)
    outcomes = runner.run([_spec("sleepy", params={"sleep": 0.0}), _spec("explode"), _spec("sleepy", budget_s=0.01)])
    assert [o.result.status for o in outcomes] == ["ok", "error", "timeout"]
    assert "RuntimeError" in outcomes[1].result.message and outcomes[1].result.score is None
    assert "budget" in outcomes[2].result.message
    assert {r["status"] for r in stored_runs(tmp_path / "o" / "runs.sqlite").values()} == {"ok", "error", "timeout"}


def test_resume_reuses_finished_runs_and_retries_errors(helpers: Any, tmp_path: Path) -> None:
    specs = [_spec("sleepy", params={"sleep": 0.0}), _spec("explode"), _spec("sleepy", budget_s=0.01)]
    Runner(tmp_path / "o", quiet=True).run(specs)
    before = stored_runs(tmp_path / "o" / "runs.sqlite")
    outcomes = Runner(tmp_path / "o", resume=True, quiet=True).run(specs)
    assert [o.resumed for o in outcomes] == [True, False, True]  # errors are retried, timeouts are final
    after = stored_runs(tmp_path / "o" / "runs.sqlite")
    assert after[specs[0].run_id]["finished"] == before[specs[0].run_id]["finished"]
    assert after[specs[1].run_id]["finished"] != before[specs[1].run_id]["finished"]
    # a resumed outcome writes the same results and records as the original one
    original = Runner(None, quiet=True).run(specs[:1])[0]
    assert outcomes[0].to_json() | {"seconds": 0} == original.to_json() | {"seconds": 0}
    pd.testing.assert_frame_equal(outcomes[0].result.records, original.result.records)
    # without resume the store starts empty
    Runner(tmp_path / "o", quiet=True)
    assert stored_runs(tmp_path / "o" / "runs.sqlite") == {}


def test_numpy_metrics_are_saved_and_written(helpers: Any, tmp_path: Path) -> None:
    runner = Runner(tmp_path / "o", quiet=True)
    outcomes = runner.run([_spec("numpy-metrics")])
    assert outcomes[0].result.status == "ok"
    results = runner.write_outputs(outcomes, seed=0)
    written = json.loads((tmp_path / "o" / "results.json").read_text())
    metrics = written["runs"][0]["metrics"]
    assert metrics["correct"] == int(outcomes[0].result.records["correct"].sum())
    assert isinstance(metrics["all_correct"], bool) and len(metrics["flags"]) == 3
    assert written["runs"][0]["score"] == results["runs"][0]["score"]
    table = written["runs"][0]["tables"][0]
    assert table["title"] == "first three" and table["columns"] == ["label", "correct"] and len(table["rows"]) == 3
    assert "first three" in (tmp_path / "o" / "report.html").read_text()
    resumed = Runner(tmp_path / "o", resume=True, quiet=True).run([_spec("numpy-metrics")])[0]
    assert resumed.resumed and resumed.result.metrics == metrics
    assert [t.to_json() for t in resumed.result.tables] == [table]


def test_results_and_records_table(helpers: Any) -> None:
    runner = Runner(None, quiet=True)
    outcomes = runner.run([_spec("sleepy", params={"sleep": 0.0}), _spec("explode")])
    results = runner.write_outputs(outcomes, seed=0)  # no out_dir: nothing written, results returned
    assert results["seed"] == 0 and len(results["runs"]) == 2
    assert set(results["environment"]) == {"python", "torch", "foolbox", "z3", "platform", "device"}
    ok, error = results["runs"]
    assert ok["samples"] == 8 and ok["data"] == "digits-rgb32" and math.isclose(ok["score"], ok["metrics"]["clean_accuracy"])
    assert error["status"] == "error" and error["samples"] == 8
    table = records_table(outcomes)
    assert len(table) == 8 and list(table.columns[:4]) == ["run_id", "model", "defense", "probe"]
    assert records_table([]).empty


def test_in_memory_models_and_data(helpers: Any) -> None:
    from robustcheck.data.loading import load_data
    from robustcheck.models.loading import load_model

    runner = Runner(None, quiet=True)
    runner.add_model("mine", load_model("digits-mlp"))
    runner.add_data("few", load_data("digits").head(4))
    (outcome,) = runner.run([RunSpec(model="mine", data="few", probe="sleepy", params={"sleep": 0.0}, samples=None)])
    assert outcome.result.status == "ok" and len(outcome.result.records) == 4 and outcome.data_name == "digits"


def test_metrics_that_cannot_be_saved_fail_that_run_only(tmp_path: Path) -> None:
    import torch

    from robustcheck import registry
    from robustcheck.api import Probe, ProbeResult

    @registry.register("probe", "tensor-metrics")
    class TensorMetrics(Probe):
        """Returns a torch tensor in its metrics."""

        score_doc = "0.5 always."

        def run(self, model: Any, data: Any, context: Any) -> ProbeResult:
            return ProbeResult(0.5, {"mean": torch.tensor(0.5)})

    try:
        runner = Runner(tmp_path / "o", quiet=True)
        outcomes = runner.run([_spec("tensor-metrics"), _spec("fgsm", params={"epsilons": [0.0, 0.03]})])
        assert [o.result.status for o in outcomes] == ["error", "ok"]
        assert "not JSON serialisable" in outcomes[0].result.message
        runner.write_outputs(outcomes, seed=0)
        assert len(json.loads((tmp_path / "o" / "results.json").read_text())["runs"]) == 2
    finally:
        registry.unregister("probe", "tensor-metrics")


def test_model_options_are_part_of_the_run_id() -> None:
    from robustcheck.run.runner import RunSpec

    bare = RunSpec(model="m", probe="fgsm")
    assert bare.run_id == RunSpec(model="m", probe="fgsm", model_options={}).run_id
    with_bounds = RunSpec(model="m", probe="fgsm", model_options={"bounds": [0, 1]})
    assert with_bounds.run_id != bare.run_id
    assert with_bounds.run_id != RunSpec(model="m", probe="fgsm", model_options={"bounds": [0, 2]}).run_id


# --------------------------------------------------------------------------------------------- shards


def test_shards_merge_into_the_whole_run(helpers: Any, tmp_path: Path) -> None:
    whole = _spec("sleepy", params={"sleep": 0.0}, samples=10)
    sharded = _spec("sleepy", params={"sleep": 0.0}, samples=10, shards=3)
    assert sharded.run_id != whole.run_id and [u.shard for u in sharded.shard_units()] == [0, 1, 2]
    assert "[shard 2/3]" in sharded.shard_units()[1].label
    runner = Runner(tmp_path / "o", quiet=True)
    runner.check([sharded])
    reference, merged = runner.run([whole, sharded])
    assert [len(runner.data_for(u)) for u in sharded.shard_units()] == [3, 4, 3]
    assert merged.result.score == reference.result.score
    pd.testing.assert_frame_equal(
        merged.result.records.drop(columns="noise"), reference.result.records.drop(columns="noise")
    )  # noise: each shard seeds torch with the run's seed, so its draws restart per shard
    stored = stored_runs(tmp_path / "o" / "runs.sqlite")
    assert {u.run_id for u in sharded.shard_units()} | {sharded.run_id, whole.run_id} == set(stored)


def test_resume_runs_only_missing_shards(helpers: Any, tmp_path: Path) -> None:
    sharded = _spec("sleepy", params={"sleep": 0.0}, samples=10, shards=2)
    first_shard = sharded.shard_units()[0]
    Runner(tmp_path / "o", quiet=True).run([first_shard])
    before = stored_runs(tmp_path / "o" / "runs.sqlite")
    outcome = Runner(tmp_path / "o", resume=True, quiet=True).run([sharded])[0]
    after = stored_runs(tmp_path / "o" / "runs.sqlite")
    assert after[first_shard.run_id]["finished"] == before[first_shard.run_id]["finished"]
    assert len(outcome.result.records) == 10 and list(outcome.result.records["index"]) == list(range(10))


def test_shard_errors(helpers: Any, tmp_path: Path) -> None:
    runner = Runner(None, quiet=True)
    with pytest.raises(UsageError, match="cannot split its samples into shards"):
        runner.check([_spec("explode", shards=2)])
    with pytest.raises(UsageError, match="9 shards for 8 samples"):
        runner.check([_spec("sleepy", shards=9)])
    with pytest.raises(UsageError, match="shards must be a positive integer"):
        _spec("sleepy", shards=0)
    failed = runner.run([_spec("explode", shards=2)])[0]  # explode is not shardable: run() trusts check()
    assert failed.result.status == "error" and "2 of 2 shards failed" in failed.result.message


def test_sharded_attack_equals_the_whole_run(tmp_path: Path) -> None:
    """FGSM is deterministic per sample: three shards merge into exactly the unsharded result."""
    params = {"epsilons": [0.0, 0.02, 0.05, 0.1], "examples": 2}
    whole = _spec("fgsm", params=params, samples=30, batch_size=8)
    sharded = _spec("fgsm", params=params, samples=30, batch_size=8, shards=3)
    runner = Runner(None, quiet=True)
    runner.check([sharded])
    reference, merged = runner.run([whole, sharded])
    assert merged.result.metrics == reference.result.metrics and merged.result.score == reference.result.score
    pd.testing.assert_frame_equal(merged.result.records, reference.result.records)
    assert len(merged.result.artifacts) == 2


# --------------------------------------------------------------------------------------------- samples


def _sorted_data(classes: int = 10, per_class: int = 50, shape: tuple[int, ...] = (3, 8, 8)) -> Any:
    """``classes`` x ``per_class`` random images sorted by class, as shared npz files and image folders are."""
    import torch

    from robustcheck.data.dataset import ImageDataset

    x = torch.rand(classes * per_class, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.arange(classes).repeat_interleave(per_class)
    return ImageDataset(x, y, [f"class-{k}" for k in range(classes)], name="sorted")


def _sorted_runner(tmp_path: Path | None = None, **kwargs: Any) -> Runner:
    """A runner with the class-sorted data as ``sorted`` and a 10-class model without input shape or labels."""
    from torch import nn

    from robustcheck.models.classifier import ImageClassifier

    runner = Runner(tmp_path, quiet=True, **kwargs)
    runner.add_data("sorted", _sorted_data())
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    runner.add_model("net", ImageClassifier(nn.Sequential(*net).eval(), name="net"))
    return runner


def _sorted_spec(**changes: Any) -> RunSpec:
    return RunSpec(**{"model": "net", "data": "sorted", "probe": "sleepy", "params": {"sleep": 0.0}, "samples": 100, **changes})


def test_runs_draw_class_stratified_samples_and_record_their_indices(helpers: Any) -> None:
    runner = _sorted_runner()
    outcome = runner.run([_sorted_spec()])[0]
    assert outcome.result.records["label"].value_counts().to_dict() == dict.fromkeys(range(10), 10)
    indices = outcome.to_json()["indices"]
    assert len(indices) == 100 and len(set(indices)) == 100 and all(isinstance(i, int) for i in indices)
    table = records_table([outcome])
    assert {"index", "dataset_index"} <= set(table.columns)
    assert table["dataset_index"].tolist() == [indices[i] for i in table["index"]]
    assert (table["label"] == table["dataset_index"] // 50).all()  # the label of the sample at that dataset index
    # same seed, same samples; another seed, other samples
    assert runner.run([_sorted_spec()])[0].indices == indices
    assert runner.run([_sorted_spec(seed=1)])[0].indices != indices
    everything = runner.run([_sorted_spec(samples=None)])[0]
    assert sorted(everything.indices) == list(range(500)) and len(everything.result.records) == 500


def test_shards_split_the_drawn_samples(helpers: Any) -> None:
    runner = _sorted_runner()
    whole, sharded = runner.run([_sorted_spec(samples=30), _sorted_spec(samples=30, shards=3)])
    assert sharded.indices == whole.indices
    assert [runner.data_for(u).dataset_indices for u in _sorted_spec(samples=30, shards=3).shard_units()] == [
        whole.indices[:10], whole.indices[10:20], whole.indices[20:]
    ]
    for unit in _sorted_spec(samples=30, shards=3).shard_units():  # each shard of an interleaved draw is balanced
        assert runner.data_for(unit).y.bincount(minlength=10).tolist() == [1] * 10
    pd.testing.assert_frame_equal(records_table([sharded]).drop(columns=["run_id", "noise"]), records_table([whole]).drop(columns=["run_id", "noise"]))


def test_resume_keeps_the_dataset_indices(helpers: Any, tmp_path: Path) -> None:
    first = _sorted_runner(tmp_path / "o").run([_sorted_spec()])[0]
    resumed = _sorted_runner(tmp_path / "o", resume=True).run([_sorted_spec()])[0]
    assert resumed.resumed and resumed.indices == first.indices and resumed.labels == first.labels
    assert resumed.to_json() | {"seconds": 0} == first.to_json() | {"seconds": 0}
    pd.testing.assert_frame_equal(records_table([resumed]), records_table([first]))


def test_model_takes_input_shape_and_labels_from_its_data() -> None:
    from robustcheck import registry
    from robustcheck.api import Probe, ProbeResult

    @registry.register("probe", "sees-model")
    class SeesModel(Probe):
        """Reports what the model declares."""

        score_doc = "1 always."

        def run(self, model: Any, data: Any, context: Any) -> ProbeResult:
            return ProbeResult(1.0, {"input_shape": list(model.input_shape or []), "labels": model.labels})

    try:
        runner = _sorted_runner()
        assert runner.model("net").input_shape is None and runner.model("net").labels is None
        outcome = runner.run([_sorted_spec(probe="sees-model", params={})])[0]
        assert outcome.result.status == "ok", outcome.result.message
        assert outcome.result.metrics["input_shape"] == [3, 8, 8]
        assert outcome.result.metrics["labels"] == [f"class-{k}" for k in range(10)]
        assert outcome.to_json()["labels"] == [f"class-{k}" for k in range(10)]
        assert runner.model("net").input_shape is None  # the model itself is left as it was
        # names that do not fit the model's outputs are not taken; a declared shape is kept
        from torch import nn

        from robustcheck.models.classifier import ImageClassifier

        five = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval(), input_shape=(3, 8, 8), name="five")
        runner.add_model("five", five)
        runner.add_data("sorted5", _sorted_data(classes=5, per_class=4))
        other = runner.run([_sorted_spec(model="five", probe="sees-model", params={}, data="sorted5")])[0]
        assert other.result.metrics["labels"] == [f"class-{k}" for k in range(5)]
        runner.add_data("sorted5", _sorted_data(classes=4, per_class=4))  # 4 names for 5 outputs: no labels
        assert runner.run([_sorted_spec(model="five", probe="sees-model", params={}, data="sorted5")])[0].result.metrics["labels"] is None
    finally:
        registry.unregister("probe", "sees-model")


def test_records_show_label_names(helpers: Any) -> None:
    outcome = _sorted_runner().run([_sorted_spec(samples=20)])[0]
    table = records_table([outcome])
    assert (table["label_name"] == "class-" + table["label"].astype(str)).all()
