"""robustcheck.probes.fooling.probe: genome operators, the MAP-Elites archive, gradient ascent and the probe."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from robustcheck.api import Defense, RunContext, Table
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.loading import load_data
from robustcheck.errors import RequirementError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.plugins import create_probe
from robustcheck.probes.fooling.checks import adapt_images, nearest_distances, real_nearest_baseline
from robustcheck.probes.fooling.cppn import ACTIVATIONS, NUM_INPUTS, WEIGHT_RANGE, CppnEncoding, activate
from robustcheck.probes.fooling.genomes import (
    DirectEncoding,
    DirectPopulation,
    polynomial_mutation,
    sbx_crossover,
)
from robustcheck.probes.fooling.probe import GENERATORS, FoolingProbe
from robustcheck.probes.fooling.search import AscentSettings, EliteArchive, ascent_step, batched_evaluator

#: a small budget for end-to-end runs on digits-cnn (a few seconds on a busy 2-core machine)
SMALL = {"generations": 4, "population": 30}
TIMING_COLUMNS = ("seconds_to_threshold",)


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: a second thread only adds contention


@pytest.fixture(scope="module")
def digits_cnn() -> ImageClassifier:
    return load_model("digits-cnn")


@pytest.fixture(scope="module")
def digits_data() -> ImageDataset:
    return load_data("digits-rgb32").head(120)


@pytest.fixture(scope="module")
def small_run(digits_cnn: ImageClassifier, digits_data: ImageDataset) -> Any:
    return create_probe("fooling", **SMALL)(digits_cnn, digits_data, seed=3, batch_size=16)


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- direct-encoding operators


def test_polynomial_mutation_respects_bounds_and_rate() -> None:
    genes = torch.rand(400, 250, generator=rng(1)) * 3 - 1  # in [-1, 2]
    genes[0], genes[1] = -1.0, 2.0  # genes sitting on the bounds must stay inside too
    out = polynomial_mutation(genes, 0.1, 15.0, -1.0, 2.0, rng(2))
    assert out.shape == genes.shape and out.min() >= -1.0 and out.max() <= 2.0
    changed = (out != genes).double().mean().item()
    n = genes.numel()
    assert abs(changed - 0.1) < 5 * math.sqrt(0.1 * 0.9 / n)  # binomial, 5 sigma
    assert torch.equal(polynomial_mutation(genes, 0.0, 15.0, -1.0, 2.0, rng(2)), genes)


def test_polynomial_mutation_follows_the_polynomial_distribution() -> None:
    """Far from the bounds, |delta| (in spans) has CDF 1 - (1 - d)^(eta + 1), symmetric in sign."""
    eta = 15.0
    genes = torch.full((20000,), 0.5, dtype=torch.float64)
    delta = (polynomial_mutation(genes, 1.0, eta, 0.0, 1.0, rng(3)) - genes).numpy()
    size = np.abs(delta)
    result = stats.kstest(size, lambda d: 1.0 - (1.0 - np.clip(d, 0, 1)) ** (eta + 1.0))
    assert result.pvalue > 1e-3, result
    assert abs((delta > 0).mean() - 0.5) < 0.02
    # a larger distribution index gives smaller steps
    wide = polynomial_mutation(genes, 1.0, 2.0, 0.0, 1.0, rng(3)) - genes
    assert np.median(np.abs(wide.numpy())) > 3 * np.median(size)


def test_sbx_crossover_keeps_bounds_means_and_crosses_half_the_genes() -> None:
    first = torch.rand(200, 100, generator=rng(4)) * 0.6 + 0.2
    second = torch.rand(200, 100, generator=rng(5)) * 0.6 + 0.2
    child_a, child_b = sbx_crossover(first, second, 10.0, 0.0, 1.0, rng(6))
    assert child_a.min() >= 0 and child_b.max() <= 1
    crossed = child_a != first
    assert abs(crossed.double().mean().item() - 0.5) < 0.02
    inside = ((child_a > 0) & (child_a < 1) & (child_b > 0) & (child_b < 1)).flatten()
    # unclipped children are symmetric around the parents' mean
    assert torch.allclose(
        (child_a + child_b).flatten()[inside], (first + second).flatten()[inside], atol=1e-5
    )
    assert torch.equal(child_a[~crossed], first[~crossed]) and torch.equal(
        child_b[~crossed], second[~crossed]
    )


def test_direct_offspring_mutation_rate_and_crossover_switch() -> None:
    encoding = DirectEncoding((3, 8, 8), (0.0, 1.0), mutation_rate=0.2, crossover_rate=0.0)
    parents = encoding.random(500, rng(7))
    assert parents.genes.min() >= 0 and parents.genes.max() <= 1
    children = encoding.offspring(parents, rng(8))
    assert isinstance(children, DirectPopulation) and children.genes.shape == (500, 3, 8, 8)
    rate = (children.genes != parents.genes).double().mean().item()
    assert abs(rate - 0.2) < 5 * math.sqrt(0.2 * 0.8 / parents.genes.numel())
    crossing = DirectEncoding((3, 8, 8), (0.0, 1.0), mutation_rate=0.0, crossover_rate=1.0)
    crossed = crossing.offspring(parents, rng(8)).genes
    # pure crossover only mixes each pair: the sum of a pair's genes is kept (up to clipping at the bounds)
    pair_sum = crossed[0::2] + crossed[1::2]
    assert torch.allclose(pair_sum.mean(), (parents.genes[0::2] + parents.genes[1::2]).mean(), atol=1e-3)
    assert (crossed != parents.genes).double().mean() > 0.4


# --------------------------------------------------------------------------- CPPN encoding


def test_cppn_renders_deterministic_images_for_a_seed() -> None:
    encoding = CppnEncoding((3, 16, 12), (-1.0, 2.0))

    def evolve(seed: int) -> torch.Tensor:
        generator = rng(seed)
        population = encoding.random(20, generator)
        for _ in range(5):
            population = encoding.offspring(population, generator)
        return encoding.render(population)

    images = evolve(11)
    assert images.shape == (20, 3, 16, 12)
    assert images.min() >= -1.0 and images.max() <= 2.0
    assert torch.equal(images, evolve(11))
    assert not torch.equal(images, evolve(12))
    assert images.flatten(1).std(1).gt(0).any()  # not all flat


def test_cppn_inputs_activations_and_pixel_values() -> None:
    """Inputs x, y in [-1, 1], distance from the centre, a bias; pixel = |output| scaled into the bounds."""
    encoding = CppnEncoding((1, 3, 5), (-1.0, 1.0), max_hidden=2)
    x, y, d, bias = encoding.coordinates().view(NUM_INPUTS, 3, 5)
    assert x[0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0] and y[:, 0].tolist() == [-1.0, 0.0, 1.0]
    assert torch.allclose(d, (x * x + y * y).sqrt()) and bool((bias == 1).all())

    z = torch.linspace(-4, 4, 9).repeat(len(ACTIVATIONS), 1)
    out = activate(z, torch.arange(len(ACTIVATIONS)))
    expected = [z[0].sin(), 2 * torch.sigmoid(z[1]) - 1, torch.exp(-(z[2] ** 2)), z[3].clamp(-1, 1)]
    assert all(torch.allclose(o, e, atol=1e-6) for o, e in zip(out, expected, strict=True))

    # one genome, identity output fed by x alone (weight 1): pixel = |x|, mapped from [0, 1] to the bounds
    genome = encoding.random(1, rng())
    output = encoding.output_slots.start
    genome.enabled[:] = False
    genome.enabled[0, output, 0] = True
    genome.weight[0, output, 0] = 1.0
    genome.activation[0, output] = ACTIVATIONS.index("identity")
    image = encoding.render(genome)[0, 0]
    assert torch.allclose(image, -1.0 + 2.0 * x.abs())


def test_cppn_renders_large_populations_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    encoding = CppnEncoding((3, 10, 10))
    population = encoding.random(7, rng(19))
    whole = encoding.render(population)
    monkeypatch.setattr("robustcheck.probes.fooling.cppn.RENDER_VALUES", 3 * encoding.num_slots * 100)
    assert torch.equal(encoding.render(population), whole)  # chunks of 3 genomes give the same images


def test_cppn_starts_without_hidden_nodes_and_grows_valid_networks() -> None:
    encoding = CppnEncoding((1, 8, 8), max_hidden=6)
    generator = rng(13)
    population = encoding.random(64, generator)
    assert not population.active[:, encoding.hidden_slots].any()
    assert population.enabled[:, encoding.output_slots, :NUM_INPUTS].all()
    for _ in range(15):
        population = encoding.offspring(population, generator)
    allowed = encoding.allowed()
    assert not (population.enabled & ~allowed).any()  # only lower slot -> higher slot, never into inputs
    ends = population.active.unsqueeze(2) & population.active.unsqueeze(1)
    assert not (population.enabled & ~ends).any()  # connections only between existing nodes
    assert population.active[:, :NUM_INPUTS].all() and population.active[:, encoding.output_slots].all()
    assert population.active[:, encoding.hidden_slots].any()  # nodes were added
    assert population.weight.abs().max() <= WEIGHT_RANGE
    assert population.activation.min() >= 0 and population.activation.max() < len(ACTIVATIONS)


def test_cppn_mutation_rates() -> None:
    """Structural mutations happen at their per-child probabilities; weights mutate at the per-weight rate."""
    encoding = CppnEncoding(
        (1, 4, 4), max_hidden=4, add_connection=0.0, delete_connection=0.0, add_node=1.0, delete_node=0.0
    )
    parents = encoding.random(1000, rng(14))
    children = encoding.offspring(parents, rng(15))
    added = children.active[:, encoding.hidden_slots].sum(1)
    assert torch.equal(added, torch.ones(1000, dtype=torch.int64))  # exactly one node each (p = 1)
    only_delete = CppnEncoding(
        (1, 4, 4), max_hidden=4, add_connection=0.0, delete_connection=0.3, add_node=0.0, delete_node=0.0
    )
    kids = only_delete.offspring(parents, rng(16))
    lost = (parents.enabled.flatten(1).sum(1) - kids.enabled.flatten(1).sum(1)).double()
    assert set(lost.unique().tolist()) <= {0.0, 1.0}
    assert abs(lost.mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 1000)
    enabled = parents.enabled
    changed = (kids.weight != parents.weight)[enabled].double().mean().item()
    assert abs(changed - only_delete.weight_rate) < 0.02


# --------------------------------------------------------------------------- archive


def test_archive_lets_one_child_take_several_cells() -> None:
    archive = EliteArchive.empty(4)
    first = DirectPopulation(torch.arange(3.0).view(3, 1, 1, 1))
    probs = torch.tensor(
        [[0.5, 0.1, 0.1, 0.3], [0.2, 0.6, 0.1, 0.1], [0.1, 0.2, 0.2, 0.5]], dtype=torch.float64
    )
    replaced = archive.update(first, first.genes, probs)
    assert replaced.all()
    assert archive.fitness.tolist() == [0.5, 0.6, 0.2, 0.5]
    assert archive.genomes is not None
    assert archive.genomes.genes.flatten().tolist() == [0.0, 1.0, 2.0, 2.0]  # child 2 owns cells 2 and 3

    children = DirectPopulation(torch.tensor([10.0, 11.0]).view(2, 1, 1, 1))
    probs = torch.tensor([[0.7, 0.05, 0.05, 0.2], [0.05, 0.1, 0.9, 0.9]], dtype=torch.float64)
    replaced = archive.update(children, children.genes, probs)
    # child 11 beats cells 2 and 3; cell 1 keeps its elite
    assert replaced.tolist() == [True, False, True, True]
    assert archive.genomes.genes.flatten().tolist() == [10.0, 1.0, 11.0, 11.0]
    assert archive.images is not None and archive.images.flatten().tolist() == [10.0, 1.0, 11.0, 11.0]
    assert archive.fitness.tolist() == [0.7, 0.6, 0.9, 0.9]

    # ties do not replace (strictly better only), and among equal children the first wins
    tie = DirectPopulation(torch.tensor([20.0, 21.0]).view(2, 1, 1, 1))
    archive.update(tie, tie.genes, torch.tensor([[0.7, 0.8, 0, 0], [0.7, 0.8, 0, 0]], dtype=torch.float64))
    assert archive.genomes.genes.flatten().tolist() == [10.0, 20.0, 11.0, 11.0]


def test_archive_samples_parents_uniformly_over_cells() -> None:
    archive = EliteArchive.empty(4)
    genomes = DirectPopulation(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
    archive.update(
        genomes,
        genomes.genes,
        torch.tensor([[0.9, 0.9, 0.9, 0.1], [0.1, 0.1, 0.1, 0.9]], dtype=torch.float64),
    )
    parents = archive.sample_parents(4000, rng(17))
    share = (parents.genes.flatten() == 0.0).double().mean().item()
    assert abs(share - 0.75) < 0.03  # genome 0 owns three of four cells
    with pytest.raises(RuntimeError, match="empty"):
        EliteArchive.empty(3).sample_parents(2, rng())


# --------------------------------------------------------------------------- gradient ascent


def test_ascent_step_predicts_the_desired_progress() -> None:
    """lr = min(max_lr, desired / |g|^2) with desired = min(0.03, 0.1 (1 - p)): g . dx = desired."""
    images = torch.full((3, 1, 2, 2), 0.5)
    grad = torch.tensor([1.0, 2.0, 1e-8]).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    prob = torch.tensor([0.1, 0.9, 0.5], dtype=torch.float64)
    out = ascent_step(images, grad, prob, AscentSettings(max_lr=1e6), (0.0, 1.0))
    progress = ((out - images) * grad).flatten(1).sum(1)  # what a first-order model predicts
    assert progress[0].item() == pytest.approx(0.03, rel=1e-4)  # early: 0.03 < 0.1 * 0.9
    assert progress[1].item() == pytest.approx(0.01, rel=1e-4)  # late: 0.1 * (1 - 0.9)
    assert torch.allclose(
        out[2], torch.full((1, 2, 2), 0.5 + 1e6 * 1e-8)
    )  # tiny gradient: lr capped at max_lr


def test_ascent_step_decays_towards_the_centre_and_clips() -> None:
    images = torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1, 1)
    grad = torch.tensor([0.0, 0.0, 1e-3]).view(3, 1, 1, 1)
    prob = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    out = ascent_step(images, grad, prob, AscentSettings(max_lr=1e4, decay=0.5), (0.0, 1.0))
    # no gradient: only the decay, halfway to the centre 0.5; the third moves by 1e4 * 1e-3, clipped to 1
    assert torch.allclose(out.flatten(), torch.tensor([0.7, 0.3, 1.0]))


# --------------------------------------------------------------------------- recognisability helpers


def test_adapt_images_converts_shape_bounds_and_polarity() -> None:
    dark_on_light = torch.ones(2, 3, 32, 32)
    dark_on_light[:, :, 8:24, 12:20] = 0.0  # a dark bar on a light background
    out = adapt_images(dark_on_light, (0.0, 1.0), (1, 8, 8), (0.0, 1.0), normalize=True)
    assert out.shape == (2, 1, 8, 8)
    assert out[:, 0, 0, 0].max() < 0.1 and out[:, 0, 4, 4].min() > 0.9  # background dark, bar light
    plain = adapt_images(dark_on_light, (0.0, 1.0), (1, 8, 8), (-1.0, 1.0), normalize=False)
    assert plain[:, 0, 0, 0].min() > 0.9 and plain.min() >= -1.0
    same = torch.rand(2, 3, 4, 4, generator=rng())
    assert torch.allclose(adapt_images(same, (0.0, 1.0), (3, 4, 4), (0.0, 255.0)), same * 255.0)
    grey = adapt_images(
        torch.rand(1, 1, 8, 8, generator=rng()), (0.0, 1.0), (3, 16, 16), (0.0, 1.0), normalize=False
    )
    assert grey.shape == (1, 3, 16, 16) and torch.equal(grey[:, 0], grey[:, 2])


def test_nearest_distances_and_real_baseline() -> None:
    x = torch.rand(6, 1, 4, 4, generator=rng(18))
    data = ImageDataset(x, torch.tensor([0, 0, 0, 1, 1, 1]), ["a", "b"])
    elites = torch.stack([x[1], torch.zeros(1, 4, 4)])
    dist = nearest_distances(elites, torch.tensor([0, 1]), data, (0.0, 1.0))
    assert dist[0] == pytest.approx(0.0, abs=1e-6)
    expected = min(float(((x[i] - 0).pow(2).mean()).sqrt()) for i in (3, 4, 5))
    assert dist[1] == pytest.approx(expected, rel=1e-5)
    absent = nearest_distances(elites[:1], torch.tensor([2]), data, (0.0, 1.0))
    assert math.isnan(absent[0])
    baseline = real_nearest_baseline(data, (0.0, 1.0))
    assert baseline is not None and 0 < baseline < 1


# --------------------------------------------------------------------------- the probe


def test_probe_end_to_end_on_digits_cnn(small_run: Any, digits_cnn: ImageClassifier) -> None:
    result = small_run
    metrics = result.metrics
    assert result.status == "ok"
    for name in GENERATORS:
        curve = metrics[f"{name}/confidence_curve"]
        assert list(curve) == [str(g) for g in range(SMALL["generations"] + 1)]
        values = list(curve.values())
        assert values == sorted(values)  # elitist archive: the median best confidence never drops
        assert values[-1] > values[0]  # and each generator improves on its random start within 4 generations
        assert values[-1] == pytest.approx(metrics[f"{name}/median_best_confidence"])
        assert metrics[f"{name}/generations"] == SMALL["generations"]
        assert set(metrics[f"{name}/best_confidence"]) == {str(k) for k in range(10)}
        assert 0 <= metrics[f"{name}/classes_fooled_9999"] <= metrics[f"{name}/classes_fooled"] <= 1
        assert 0 <= metrics[f"{name}/transfer_confidence"] <= 1
        assert 0 < metrics[f"{name}/nearest_distance"] < 1
    assert metrics["classes_fooled"] == max(metrics[f"{g}/classes_fooled"] for g in GENERATORS)
    assert result.score == pytest.approx(1 - metrics["classes_fooled"])
    assert metrics["transfer_model"] == "digits-mlp"
    assert metrics["transfer_accuracy_on_data"] > 0.8  # the conversion keeps real digits recognisable to it
    assert 0 < metrics["nearest_distance_real_baseline"] < 1

    records = result.records
    assert len(records) == 3 * 10 and set(records["generator"]) == set(GENERATORS)
    assert records["fooled"].equals(records["best_confidence"] >= 0.99)
    for name in GENERATORS:
        reached = metrics[
            f"{name}/generations_to_threshold"
        ]  # class -> first generation at 0.99 (None: never)
        fooled = records.loc[records["generator"] == name, "fooled"].tolist()
        assert [reached[str(k)] is not None for k in range(10)] == fooled
        assert all(0 <= g <= SMALL["generations"] for g in reached.values() if g is not None)

    # the gallery holds the elites: re-scoring them reproduces the recorded confidences
    assert [a.title.split(":")[0] for a in result.artifacts] == list(GENERATORS)
    for artifact in result.artifacts:
        generator = artifact.title.split(":")[0]
        images = torch.from_numpy(np.stack(artifact.images))
        probs = digits_cnn.predict(images).double().softmax(1)
        recorded = (
            records[records["generator"] == generator].sort_values("class")["best_confidence"].to_numpy()
        )
        assert np.allclose(probs.diagonal().numpy(), recorded, atol=1e-4)
        assert artifact.captions[3] == f"3 ({recorded[3]:.4f})"

    table, per_class = result.tables
    assert isinstance(table, Table) and list(table.frame["generator"]) == list(GENERATORS)
    assert "digits-mlp" in table.note and "digits-rgb32" in table.note
    assert list(per_class.frame["class"]) == [str(k) for k in range(10)]
    direct = records[records["generator"] == "evolution-direct"]
    assert per_class.frame["evolution-direct confidence"].tolist() == direct["best_confidence"].tolist()
    assert per_class.to_json()["rows"]  # JSON-friendly cells (None where a class never reached the threshold)


def test_probe_evaluates_populations_in_batches_of_the_context_size(digits_cnn: ImageClassifier) -> None:
    seen: list[int] = []
    handle = digits_cnn.module.register_forward_hook(lambda _m, args, _out: seen.append(len(args[0])))
    try:
        probe = create_probe(
            "fooling", generator="evolution-direct", generations=2, population=40, transfer_model="none"
        )
        probe(digits_cnn, load_data("digits-rgb32").head(10), seed=0, batch_size=16)
    finally:
        handle.remove()
    # three generations of 40 children: each scored in forward passes of 16, 16 and 8 images
    assert seen[:9] == [16, 16, 8] * 3


def test_probe_is_deterministic_for_a_seed(
    small_run: Any, digits_cnn: ImageClassifier, digits_data: ImageDataset
) -> None:
    again = create_probe("fooling", **SMALL)(digits_cnn, digits_data, seed=3, batch_size=16)
    other = create_probe("fooling", **SMALL)(digits_cnn, digits_data, seed=4, batch_size=16)

    def stable(result: Any) -> pd.DataFrame:
        return result.records.drop(columns=list(TIMING_COLUMNS))

    pd.testing.assert_frame_equal(stable(small_run), stable(again))
    for a, b in zip(small_run.artifacts, again.artifacts, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert not stable(small_run)["best_confidence"].equals(stable(other)["best_confidence"])
    # each generator has its own seeded stream: running it alone gives what it gave within "all"
    alone = create_probe("fooling", generator="evolution-cppn", **SMALL)(
        digits_cnn, digits_data, seed=3, batch_size=16
    )
    cppn_rows = stable(small_run)[small_run.records["generator"] == "evolution-cppn"].reset_index(drop=True)
    pd.testing.assert_frame_equal(stable(alone), cppn_rows)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"threshold": 0.0}, "probe 'fooling': parameter 'threshold' must be a number > 0 and < 1, got 0.0"),
        ({"threshold": 1.0}, "parameter 'threshold' must be a number > 0 and < 1, got 1.0"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.2}, "threshold"),
        ({"population": 0}, "parameter 'population' must be an integer >= 2, got 0"),
        ({"generations": -1}, "generations"),
        ({"generator": "evolution"}, "parameter 'generator' must be one of"),
        ({"time_budget": -1}, "time_budget"),
        ({"time_budget": "soon"}, "time_budget"),
        ({"mutation_rate": 1.5}, "mutation_rate"),
    ],
)
def test_bad_parameters_fail_at_creation(params: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        create_probe("fooling", **params)


def test_bad_transfer_model_fails_before_the_search(
    digits_cnn: ImageClassifier, digits_data: ImageDataset
) -> None:
    probe = create_probe("fooling", generations=10_000, transfer_model="no-such-model")
    with pytest.raises(UsageError, match="no-such-model"):
        probe(digits_cnn, digits_data)
    three_classes = ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), input_shape=(1, 8, 8), labels=["a", "b", "c"]
    )
    with pytest.raises(UsageError, match="has 10 classes"):
        create_probe("fooling", generations=10_000, transfer_model="digits-mlp")(
            three_classes, load_data("digits").head(5)
        )


def test_generator_time_budget_stops_each_search(
    digits_cnn: ImageClassifier, digits_data: ImageDataset
) -> None:
    probe = create_probe("fooling", generations=50, population=20, time_budget=1e-6, transfer_model="none")
    result = probe(digits_cnn, digits_data, seed=0)
    assert result.status == "ok"
    for name in GENERATORS:
        assert result.metrics[f"{name}/stopped"] == "time_budget"
        assert result.metrics[f"{name}/generations"] == 0  # only the starting population was scored
    assert (
        result.metrics["transfer_model"] is None
        and result.metrics[f"{GENERATORS[0]}/transfer_confidence"] is None
    )


def test_run_deadline_returns_partial_results_as_timeout(
    digits_cnn: ImageClassifier, digits_data: ImageDataset
) -> None:
    probe = FoolingProbe(generations=50, population=20, transfer_model="none")
    result = probe.run(digits_cnn, digits_data, RunContext(seed=0, deadline=0.0))
    assert result.status == "timeout" and "evolution-cppn" in result.message
    assert list(result.records["generator"].unique()) == ["evolution-direct"]
    assert result.metrics["evolution-direct/stopped"] == "deadline"


class _NoGradients(Defense):
    name = "no-gradients"
    gradients = "none"

    def transform(self, model: ImageClassifier) -> nn.Module:
        return nn.Identity()


def test_gradient_ascent_needs_gradients(digits_cnn: ImageClassifier, digits_data: ImageDataset) -> None:
    defended = _NoGradients().apply(digits_cnn)
    with pytest.raises(RequirementError, match="gradient-ascent"):
        create_probe("fooling", generator="gradient-ascent")(defended, digits_data)
    result = create_probe("fooling", generations=1, population=10)(defended, digits_data, seed=0)
    assert set(result.records["generator"]) == {"evolution-direct", "evolution-cppn"}
    assert result.metrics["gradient-ascent/skipped"] == "model offers no gradients"
    assert (
        result.metrics["transfer_model"] == "digits-mlp"
    )  # the defended digits-cnn still pairs with digits-mlp


def test_captioners_are_refused() -> None:
    class Captioner(ImageClassifier):
        is_captioner = True

    captioner = Captioner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), input_shape=(1, 8, 8), name="cap")
    with pytest.raises(RequirementError, match="captioner"):
        create_probe("fooling").check_requirements(captioner)


class _Tiny(nn.Module):
    """A 3-class model on 1x6x6 inputs in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 5 * self.net(x)


