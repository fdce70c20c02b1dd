"""The canonical ReLU network the verifiers work on: :class:`Affine` pieces, :class:`ReLU` and :class:`Network`.

The canonical form is::

    z_0 = W_0 x + b_0,  a_0 = relu(z_0),  ...,  z_{L-1} = W_{L-1} a_{L-2} + b_{L-1},  a_{L-1} = relu(z_{L-1}),
    y = W_L a_{L-1} + b_L

where ``x`` is the flattened (C-order) model input and ``y`` the logits; every ``W``, ``b`` is a dense float64
array. Each :class:`Affine` also carries what a *float32* evaluation of the original chain of ops could deviate
by (``abs_weight``, ``abs_bias``, ``fan_in``), which :mod:`robustcheck.verifiers.rounding` turns into error
bounds. :func:`canonicalize` merges a list of layers into this form; the layers come from PyTorch modules or
ONNX graphs through :mod:`robustcheck.verifiers.extraction`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustcheck.errors import InputError


@dataclass
class Affine:
    """``y = W x + b`` on flat vectors; ``W`` ``(out, in)``, ``b`` ``(out,)``, both float64.

    ``abs_weight`` / ``abs_bias`` (same shapes) bound the magnitudes of every product and addend of the original
    float32 chain of ops that computes each output (for a single op: ``|W|`` and ``|b|``), and ``fan_in`` the
    number of roundings along it; :func:`~robustcheck.verifiers.rounding.float32_error` uses them.
    """

    weight: np.ndarray
    bias: np.ndarray
    abs_weight: np.ndarray
    abs_bias: np.ndarray
    fan_in: int
    name: str = "affine"

    @classmethod
    def exact(cls, weight: np.ndarray, bias: np.ndarray, name: str, extra_roundings: int = 1) -> Affine:
        """A single float32 op: one rounding per product and per addition (``fan_in`` = columns + bias)."""
        weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
        nnz = int(max(1, (weight != 0).sum(axis=1).max(initial=1)))
        return cls(weight, bias, np.abs(weight), np.abs(bias), nnz + extra_roundings, name)

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape  # type: ignore[return-value]

    def then(self, other: Affine) -> Affine:
        """The composition ``other(self(x))``, merged in float64."""
        weight = other.weight @ self.weight
        bias = other.weight @ self.bias + other.bias
        abs_weight = other.abs_weight @ self.abs_weight
        abs_bias = other.abs_weight @ self.abs_bias + other.abs_bias
        return Affine(
            weight, bias, abs_weight, abs_bias, self.fan_in + other.fan_in, f"{self.name}+{other.name}"
        )


@dataclass
class ReLU:
    """Elementwise ``max(0, x)``."""

    name: str = "relu"


Layer = Affine | ReLU


@dataclass
class Network:
    """Canonical ReLU network: ``affines[0]``, ReLU, ``affines[1]``, ReLU, ..., ``affines[-1]`` (the logits).

    Attributes:
        affines: the affine pieces; ``len(affines) - 1`` hidden ReLU layers.
        input_shape: shape of one model input (e.g. ``(C, H, W)``); ``x`` is its C-order flattening.
        name: where it came from (for messages).
        meta: extra facts from the conversion (e.g. an ONNX graph's ``output_shape``).
    """

    affines: list[Affine]
    input_shape: tuple[int, ...]
    name: str = "network"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return self.affines[0].shape[1]

    @property
    def num_outputs(self) -> int:
        return self.affines[-1].shape[0]

    @property
    def hidden_sizes(self) -> list[int]:
        return [a.shape[0] for a in self.affines[:-1]]

    @property
    def num_relus(self) -> int:
        return sum(self.hidden_sizes)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """float64 logits ``(B, K)`` of flat inputs ``x`` ``(B, n)`` (the real-valued network, float64 arithmetic)."""
        return self.forward_from(np.atleast_2d(np.asarray(x, np.float64)), 0)

    def forward_from(self, h: np.ndarray, layer: int) -> np.ndarray:
        """Logits from the input of ``affines[layer]`` (``layer`` 0: the input; k: post-ReLU activations of layer k-1)."""
        for k, affine in enumerate(self.affines[layer:], start=layer):
            h = h @ affine.weight.T + affine.bias
            if k < len(self.affines) - 1:
                h = np.maximum(h, 0.0)
        return h

    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Pre-activations ``z_k`` ``(B, n_k)`` of every hidden layer for flat inputs ``x`` ``(B, n)`` (float64)."""
        h, out = np.atleast_2d(np.asarray(x, np.float64)), []
        for affine in self.affines[:-1]:
            z = h @ affine.weight.T + affine.bias
            out.append(z)
            h = np.maximum(z, 0.0)
        return out

    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Post-ReLU activations ``(B, n_k)`` of every hidden layer for flat inputs ``x`` ``(B, n)``."""
        return [np.maximum(z, 0.0) for z in self.pre_activations(x)]

    def suffix(self, layer: int) -> Network:
        """The network from the post-ReLU activations of hidden layer ``layer - 1`` (``layer`` >= 1) to the logits."""
        if not 1 <= layer < len(self.affines):
            raise InputError(
                f"network {self.name!r} has hidden layers 1..{len(self.affines) - 1}, not {layer}"
            )
        return Network(self.affines[layer:], (self.affines[layer].shape[1],), f"{self.name}[{layer}:]")

    def prefix(self, layer: int) -> Network:
        """The network from the input to the pre-activations of hidden layer ``layer - 1`` (no final ReLU)."""
        return Network(self.affines[:layer], self.input_shape, f"{self.name}[:{layer}]")


# ---------------------------------------------------------------------------------------------------------------
# Canonical form
# ---------------------------------------------------------------------------------------------------------------
def canonicalize(layers: list[Layer], input_shape: tuple[int, ...], num_inputs: int, name: str) -> Network:
    """Merge consecutive affine layers and repeated ReLUs into the alternating canonical form."""
    affines: list[Affine] = []
    pending: Affine | None = None
    for layer in layers:
        if isinstance(layer, ReLU):
            if pending is None and not affines:  # a ReLU on the raw input: an identity affine first
                pending = _identity(num_inputs, "input")
            if pending is not None:
                affines.append(pending)
                pending = None
            # a ReLU right after a ReLU is idempotent: nothing to add
        else:
            pending = layer if pending is None else pending.then(layer)
    if pending is None:  # ends with a ReLU: the logits are the last activations
        size = affines[-1].shape[0] if affines else num_inputs
        pending = _identity(size, "output")
    affines.append(pending)
    for k in range(1, len(affines)):
        if affines[k].shape[1] != affines[k - 1].shape[0]:
            raise InputError(
                f"{name}: layer sizes do not chain ({affines[k - 1].shape} then {affines[k].shape})"
            )
    if affines[0].shape[1] != num_inputs:
        raise InputError(
            f"{name}: the first layer takes {affines[0].shape[1]} values, the input has {num_inputs}"
        )
    return Network(affines, tuple(input_shape), name)


def interleave(affines: list[Affine]) -> list[Layer]:
    """The layer list ``[A0, ReLU, A1, ReLU, ..., AL]`` of canonical affine pieces."""
    layers: list[Layer] = []
    for k, affine in enumerate(affines):
        if k:
            layers.append(ReLU())
        layers.append(affine)
    return layers


def _identity(size: int, name: str) -> Affine:
    eye = np.eye(size)
    return Affine(eye, np.zeros(size), eye, np.zeros(size), 0, name)

