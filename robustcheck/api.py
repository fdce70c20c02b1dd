"""The plugin API: :class:`Probe`, :class:`Defense`, :class:`Verifier` and :class:`ProbeResult`.

A probe is a small object configured by keyword parameters and called on a model adapter and data::

    probe = create_probe("pgd-linf", epsilons=[0, 0.03])
    result = probe(model, data, seed=0)        # -> ProbeResult
    result.score, result.metrics["robust_accuracy"]

A defense wraps a model adapter into a defended one (``defense.apply(model)``), and says whether
gradients through it are ``"exact"``, ``"approximate"`` (straight-through / BPDA) or ``"none"``.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcheck import registry
from robustcheck.data.dataset import ImageDataset
from robustcheck.deadline import budget_scope
from robustcheck.defaults import DEFAULT_BATCH_SIZE, DEFAULT_BUDGET_S
from robustcheck.errors import ProbeTimeout, RequirementError, UsageError
from robustcheck.jsonutil import json_default
from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops.metrics import epsilon_key
from robustcheck.params import Param, PluginSpec, declared_params, infer_param, resolve
from robustcheck.seeding import seed_everything

STATUSES = ("ok", "timeout", "error")


@dataclass
class Artifact:
    """A row of images with captions (e.g. clean vs adversarial) shown in the report.

    ``images`` holds ``(C, H, W)`` float arrays in ``[0, 1]`` (or ready PNG bytes), one caption each.
    """

    title: str
    images: list[np.ndarray | bytes]
    captions: list[str]

    def png_images(self) -> list[bytes]:
        return [img if isinstance(img, bytes) else to_png(img) for img in self.images]


@dataclass
class Table:
    """A small table shown in the probe's report section and saved in ``results.json``.

    ``frame`` holds JSON-friendly cells (numbers, strings, booleans, ``None``); ``note`` says how to read it.
    """

    title: str
    frame: pd.DataFrame
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        cells = self.frame.astype(object).where(self.frame.notna(), None)
        return {
            "title": self.title,
            "note": self.note,
            "columns": [str(c) for c in self.frame.columns],
            "rows": json.loads(json.dumps(cells.values.tolist(), default=json_default)),  # numpy scalars -> numbers
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Table:
        return cls(str(doc["title"]), pd.DataFrame(doc["rows"], columns=doc["columns"]), str(doc.get("note", "")))


def to_png(image: np.ndarray | torch.Tensor) -> bytes:
    """Encode a ``(C, H, W)`` (or ``(H, W)``) image in ``[0, 1]`` as PNG bytes."""
    from PIL import Image

    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ProbeResult:
    """What a probe returns.

    Attributes:
        score: in ``[0, 1]``, 1 = fully robust (each probe documents its definition in ``score_doc``).
        metrics: JSON-serialisable numbers; a mapping of numeric strings to numbers (such as
            ``robust_accuracy`` per epsilon) is drawn as a curve in reports.
        records: one row per sample (index, label, prediction, ... probe-specific columns).
        artifacts: example images for the report.
        tables: small tables for the report (e.g. a comparison with a baseline).
        status: ``ok``, ``timeout`` (budget spent; metrics cover what finished) or ``error``.
        message: the error or timeout explanation.
        adversarials: for attacks, one image per record ``(N, C, H, W)`` (CPU): the adversarial at the sample's
            ``min_epsilon`` where one fooled it, else the clean image (``--save-adversarials`` writes them).
    """

    score: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    records: pd.DataFrame = field(default_factory=pd.DataFrame)
    artifacts: list[Artifact] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    status: str = "ok"
    message: str = ""
    seed: int = 0
    seconds: float = 0.0
    adversarials: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.score is not None:
            if not math.isfinite(self.score) or not 0.0 <= self.score <= 1.0 + 1e-9:
                raise ValueError(f"score must lie in [0, 1], got {self.score}")
            self.score = min(float(self.score), 1.0)


def check_epsilon_range(
    probe: str, model: ImageClassifier, norm: str, epsilons: Sequence[float], shape: Sequence[int] | None
) -> None:
    """Refuse ``epsilons`` (``norm`` ``"linf"`` or ``"l2"``) larger than any perturbation within ``model.bounds``
    can be; an L2 radius is judged only when the input ``shape`` ``(C, H, W)`` is known."""
    low, high = model.bounds
    span = high - low
    if norm == "linf":
        limit, why = span, f"an Linf epsilon above high - low = {span:g} is meaningless"
    elif shape is not None:
        limit = span * math.sqrt(math.prod(int(d) for d in shape))
        why = f"an L2 radius above (high - low) * sqrt(C*H*W) = {limit:g} for inputs {tuple(int(d) for d in shape)} is meaningless"
    else:
        return
    too_large = [eps for eps in epsilons if eps > limit * (1 + 1e-9)]
    if too_large:
        raise UsageError(
            f"probe {probe!r}: epsilon {too_large[0]:g} is outside the range of model {model.name!r} "
            f"(bounds [{low:g}, {high:g}]): {why}; use epsilons <= {limit:g}"
        )


def adversarial_examples(
    model: ImageClassifier, data: ImageDataset, records: pd.DataFrame, adversarials: torch.Tensor, limit: int
) -> list[Artifact]:
    """Report cards for the first ``limit`` fooled samples of an attack: clean, adversarial (at the smallest
    breaking epsilon; ``adversarials`` has one image per record) and the perturbation scaled to be seen."""
    fooled = records[records["correct"] & records["min_epsilon"].notna()].head(limit)
    artifacts = []
    for position, row in fooled.iterrows():
        i, eps = int(row["index"]), float(row["min_epsilon"])
        clean, adv = data.x[i], adversarials[int(position)]
        delta = adv - clean
        scale = float(delta.abs().max()) or 1.0
        artifacts.append(
            Artifact(
                f"sample {i} (label {model.label(int(row['label']))})",
                [clean.numpy(), adv.numpy(), (0.5 + 0.5 * delta / scale).numpy()],
                [
                    f"clean: {model.label(int(row['prediction']))} ({row['confidence']:.2f})",
                    f"eps {epsilon_key(eps)}: {model.label(int(row['adv_prediction']))} ({row['adv_confidence']:.2f})",
                    f"perturbation x{1 / scale:.3g}",
                ],
            )
        )
    return artifacts


def concat_adversarials(parts: Sequence[ProbeResult]) -> torch.Tensor | None:
    """The ``adversarials`` of consecutive shard results, in order (``None`` unless every shard has them)."""
    if not parts or any(p.adversarials is None for p in parts):
        return None
    return torch.cat([p.adversarials for p in parts if p.adversarials is not None])


@dataclass
class RunContext:
    """What the runner hands a probe besides model and data.

    Attributes:
        seed: seed of this run (the runner has already seeded torch, numpy and random with it).
        deadline: ``time.monotonic()`` value after which the probe should stop (``None``: no limit).
        batch_size: samples per batch.
        bare_model: the undefended model when a defense is applied (for non-adaptive attacks).
        progress: called with the number of samples just finished.
    """

    seed: int = 0
    deadline: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    bare_model: ImageClassifier | None = None
    progress: Callable[[int], None] | None = None

    def check_time(self) -> None:
        """Raise :class:`ProbeTimeout` once the time budget is spent (call between batches)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ProbeTimeout("time budget spent")

    def advance(self, n: float) -> None:
        """Tell the progress bar that ``n`` more samples are done (fractions move it inside a batch)."""
        if self.progress is not None:
            self.progress(n)

    def batch_progress(self, size: int) -> BatchProgress:
        """The progress bar's share of a batch of ``size`` samples, to advance in parts while it is attacked."""
        return BatchProgress(self, size)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


