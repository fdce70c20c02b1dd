"""CPPN (compositional pattern-producing network) genomes for the fooling probe, batched.

A CPPN maps each pixel's coordinates to its intensity; evolving the network instead of the pixels
gives the regular, patterned images of Nguyen, Yosinski & Clune (2015). Their Sferes code: inputs
``x``, ``y`` (we normalise both to ``[-1, 1]``; the released code feeds raw indices), the distance
from the centre ``d = sqrt(x^2 + y^2)`` and a bias of 1; node activations sine, sigmoid rescaled to
``[-1, 1]``, gaussian ``exp(-z^2)`` and identity clamped to ``[-1, 1]``; weights in ``[-10, 10]``; a
genome starts without hidden nodes; each child is a mutated copy (no crossover): add a connection
(p 0.5), delete one (0.3), add a node (0.5), delete one (0.2), each weight mutates with p 0.1 and
each node's activation is redrawn with p 0.1. A pixel is ``|output|``, scaled into the bounds, one
output node per image channel.

Batched layout: every genome has the same node slots, ordered ``[inputs | hidden | outputs]``; a
connection may only go from a lower slot to a higher one, so a genome is a DAG evaluated slot by
slot for the whole population at once. Fields (``P`` genomes, ``N`` slots):

* ``weight`` ``(P, N, N)``: ``weight[p, k, j]`` is the weight of connection ``j -> k``;
* ``enabled`` ``(P, N, N)`` bool: which connections exist;
* ``active`` ``(P, N)`` bool: which slots hold a node (inputs and outputs always);
* ``activation`` ``(P, N)`` int64: index into :data:`ACTIVATIONS`.

"Add node" turns on a free hidden slot ``i`` and wires it from a random existing node below ``i`` to
a random existing node above it (fresh random weights) - the slot order stands in for NEAT's
connection split, which needs an insertion point between the two ends anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustcheck.probes.fooling.genomes import TensorBatch, polynomial_mutation

#: names of the node activations, by index
ACTIVATIONS = ("sine", "sigmoid", "gaussian", "identity")  # the clamped identity
WEIGHT_RANGE = 10.0
NUM_INPUTS = 4  # x, y, d, bias
#: node values (floats) rendered at once: 2^26 floats = 256 MiB
RENDER_VALUES = 2**26


def _sine(z: torch.Tensor) -> torch.Tensor:
    return torch.sin(z)


def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    return torch.tanh(0.5 * z)  # = 2 sigmoid(z) - 1: the sigmoid rescaled to [-1, 1]


def _gaussian(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-z * z)


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z.clamp(-1.0, 1.0)


#: the node activation functions, by index (see :data:`ACTIVATIONS`)
ACTIVATION_FUNCTIONS = (_sine, _sigmoid, _gaussian, _identity)


def activate(z: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Apply activation ``which[p]`` (index into :data:`ACTIVATIONS`) to row ``z[p]``; ``z`` is ``(P, M)``."""
    out = torch.empty_like(z)
    for index, function in enumerate(ACTIVATION_FUNCTIONS):
        rows = (which == index).nonzero().flatten()
        if len(rows):
            out[rows] = function(z[rows])
    return out