def test_probe_works_on_any_classifier_shape_and_bounds() -> None:
    model = ImageClassifier(_Tiny().eval(), bounds=(-1.0, 1.0), input_shape=(1, 6, 6), name="tiny")
    data = ImageDataset(
        torch.rand(9, 1, 6, 6) * 2 - 1, torch.arange(9) % 3, bounds=(-1.0, 1.0), name="tiny-data"
    )
    result = create_probe("fooling", generations=3, population=12)(model, data, seed=1)
    assert result.metrics["num_classes"] == 3 and len(result.records) == 9
    assert result.metrics["transfer_model"] is None  # no built-in second model for it
    for artifact in result.artifacts:
        assert len(artifact.images) == 3 and all(img.shape == (1, 6, 6) for img in artifact.images)
        assert all(img.min() >= 0 and img.max() <= 1 for img in artifact.images)  # shown in [0, 1]
    evaluate = batched_evaluator(model, 4)
    assert evaluate(torch.zeros(5, 1, 6, 6)).shape == (5, 3)


@pytest.mark.slow
def test_fooling_a_cifar10_model(cifar_model: tuple[ImageClassifier, ImageDataset]) -> None:
    """The probe on a CIFAR-10-sized RGB model: both evolutionary encodings find confident images."""
    model, data = cifar_model
    probe = create_probe("fooling", generator="evolution-cppn", generations=40, population=100)
    result = probe(model, data, seed=0, batch_size=100)
    metrics = result.metrics
    assert result.status == "ok" and len(result.records) == 10
    curve = list(metrics["evolution-cppn/confidence_curve"].values())
    assert curve == sorted(curve) and curve[-1] > curve[0]
    assert metrics["evolution-cppn/median_best_confidence"] > 0.9
    assert metrics["transfer_model"] is None and 0 < metrics["evolution-cppn/nearest_distance"] < 1
    direct = create_probe("fooling", generator="evolution-direct", generations=40, population=100)(
        model, data, seed=0, batch_size=100
    )
    direct_curve = list(direct.metrics["evolution-direct/confidence_curve"].values())
    assert direct_curve[-1] > direct_curve[0]