class BatchProgress:
    """The progress bar's share of one batch of ``size`` samples: :meth:`part` moves it while the batch is
    worked on (so a slow batch does not sit at zero), :meth:`finish` completes it."""

    def __init__(self, context: RunContext, size: int) -> None:
        self.context, self.size, self.shown = context, size, 0.0

    def part(self, fraction: float) -> None:
        step = min(fraction * self.size, self.size - self.shown)
        self.shown += step
        self.context.advance(step)

    def finish(self) -> None:
        self.context.advance(self.size - self.shown)
        self.shown = float(self.size)


class Plugin:
    """Shared behaviour: a registry ``name``, declared :class:`~robustcheck.params.Param` parameters
    (``parameters``) and this instance's checked values (``params``; each also as ``self.<name>``)."""

    name: ClassVar[str] = "plugin"
    kind: ClassVar[str] = "plugin"
    #: every declared parameter, bases included (filled in for each subclass).
    parameters: ClassVar[dict[str, Param]] = {}
    #: what the model must offer: "gradients", "captioner", "relu-network".
    requires: ClassVar[frozenset[str]] = frozenset()
    #: run by ``robustcheck audit`` when no probe / defense is named (and the model meets ``requires``).
    in_default_audit: ClassVar[bool] = False
    #: what one run needs from a cluster scheduler (``num_cpus``, ``num_gpus``; the ray executor).
    resources: ClassVar[dict[str, float]] = {"num_cpus": 1}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        parameters: dict[str, Param] = {}
        for klass in reversed(cls.__mro__):
            # a plain ``defaults = {...}`` dict (third-party plugins) declares parameters by example
            for key, default in (vars(klass).get("defaults") or {}).items():
                parameters[key] = infer_param(key, default)
        parameters.update(declared_params(cls))
        cls.parameters = parameters

    def __init__(self, **params: Any) -> None:
        self.params = resolve(f"{self.kind} {self.name!r}", self.parameters, params)
        try:
            self.validate()
        except UsageError as exc:  # the framework names the plugin, so messages need not
            raise UsageError(f"{self.kind} {self.name!r}: {exc}") from None

    def validate(self) -> None:
        """Check what single declarations cannot (values that depend on each other): raise
        :class:`UsageError` without the plugin's name, which the framework puts in front."""

    @property
    def spec(self) -> PluginSpec:
        """This plugin with the parameters that differ from the defaults."""
        changed = {k: v for k, v in self.params.items() if v != self.parameters[k].coerce(self.parameters[k].default)}
        return PluginSpec(self.kind, self.name, changed)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def check_requirements(cls, model: ImageClassifier) -> None:
        """Fail early, with a clear message, if ``model`` lacks what this plugin needs."""
        missing = []
        if "gradients" in cls.requires and model.gradients == "none":
            missing.append("gradients (the model or its defense is not differentiable)")
        if "captioner" in cls.requires and not getattr(model, "is_captioner", False):
            missing.append("a captioner (CNN+LSTM) model")
        if "relu-network" in cls.requires and not model.is_relu_network():
            missing.append("a network of Linear/Conv2d/ReLU layers only")
        if missing:
            raise RequirementError(f"{cls.kind} {cls.name!r} needs {'; '.join(missing)}, which model {model.name!r} does not offer")


