"""Genomes for the fooling probe: batched populations and the direct (one gene per pixel) encoding.

A population is a :class:`TensorBatch`: a dataclass whose fields are tensors sharing a leading
population dimension ``P``, so selection (``take``) and archive replacement (``replace``) work the
same for every encoding. An *encoding* makes random populations, offspring of parents and renders
genomes to images ``(P, C, H, W)`` within the model's bounds (see :class:`Encoding`).

Direct encoding (Nguyen, Yosinski & Clune 2015): genes are the pixel values, initialised uniformly
within the bounds; each gene mutates with probability 0.1 by polynomial mutation with distribution
index 15, clipped to the bounds (as in the authors' Sferes code); pairs of parents are optionally
crossed first by simulated binary crossover (SBX, index 10, each gene of a crossed pair crossed with
probability 0.5), which their code has and the paper does not mention.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

import torch


@dataclass
class TensorBatch:
    """Base class of populations: every field is a tensor whose first dimension is the population."""

    def __len__(self) -> int:
        return len(getattr(self, dataclasses.fields(self)[0].name))

    def take(self, index: torch.Tensor) -> Self:
        """The genomes at ``index`` (``(n,)`` int64, repeats allowed), copied."""
        return type(self)(**{f.name: getattr(self, f.name)[index].clone() for f in dataclasses.fields(self)})

    def replace(self, rows: torch.Tensor, source: Self, source_rows: torch.Tensor) -> Self:
        """A copy where genome ``rows[i]`` is replaced by ``source``'s genome ``source_rows[i]``."""
        out = {}
        for f in dataclasses.fields(self):
            values = getattr(self, f.name).clone()
            values[rows] = getattr(source, f.name)[source_rows]
            out[f.name] = values
        return type(self)(**out)


#: the population type of an encoding
PopulationT = TypeVar("PopulationT", bound=TensorBatch)


class Encoding(Protocol[PopulationT]):
    """What the MAP-Elites loop needs from a genome encoding whose populations are ``PopulationT``."""

    def random(self, n: int, rng: torch.Generator) -> PopulationT:
        """``n`` random genomes."""
        ...

    def offspring(self, parents: PopulationT, rng: torch.Generator) -> PopulationT:
        """One child per parent (crossover of consecutive pairs where supported, then mutation)."""
        ...

    def render(self, population: PopulationT) -> torch.Tensor:
        """Images ``(P, C, H, W)`` float32 within the encoding's bounds."""
        ...


def polynomial_mutation(
    genes: torch.Tensor, rate: float, eta: float, low: float, high: float, rng: torch.Generator
) -> torch.Tensor:
    """Polynomial mutation (Deb & Goyal 1996) as the authors' Sferes code applies it: a mutated copy.

    Each value of ``genes`` (any shape, within ``[low, high]``) mutates independently with probability
    ``rate``: it moves by ``delta * (high - low)``, ``delta`` in ``(-1, 1)`` drawn from the polynomial
    distribution with index ``eta`` (larger = smaller steps; the median ``|delta|`` is
    ``1 - 2^(-1 / (eta + 1))``, 0.042 at ``eta`` 15), and is then clipped to ``[low, high]``.
    """
    mutate = torch.rand(genes.shape, generator=rng) < rate
    u = torch.rand(int(mutate.sum()), generator=rng, dtype=genes.dtype)
    power = 1.0 / (eta + 1.0)
    delta = torch.where(u < 0.5, (2.0 * u) ** power - 1.0, 1.0 - (2.0 * (1.0 - u)) ** power)
    out = genes.clone()
    out[mutate] = (genes[mutate] + delta * (high - low)).clamp(low, high)
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
        """``n`` images of independent uniform pixel values within the bounds."""
        low, high = self.bounds
        return DirectPopulation(low + (high - low) * torch.rand((n, *self.shape), generator=rng))

    def offspring(self, parents: DirectPopulation, rng: torch.Generator) -> DirectPopulation:
        """Cross consecutive parent pairs (0-1, 2-3, ...) with probability ``crossover_rate``, then mutate all."""
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

    def render(self, population: DirectPopulation) -> torch.Tensor:
        """The genes are the images: ``(P, C, H, W)`` within the bounds."""
        return population.genes
