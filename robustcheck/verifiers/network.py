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


#: smooth activations the bounds relax (never encoded exactly: properties that need them exactly stay UNKNOWN).
SMOOTH = ("sigmoid", "tanh")


@dataclass
class Activation:
    """A smooth elementwise activation: ``kind`` is ``"sigmoid"`` or ``"tanh"``."""

    kind: str
    name: str = "activation"


@dataclass
class MaxPool:
    """``h_w = max_i a[windows[w, i]]``: one row of flat indices per output (rows padded by repeating an index,
    which leaves a max unchanged)."""

    windows: np.ndarray
    name: str = "maxpool"


Layer = Affine | ReLU | Activation | MaxPool


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
    #: per hidden layer: ``"relu"`` (default), ``"sigmoid"`` or ``"tanh"``
    acts: list[str] = field(default_factory=list)
    #: per hidden layer: a max-pooling window matrix applied after the activation, or ``None``
    pools: list[np.ndarray | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        hidden = len(self.affines) - 1
        if not self.acts:
            self.acts = ["relu"] * hidden
        if not self.pools:
            self.pools = [None] * hidden

    @property
    def is_relu_chain(self) -> bool:
        """Only ReLU activations and no pooling: the form the interval / CROWN / Z3 / MILP code of the
        original engine handles."""
        return all(a == "relu" for a in self.acts) and all(p is None for p in self.pools)

    def activate(self, k: int, z: np.ndarray) -> np.ndarray:
        """Hidden layer ``k``'s activation and pooling of pre-activations ``z`` ``(B, n_k)`` (float64)."""
        kind = self.acts[k]
        if kind == "relu":
            a = np.maximum(z, 0.0)
        elif kind == "sigmoid":
            a = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
        else:
            a = np.tanh(z)
        pool = self.pools[k]
        return a if pool is None else a[:, pool].max(axis=2)

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
                h = self.activate(k, h)
        return h

    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Pre-activations ``z_k`` ``(B, n_k)`` of every hidden layer for flat inputs ``x`` ``(B, n)`` (float64)."""
        h, out = np.atleast_2d(np.asarray(x, np.float64)), []
        for k, affine in enumerate(self.affines[:-1]):
            z = h @ affine.weight.T + affine.bias
            out.append(z)
            h = self.activate(k, z)
        return out

    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Post-activation (post-pooling) values ``(B, n_k)`` of every hidden layer for flat inputs ``x`` ``(B, n)``."""
        return [self.activate(k, z) for k, z in enumerate(self.pre_activations(x))]

    def suffix(self, layer: int) -> Network:
        """The network from the post-ReLU activations of hidden layer ``layer - 1`` (``layer`` >= 1) to the logits."""
        if not 1 <= layer < len(self.affines):
            raise InputError(
                f"network {self.name!r} has hidden layers 1..{len(self.affines) - 1}, not {layer}"
            )
        return Network(self.affines[layer:], (self.affines[layer].shape[1],), f"{self.name}[{layer}:]",
                       acts=self.acts[layer:], pools=self.pools[layer:])  # fmt: skip

    def prefix(self, layer: int) -> Network:
        """The network from the input to the pre-activations of hidden layer ``layer - 1`` (no final ReLU)."""
        return Network(self.affines[:layer], self.input_shape, f"{self.name}[:{layer}]",
                       acts=self.acts[: layer - 1], pools=self.pools[: layer - 1])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Canonical form
# ---------------------------------------------------------------------------------------------------------------
def canonicalize(layers: list[Layer], input_shape: tuple[int, ...], num_inputs: int, name: str) -> Network:
    """Merge consecutive affine layers and repeated ReLUs into the alternating canonical form.

    Max pooling attaches to the activation before it; a pooling right after an affine piece and followed by a
    monotone activation is swapped with it (``act(max(z)) = max(act(z))``).
    """
    layers = _pool_after_activation(list(layers), name)
    affines: list[Affine] = []
    acts: list[str] = []
    pools: list[np.ndarray | None] = []
    pending: Affine | None = None
    for layer in layers:
        if isinstance(layer, (ReLU, Activation)):
            kind = "relu" if isinstance(layer, ReLU) else layer.kind
            if pending is None and not affines:  # an activation on the raw input: an identity affine first
                pending = _identity(num_inputs, "input")
            if pending is not None:
                affines.append(pending)
                acts.append(kind)
                pools.append(None)
                pending = None
            elif kind != "relu" or acts[-1] != "relu" or pools[-1] is not None:
                # only a ReLU right after a ReLU is idempotent; anything else needs an identity layer between
                size = len(pools[-1]) if pools[-1] is not None else affines[-1].shape[0]
                affines.append(_identity(size, "identity"))
                acts.append(kind)
                pools.append(None)
        elif isinstance(layer, MaxPool):
            # after _pool_after_activation a pooling follows an activation (nothing pending)
            windows = np.asarray(layer.windows, np.int64)
            previous = pools[-1]
            pools[-1] = windows if previous is None else _compose_windows(previous, windows)
        else:
            pending = layer if pending is None else pending.then(layer)
    if pending is None:  # ends with an activation: the logits are the last activations
        size = len(pools[-1]) if pools and pools[-1] is not None else (affines[-1].shape[0] if affines else num_inputs)
        pending = _identity(size, "output")
    affines.append(pending)
    for k in range(1, len(affines)):
        size = len(pools[k - 1]) if pools[k - 1] is not None else affines[k - 1].shape[0]
        if affines[k].shape[1] != size:
            raise InputError(
                f"{name}: layer sizes do not chain ({affines[k - 1].shape} then {affines[k].shape})"
            )
    if affines[0].shape[1] != num_inputs:
        raise InputError(
            f"{name}: the first layer takes {affines[0].shape[1]} values, the input has {num_inputs}"
        )
    return Network(affines, tuple(input_shape), name, acts=acts, pools=pools)


def _pool_after_activation(layers: list[Layer], name: str) -> list[Layer]:
    """Move each max pooling that directly follows an affine piece behind the activation after it."""
    out = list(layers)
    for i, layer in enumerate(out):
        if not isinstance(layer, MaxPool):
            continue
        before = out[i - 1] if i else None
        if before is None or isinstance(before, Affine):
            after = out[i + 1] if i + 1 < len(out) else None
            if not isinstance(after, (ReLU, Activation)):
                raise InputError(
                    f"{name}: cannot verify {layer.name}: max pooling must follow (or precede) an activation"
                )
            out[i], out[i + 1] = after, layer
    return out


def _compose_windows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Max pooling ``second`` over the outputs of pooling ``first``: one pooling over the unions."""
    return first[second].reshape(len(second), -1)


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