class Probe(Plugin):
    """An attack or probe. Subclasses set ``name``, ``defaults``, ``score_doc`` and implement :meth:`run`."""

    kind: ClassVar[str] = "probe"
    score_doc: ClassVar[str] = ""
    #: the time budget of a run when the user sets none (``--budget``): room for the probe's expected cost
    #: with default parameters on the built-in models, on a quiet 2-core machine, stated in ``cost``.
    default_budget_s: ClassVar[float] = DEFAULT_BUDGET_S
    #: what a run with default parameters costs (shown by ``robustcheck list``), e.g. "trains a GAN first: ~70 s".
    cost: ClassVar[str] = ""
    #: whether a run may split its samples into shards (``RunSpec.shards``): needs :meth:`merge`.
    shardable: ClassVar[bool] = False
    #: whether data images may be larger than the model input (the probe cuts model-sized windows).
    accepts_larger_inputs: ClassVar[bool] = False

    def merge(self, parts: Sequence[ProbeResult], offsets: Sequence[int]) -> ProbeResult:
        """Combine the results of consecutive sample shards into the result of the whole run.

        ``offsets[i]`` is the position of shard ``i``'s first sample in the run's data (records
        index their samples within the shard). Probes that set ``shardable`` implement this.
        """
        raise NotImplementedError(f"probe {self.name!r} does not merge shards")

    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        raise NotImplementedError

    def __call__(self, model: ImageClassifier, data: ImageDataset, *, seed: int = 0, **context: Any) -> ProbeResult:
        """Run directly (outside the runner): seeds, checks requirements, times the run."""

        self.check_requirements(model)
        seed_everything(seed)
        start = time.perf_counter()
        run_context = RunContext(seed=seed, **context)
        with budget_scope(run_context.deadline):
            result = self.run(model, data, run_context)
        result.seed, result.seconds = seed, time.perf_counter() - start
        return result