def choose(mask: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one True entry uniformly per row of ``mask`` ``(P, M)``: ``(index (P,), found (P,) bool)``."""
    scores = torch.rand(mask.shape, generator=rng).masked_fill(~mask, -1.0)
    return scores.argmax(1), mask.any(1)


@dataclass
class CppnPopulation(TensorBatch):
    """CPPN genomes (see the module docstring for the fields' shapes)."""

    weight: torch.Tensor
    enabled: torch.Tensor
    active: torch.Tensor
    activation: torch.Tensor


@dataclass(frozen=True)
class CppnEncoding:
    """Indirect encoding: a CPPN per genome, rendered at ``shape`` ``(C, H, W)`` within ``bounds``.

    Attributes:
        max_hidden: hidden node slots per genome (the paper's networks stay small).
        weight_rate: per-connection weight mutation probability (polynomial, index ``weight_eta``).
        activation_rate: per-node probability of redrawing its activation.
        add_connection, delete_connection, add_node, delete_node: per-child probabilities.
    """

    shape: tuple[int, int, int]
    bounds: tuple[float, float] = (0.0, 1.0)
    max_hidden: int = 16
    weight_rate: float = 0.1
    weight_eta: float = 15.0
    activation_rate: float = 0.1
    add_connection: float = 0.5
    delete_connection: float = 0.3
    add_node: float = 0.5
    delete_node: float = 0.2

    # -- layout --------------------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return NUM_INPUTS + self.max_hidden + self.shape[0]

    @property
    def hidden_slots(self) -> slice:
        return slice(NUM_INPUTS, NUM_INPUTS + self.max_hidden)

    @property
    def output_slots(self) -> slice:
        return slice(NUM_INPUTS + self.max_hidden, self.num_slots)

    def allowed(self) -> torch.Tensor:
        """``(N, N)`` bool: connection ``j -> k`` (entry ``[k, j]``) is legal: ``j < k``, ``j`` not an
        output, ``k`` not an input."""
        n = self.num_slots
        k, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        return (j < k) & (k >= NUM_INPUTS) & (j < self.output_slots.start)

    def coordinates(self) -> torch.Tensor:
        """The CPPN inputs ``(NUM_INPUTS, H * W)``: x, y in ``[-1, 1]``, distance from the centre, bias 1."""
        _, height, width = self.shape
        y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        x, y = x.flatten(), y.flatten()
        return torch.stack([x, y, torch.sqrt(x * x + y * y), torch.ones_like(x)])

    # -- Encoding --------------------------------------------------------------------------------
    def random(self, n: int, rng: torch.Generator) -> CppnPopulation:
        """Genomes without hidden nodes, every input wired to every output with a random weight."""
        slots = self.num_slots
        weight = (torch.rand((n, slots, slots), generator=rng) * 2 - 1) * WEIGHT_RANGE
        enabled = torch.zeros((n, slots, slots), dtype=torch.bool)
        enabled[:, self.output_slots, :NUM_INPUTS] = True
        active = torch.zeros((n, slots), dtype=torch.bool)
        active[:, :NUM_INPUTS] = True
        active[:, self.output_slots] = True
        activation = torch.randint(len(ACTIVATIONS), (n, slots), generator=rng)
        return CppnPopulation(weight, enabled, active, activation)

    def offspring(self, parents: CppnPopulation, rng: torch.Generator) -> CppnPopulation:
        """Mutated copies of ``parents`` (the CPPN encoding uses mutation only)."""
        child = parents.take(torch.arange(len(parents)))
        self._mutate_weights(child, rng)
        self._mutate_activations(child, rng)
        self._add_connection(child, rng)
        self._delete_connection(child, rng)
        self._add_node(child, rng)
        self._delete_node(child, rng)
        return child

    def render(self, population: CppnPopulation) -> torch.Tensor:
        """Evaluate every CPPN at every pixel: images ``(P, C, H, W)`` = ``|output|`` scaled into the bounds.

        Genomes are rendered in chunks whose node values take at most :data:`RENDER_VALUES` floats
        (a population of 400 CPPNs at 224 x 224 would otherwise need ~2 GB at once).
        """
        pixels = self.shape[1] * self.shape[2]
        chunk = max(1, RENDER_VALUES // (self.num_slots * pixels))
        if len(population) <= chunk:
            return self._render_chunk(population)
        parts = [
            self._render_chunk(population.take(torch.arange(start, min(start + chunk, len(population)))))
            for start in range(0, len(population), chunk)
        ]
        return torch.cat(parts)

    def _render_chunk(self, population: CppnPopulation) -> torch.Tensor:
        """:meth:`render` for one chunk: every node slot in order, all genomes and pixels at once."""
        count, slots = len(population), self.num_slots
        channels, height, width = self.shape
        values = torch.zeros(count, slots, height * width)  # (P, N, H*W): every node's value at every pixel
        values[:, :NUM_INPUTS] = self.coordinates()
        weight = population.weight * population.enabled  # (P, N, N), zero where no connection
        for k in range(NUM_INPUTS, slots):
            present = population.active[:, k]
            if not bool(present.any()):
                continue  # an unused slot in every genome: its value stays 0
            # (P, 1, k) @ (P, k, H*W): slicing keeps both operands strided views, so nothing is copied
            z = torch.bmm(weight[:, k : k + 1, :k], values[:, :k]).squeeze(1)
            values[:, k] = activate(z, population.activation[:, k]) * present.unsqueeze(1)
        low, high = self.bounds
        pixels = values[:, self.output_slots].abs().clamp(0.0, 1.0)
        return (low + (high - low) * pixels).reshape(count, channels, height, width)

    # -- mutations (in place on a fresh copy) ------------------------------------------------------
    def _mutate_weights(self, child: CppnPopulation, rng: torch.Generator) -> None:
        child.weight = polynomial_mutation(
            child.weight, self.weight_rate, self.weight_eta, -WEIGHT_RANGE, WEIGHT_RANGE, rng
        )

    def _mutate_activations(self, child: CppnPopulation, rng: torch.Generator) -> None:
        redraw = (torch.rand(child.activation.shape, generator=rng) < self.activation_rate) & child.active
        redraw[:, :NUM_INPUTS] = False  # inputs pass their value through
        fresh = torch.randint(len(ACTIVATIONS), child.activation.shape, generator=rng)
        child.activation = torch.where(redraw, fresh, child.activation)

    def _add_connection(self, child: CppnPopulation, rng: torch.Generator) -> None:
        count = len(child)
        ends = child.active.unsqueeze(2) & child.active.unsqueeze(1)  # [p, k, j]: both nodes exist
        free = (self.allowed() & ends & ~child.enabled).view(count, -1)
        index, found = choose(free, rng)
        apply = found & (torch.rand(count, generator=rng) < self.add_connection)
        rows = torch.arange(count)[apply]
        fresh = (torch.rand(count, generator=rng) * 2 - 1) * WEIGHT_RANGE
        flat_enabled, flat_weight = child.enabled.view(count, -1), child.weight.view(count, -1)
        flat_enabled[rows, index[apply]] = True
        flat_weight[rows, index[apply]] = fresh[apply]

    def _delete_connection(self, child: CppnPopulation, rng: torch.Generator) -> None:
        count = len(child)
        index, found = choose(child.enabled.view(count, -1), rng)
        apply = found & (torch.rand(count, generator=rng) < self.delete_connection)
        child.enabled.view(count, -1)[torch.arange(count)[apply], index[apply]] = False

    def _add_node(self, child: CppnPopulation, rng: torch.Generator) -> None:
        count, slots = len(child), self.num_slots
        hidden = self.hidden_slots
        free = torch.zeros((count, slots), dtype=torch.bool)
        free[:, hidden] = ~child.active[:, hidden]
        node, found = choose(free, rng)
        position = torch.arange(slots).unsqueeze(0)
        is_source = position < self.output_slots.start
        source, _ = choose(
            child.active & is_source & (position < node.unsqueeze(1)), rng
        )  # inputs always qualify
        target, _ = choose(child.active & (position > node.unsqueeze(1)), rng)  # outputs always qualify
        apply = found & (torch.rand(count, generator=rng) < self.add_node)
        weights = (torch.rand((count, 2), generator=rng) * 2 - 1) * WEIGHT_RANGE
        kind = torch.randint(len(ACTIVATIONS), (count,), generator=rng)
        rows, node, source, target = torch.arange(count)[apply], node[apply], source[apply], target[apply]
        child.active[rows, node] = True
        child.activation[rows, node] = kind[apply]
        child.enabled[rows, node, source] = True
        child.weight[rows, node, source] = weights[apply, 0]
        child.enabled[rows, target, node] = True
        child.weight[rows, target, node] = weights[apply, 1]

    def _delete_node(self, child: CppnPopulation, rng: torch.Generator) -> None:
        count, slots = len(child), self.num_slots
        used = torch.zeros((count, slots), dtype=torch.bool)
        used[:, self.hidden_slots] = child.active[:, self.hidden_slots]
        node, found = choose(used, rng)
        apply = found & (torch.rand(count, generator=rng) < self.delete_node)
        rows, node = torch.arange(count)[apply], node[apply]
        child.active[rows, node] = False
        child.enabled[rows, node, :] = False  # its incoming connections
        child.enabled[rows, :, node] = False  # its outgoing connections
