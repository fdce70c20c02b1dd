"""Genomes for the fooling probe: batched populations and the direct (one gene per pixel) encoding.

A population is a :class:`TensorBatch`: a dataclass whose fields are tensors sharing a leading
population dimension ``P``, so selection (``take``) and archive replacement (``replace``) work the
same for every encoding. An *encoding* makes random populations, offspring of parents and renders
genomes to images ``(P, C, H, W)`` within the model's bounds (see :class:`Encoding`).

Direct encoding (Nguyen, Yosinski & Clune 2015, after their Sferes code): genes are the pixel values,
initialised uniformly within the bounds; each gene mutates with probability ``rate`` by bounded
polynomial mutation (Deb; distribution index 15); parents are optionally paired by simulated binary
crossover (SBX, index 10, each gene crossed with probability 0.5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, Self

import torch


@dataclass
class TensorBatch:
    """Base class of populations: every field is a tensor whose first dimension is the population."""

    def __len__(self) -> int:
        return len(getattr(self, dataclasses.fields(self)[0].name))

    def take(self, index: torch.Tensor) -> Self:
        """The genomes at ``index`` (``(n,)`` int64, repeats allowed), copied."""
        return type(self)(**{f.name: getattr(self, f.name)[index].clone() for f in dataclasses.fields(self)})

    def replace(self, rows: torch.Tensor, source: TensorBatch, source_rows: torch.Tensor) -> Self:
        """A copy where genome ``rows[i]`` is replaced by ``source``'s genome ``source_rows[i]``."""
        out = {}
        for f in dataclasses.fields(self):
            values = getattr(self, f.name).clone()
            values[rows] = getattr(source, f.name)[source_rows]
            out[f.name] = values
        return type(self)(**out)


class Encoding(Protocol):
    """What the MAP-Elites loop needs from a genome encoding."""

    def random(self, n: int, rng: torch.Generator) -> TensorBatch:
        """``n`` random genomes."""
        ...

    def offspring(self, parents: TensorBatch, rng: torch.Generator) -> TensorBatch:
        """One child per parent (crossover of consecutive pairs where supported, then mutation)."""
        ...

    def render(self, population: TensorBatch) -> torch.Tensor:
        """Images ``(P, C, H, W)`` float32 within the encoding's bounds."""
        ...


def sample_positions(count: int, rate: float, rng: torch.Generator) -> torch.Tensor:
    """Sorted int64 positions in ``[0, count)``, each included independently with probability ``rate``.

    Draws the gaps of the Bernoulli process (geometric on 1, 2, ...) instead of one uniform number
    per position: about ``rate * count`` draws, which is what makes mutating 10% of a population's
    genes cheap next to the forward pass.
    """
    if count <= 0 or rate <= 0:
        return torch.empty(0, dtype=torch.int64)
    if rate >= 1:
        return torch.arange(count)
    parts, last = [], -1.0  # positions are float64 integers until the end (exact far beyond any count)
    while last < count:
        expected = int((count - last) * rate * 1.1) + 16
        positions = last + torch.empty(expected, dtype=torch.float64).geometric_(rate, generator=rng).cumsum(
            0
        )
        parts.append(positions)
        last = float(positions[-1])
    positions = torch.cat(parts)
    return positions[positions < count].long()


def polynomial_mutation(
    genes: torch.Tensor, rate: float, eta: float, low: float, high: float, rng: torch.Generator
) -> torch.Tensor:
    """Bounded polynomial mutation (Deb & Goyal 1996, as in NSGA-II): a mutated copy of ``genes``.

    Each value in ``genes`` (any shape, within ``[low, high]``) mutates independently with probability
    ``rate``; the perturbation follows the polynomial distribution with index ``eta`` (larger = smaller
    steps), shaped by the distances to both bounds so the result stays in ``[low, high]`` (it is also
    clipped against rounding).
    """
    span = high - low
    out = genes.clone(memory_format=torch.contiguous_format)  # flat view below needs contiguous memory
    flat = out.view(-1)
    where = sample_positions(flat.numel(), rate, rng)
    chosen = flat[where]  # only the mutating genes pay for the (costly) powers below
    u = torch.rand(chosen.shape, generator=rng, dtype=chosen.dtype)
    below = (chosen - low) / span  # delta1: distance to the lower bound, in spans
    above = (high - chosen) / span  # delta2
    power = 1.0 / (eta + 1.0)
    left = 2.0 * u + (1.0 - 2.0 * u) * (1.0 - below) ** (eta + 1.0)
    right = 2.0 * (1.0 - u) + 2.0 * (u - 0.5) * (1.0 - above) ** (eta + 1.0)
    delta = torch.where(u < 0.5, left.clamp_min(0.0) ** power - 1.0, 1.0 - right.clamp_min(0.0) ** power)
    flat[where] = (chosen + delta * span).clamp(low, high)
    return out