class Defense(Plugin):
    """A defense: a transform applied to inputs before the model.

    ``gradients`` says what gradients through the defended model are: ``"exact"`` (the transform
    is differentiable), ``"approximate"`` (straight-through / BPDA) or ``"none"``.
    """

    kind: ClassVar[str] = "defense"
    gradients: ClassVar[str] = "exact"

    def transform(self, model: ImageClassifier) -> nn.Module:
        """An ``nn.Module`` mapping ``(B, C, H, W)`` images within ``model.bounds`` to images within them."""
        raise NotImplementedError

    def apply(self, model: ImageClassifier) -> DefendedClassifier:
        return DefendedClassifier(model, self)


class _Pipeline(nn.Module):
    def __init__(self, transform: nn.Module, model: ImageClassifier) -> None:
        super().__init__()
        self.transform, self.model = transform, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


class DefendedClassifier(ImageClassifier):
    """``model(defense(x))`` with the bare model's bounds, labels and input shape."""

    def __init__(self, model: ImageClassifier, defense: Defense) -> None:
        super().__init__(
            _Pipeline(defense.transform(model), model),
            bounds=model.bounds,
            labels=model.labels,
            input_shape=model.input_shape,
            name=f"{model.name}+{defense.name}",
            default_data=model.default_data,
            device=model.device,
        )
        self.bare, self.defense = model, defense
        self.train(model.training)  # follow the bare model's mode (foolbox warns about training mode)

    @property
    def gradients(self) -> str:
        return self.defense.gradients

    def is_relu_network(self) -> bool:
        return False


class Verifier(Probe):
    """A verifier: proves (SAFE), refutes with a counterexample (UNSAFE) or gives up (UNKNOWN) per sample.

    It runs like a probe (score = fraction of samples proven SAFE) and is registered in the
    ``robustcheck.verifiers`` group.
    """

    kind: ClassVar[str] = "verifier"


def _registration_check(base: type[Plugin]) -> Callable[[str, Any], None]:
    """What the registry asks of a ``base`` plugin before it takes it (see :func:`registry.add_check`)."""

    def check(name: str, obj: Any) -> None:
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"is {obj!r}, not a {base.__module__}.{base.__name__} subclass")
        if issubclass(obj, Probe) and not obj.score_doc.strip():
            raise TypeError("has no score_doc: say what its score measures (1 = robust)")
        try:
            obj()
        except UsageError as exc:
            raise TypeError(f"has invalid defaults: {exc}") from None

    return check


registry.add_check("probe", _registration_check(Probe))
registry.add_check("defense", _registration_check(Defense))
registry.add_check("verifier", _registration_check(Verifier))
