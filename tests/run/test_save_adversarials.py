"""--save-adversarials (robustcheck.run.runner.save_adversarials): what is written is what fooled the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustcheck.data.loading import load_data
from robustcheck.models.loading import load_model
from robustcheck.run.runner import Runner, RunSpec

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("probe", ["fgsm", "pgd-linf:steps=5", "apgd-ce:epsilons=[0.1,0.2],steps=10"])
def test_saved_adversarials_fool_the_model_within_their_epsilon(probe: str, tmp_path: Path) -> None:
    spec = RunSpec(model="digits-mlp", probe=probe, samples=40, shards=2 if probe == "fgsm" else 1)
    outcome = Runner(tmp_path, save_adversarials=True, quiet=True).run([spec])[0]
    saved = np.load(tmp_path / "adversarials" / f"{spec.run_id}.npz")
    fooled = outcome.result.records.query("correct and min_epsilon == min_epsilon")
    assert len(saved["adversarial"]) == len(fooled) > 0
    assert str(saved["probe"]) == spec.probe.name
    model, data = load_model("digits-mlp"), load_data("digits")
    adversarial = torch.from_numpy(saved["adversarial"])
    predictions = model.predict(adversarial).argmax(1).numpy()
    np.testing.assert_array_equal(predictions, saved["adv_prediction"])
    assert (predictions != saved["label"]).all()
    clean = data.x[torch.from_numpy(saved["dataset_index"])]
    np.testing.assert_array_equal(data.y[torch.from_numpy(saved["dataset_index"])].numpy(), saved["label"])
    distance = (adversarial - clean).flatten(1).abs().amax(1).numpy()
    assert (distance <= saved["epsilon"] + 1e-6).all()


def test_nothing_is_written_unless_asked(tmp_path: Path) -> None:
    Runner(tmp_path, quiet=True).run([RunSpec(model="digits-mlp", probe="fgsm", samples=8)])
    assert not (tmp_path / "adversarials").exists()