def sbx_crossover(
    first: torch.Tensor, second: torch.Tensor, eta: float, low: float, high: float, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulated binary crossover (Deb & Agrawal 1995) of parent pairs ``(n, ...)`` each.

    Each gene is crossed with probability 0.5 (others are copied); the spread factor uses the
    unbounded SBX distribution with index ``eta`` and the children are clipped to ``[low, high]``.
    The two children are symmetric around the parents' mean.
    """
    cross = torch.rand(first.shape, generator=rng) < 0.5
    a, b = first[cross], second[cross]  # only the crossed genes pay for the powers below
    u = torch.rand(a.shape, generator=rng, dtype=a.dtype)
    power = 1.0 / (eta + 1.0)
    beta = torch.where(u <= 0.5, (2.0 * u) ** power, (1.0 / (2.0 * (1.0 - u)).clamp_min(1e-12)) ** power)
    mean, half = 0.5 * (a + b), 0.5 * beta * (b - a)
    child_a, child_b = first.clone(), second.clone()
    child_a[cross] = (mean - half).clamp(low, high)
    child_b[cross] = (mean + half).clamp(low, high)
    return child_a, child_b


@dataclass
class DirectPopulation(TensorBatch):
    """Direct-encoding genomes: ``genes`` ``(P, C, H, W)`` float32 pixel values within the bounds."""

    genes: torch.Tensor


@dataclass(frozen=True)
class DirectEncoding:
    """One gene per pixel value (the image is the genome).

    Attributes:
        shape: image shape ``(C, H, W)``.
        bounds: ``(low, high)`` pixel range (the model's bounds).
        mutation_rate: per-gene mutation probability (paper: 0.1).
        mutation_eta: polynomial-mutation distribution index (paper: 15).
        crossover_rate: probability that a parent pair is crossed by SBX (code: 0.5; 0 disables).
        crossover_eta: SBX distribution index (code: 10).
    """

    shape: tuple[int, int, int]
    bounds: tuple[float, float] = (0.0, 1.0)
    mutation_rate: float = 0.1
    mutation_eta: float = 15.0
    crossover_rate: float = 0.5
    crossover_eta: float = 10.0

    def random(self, n: int, rng: torch.Generator) -> DirectPopulation:
        low, high = self.bounds
        return DirectPopulation(low + (high - low) * torch.rand((n, *self.shape), generator=rng))

    def offspring(self, parents: TensorBatch, rng: torch.Generator) -> DirectPopulation:
        """Cross consecutive parent pairs (0-1, 2-3, ...) with probability ``crossover_rate``, then mutate all."""
        if not isinstance(parents, DirectPopulation):
            raise TypeError(f"expected a DirectPopulation, got {type(parents).__name__}")
        low, high = self.bounds
        genes = parents.genes.clone()
        pairs = len(genes) // 2
        if self.crossover_rate > 0 and pairs:
            crossed = (torch.rand(pairs, generator=rng) < self.crossover_rate).nonzero().flatten()
            first, second = 2 * crossed, 2 * crossed + 1  # rows of the crossed pairs (0-1, 2-3, ...)
            genes[first], genes[second] = sbx_crossover(
                genes[first], genes[second], self.crossover_eta, low, high, rng
            )
        return DirectPopulation(
            polynomial_mutation(genes, self.mutation_rate, self.mutation_eta, low, high, rng)
        )

    def render(self, population: TensorBatch) -> torch.Tensor:
        if not isinstance(population, DirectPopulation):
            raise TypeError(f"expected a DirectPopulation, got {type(population).__name__}")
        return population.genes
