"""The probe behind ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square`` and ``autoattack``: a threat model (``norm``
and ``epsilons``), the attack at each epsilon, the re-check on the model and the per-sample records.

Epsilons are attacked in increasing order and each only on the samples still robust: an adversarial found
within a smaller ball also lies in every larger one, so a sample counts as robust at ``eps`` only if it is
classified correctly and nothing fooled it at any epsilon up to ``eps`` (the curve never increases).
Minimal-norm attacks (FAB) search once per sample and their result is clipped to each epsilon.

Every candidate is clipped into the ball and the model's bounds and re-run through the model; only that
verdict counts. It is then rounded to 8 bits (:func:`~robustcheck.probes.autoattack.threat.round_to_8bit`) and
re-run again: ``robust_accuracy_8bit`` is what survives saving the adversarials as 8-bit images. The 8-bit
check rounds the adversarials the float search finds (it does not search the 8-bit grid itself); a sample whose
adversarial rounding undid is attacked again at the next epsilon, for the 8-bit check only.

Metrics (from the records alone, so shards merge exactly): ``clean_accuracy``; ``robust_accuracy`` and
``robust_accuracy_8bit`` (epsilon as a string -> accuracy); ``auc`` and ``auc_8bit`` (normalised areas under
those curves); ``attack_success_rate`` (fooled at the largest epsilon, among clean-correct samples);
``median_min_epsilon``; ``norm``; ``epsilon`` (the largest: the threat model); ``samples``; ``bounds``;
``zero_gradient_fraction`` for gradient attacks; each probe adds its own (queries, closest adversarials, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from robustcheck.api import (
    Probe,
    ProbeResult,
    RunContext,
    adversarial_examples,
    check_epsilon_range,
    concat_adversarials,
)
from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import ProbeTimeout
from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops.metrics import normalized_auc, robust_accuracy_curve
from robustcheck.params import Param
from robustcheck.probes.autoattack.interface import GradientCheck, Tick
from robustcheck.probes.autoattack.threat import lp_norm, project, round_to_8bit, within_ball

#: the standard threat models (RobustBench's CIFAR-10 ones): AutoAttack reports robust accuracy at one declared
#: epsilon; give a list for a curve (each epsilon costs about one more full attack of the samples still robust)
DEFAULT_EPSILONS = {"linf": [8 / 255], "l2": [0.5]}


@dataclass
class AttackSession:
    """What an attack needs besides the batch: the model, a seeded generator, the time check and the gradient check."""

    model: ImageClassifier
    generator: torch.Generator
    tick: Tick
    check_gradients: GradientCheck

    def verify(self, adversarial: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(n,)`` booleans: the model misclassifies each (already clipped) candidate."""
        with torch.no_grad():
            return self.model(adversarial).argmax(1) != y


@dataclass
class BatchAttack:
    """An attack's answer for ``n`` samples: candidates ``(n, C, H, W)``, verdicts of :meth:`AttackSession.verify`
    on them (``None``: the probe verifies) and extra per-sample record columns (``name -> n values``)."""

    adversarial: torch.Tensor
    fooled: torch.Tensor | None = None
    columns: dict[str, list[Any]] = field(default_factory=dict)


class ThreatModelProbe(Probe):
    """Base of the AutoAttack-family probes: subclasses implement :meth:`attack` (one epsilon, or ``None`` for a
    minimal-norm search when :attr:`minimal_norm`)."""

    requires = frozenset({"gradients"})
    shardable = True
    #: record columns summed over the epsilons (query counts); the others keep the value of the fooling epsilon
    summed_columns: ClassVar[tuple[str, ...]] = ()
    score_doc = (
        "Normalised area under the robust-accuracy-vs-epsilon curve (float re-check; 1 = every sample stays "
        "correctly classified at every epsilon; 0 = none does); the 8-bit curve is reported beside it."
    )

    norm = Param("linf", "threat model: linf or l2 perturbations", choices=["linf", "l2"])
    epsilons = Param(
        None,
        "perturbation budgets (sorted); none: the standard threat model, linf [8/255] or l2 [0.5]",
        type=float, list=True, ge=0, min_items=1, sort=True,
    )  # fmt: skip
    examples = Param(4, "fooled samples shown as clean / adversarial images in the report", ge=0)

    @property
    def epsilon_grid(self) -> list[float]:
        """The epsilons attacked: the given ones, else the norm's default grid."""
        return list(self.epsilons) if self.epsilons is not None else list(DEFAULT_EPSILONS[self.norm])

    def attack(self, session: AttackSession, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> BatchAttack:
        raise NotImplementedError

    @property
    def minimal_norm(self) -> bool:
        """Whether :meth:`attack` runs once per sample without an epsilon (a minimal-norm search) and its result
        is clipped to each epsilon, instead of running at each epsilon."""
        return False

    def extra_metrics(self, records: pd.DataFrame) -> dict[str, Any]:
        """Probe-specific metrics computed from the records."""
        return {}

    # -- checks --------------------------------------------------------------------------------
    def check_requirements(self, model: ImageClassifier) -> None:  # type: ignore[override]
        super().check_requirements(model)
        self.check_epsilons(model, model.input_shape)

    def check_epsilons(self, model: ImageClassifier, shape: Sequence[int] | None) -> None:
        """Refuse epsilons larger than any perturbation within ``model.bounds`` can be (``shape``: ``(C, H, W)``)."""
        check_epsilon_range(self.name, model, self.norm, self.epsilon_grid, shape)

    # -- running -------------------------------------------------------------------------------
    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        self.check_epsilons(model, data.shape)
        generator = context.generator()
        rows: list[dict[str, Any]] = []
        shown: list[torch.Tensor] = []
        status, message = "ok", ""
        for start in range(0, len(data), context.batch_size):
            x = data.x[start : start + context.batch_size]
            y = data.y[start : start + context.batch_size]
            try:
                context.check_time()
                batch_rows, adversarial = self._attack_batch(model, x, y, start, generator, context)
            except ProbeTimeout as exc:
                status, message = "timeout", f"{exc}: {start} of {len(data)} samples attacked"
                break
            rows.extend(batch_rows)
            shown.append(adversarial)
            context.advance(len(x))
        if not rows:
            raise ProbeTimeout("time budget spent before the first batch finished")
        records = pd.DataFrame(rows)
        metrics = self.metrics(records)
        metrics["bounds"] = list(model.bounds)
        adversarials = torch.cat(shown)
        artifacts = adversarial_examples(model, data, records, adversarials, self.examples)
        return ProbeResult(metrics["auc"], metrics, records, artifacts, status=status, message=message, adversarials=adversarials)

    def _attack_batch(
        self, model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, offset: int, generator: torch.Generator, context: RunContext
    ) -> tuple[list[dict[str, Any]], torch.Tensor]:
        """Attack one batch at every epsilon; one record per sample and the adversarial shown for each ``(B, C, H, W)``."""
        epsilons, bounds = self.epsilon_grid, model.bounds
        x, y = x.to(model.device), y.to(model.device).long()
        n = len(x)
        with model.eval_mode(), model.frozen():
            with torch.no_grad():
                clean_prob = model(x).softmax(1)
            clean_conf, clean_pred = clean_prob.max(1)
            correct = clean_pred == y
            zero = self._zero_gradients(model, x, y)
            session = AttackSession(model, generator, context.check_time, model.check_gradients)
            first = epsilons[0]
            min_eps: list[float | None] = [None if bool(c) else first for c in correct]
            min_eps_8bit: list[float | None] = list(min_eps)
            columns: dict[str, list[Any]] = {}
            still = correct.clone()
            shown = x.clone()
            searched = None
            if self.minimal_norm and bool(correct.any()):
                todo = torch.nonzero(correct).flatten()
                searched = (todo, self.attack(session, x[todo], y[todo], None))
                self._collect(columns, searched[1].columns, todo.tolist(), [True] * len(todo), n)
            for eps in epsilons:
                # also the samples fooled in float whose adversarial 8-bit rounding undid: a larger ball may hold
                # one that survives rounding
                unrounded = correct & torch.tensor([m is None for m in min_eps_8bit], dtype=torch.bool, device=x.device)
                todo = torch.nonzero(still | unrounded).flatten()
                if eps <= 0 or not len(todo):
                    continue
                if searched is not None:
                    position = {int(i): j for j, i in enumerate(searched[0].tolist())}
                    pick = torch.tensor([position[int(i)] for i in todo], dtype=torch.long, device=x.device)
                    found = BatchAttack(searched[1].adversarial[pick])
                else:
                    found = self.attack(session, x[todo], y[todo], eps)
                    self._collect(columns, found.columns, todo.tolist(), still[todo].tolist(), n)
                candidates = project(found.adversarial, x[todo], eps, self.norm, bounds)
                fooled = found.fooled if found.fooled is not None else session.verify(candidates, y[todo])
                rounded = round_to_8bit(candidates, x[todo], eps, self.norm, bounds)
                fooled_8bit = within_ball(rounded, x[todo], eps, self.norm, bounds) & session.verify(rounded, y[todo])
                for j, (i, float_fooled, bit8_fooled) in enumerate(zip(todo.tolist(), fooled.tolist(), fooled_8bit.tolist(), strict=True)):
                    if float_fooled and bool(still[i]):
                        still[i] = False
                        min_eps[i] = eps
                        shown[i] = candidates[j]
                    if bit8_fooled and min_eps_8bit[i] is None:
                        min_eps_8bit[i] = eps
            with torch.no_grad():
                adv_conf, adv_pred = model(shown).softmax(1).max(1)
        perturbation = lp_norm(shown - x, self.norm)
        rows = []
        for i in range(n):
            row: dict[str, Any] = {
                "index": offset + i,
                "label": int(y[i]),
                "prediction": int(clean_pred[i]),
                "confidence": float(clean_conf[i]),
                "correct": bool(correct[i]),
                # smallest epsilon of the grid at which the sample is misclassified (the first if already clean)
                "min_epsilon": min_eps[i],
                "min_epsilon_8bit": min_eps_8bit[i],
                "adv_prediction": int(adv_pred[i]),
                "adv_confidence": float(adv_conf[i]),
                "perturbation": float(perturbation[i]),
            }
            if zero is not None:
                row["zero_gradient"] = bool(zero[i])
            row.update({name: values[i] for name, values in columns.items()})
            rows.append(row)
        return rows, shown.detach().cpu()

    def _collect(
        self, columns: dict[str, list[Any]], found: dict[str, list[Any]], positions: list[int], current: list[bool], n: int
    ) -> None:
        """Write an attack's per-sample ``found`` columns into the batch's ``columns`` (``positions``: batch rows).

        :attr:`summed_columns` (query counts) add up over every attack of the sample; the others describe the
        adversarial at the sample's ``min_epsilon``, so only rows still robust in float (``current``) take them
        (not a re-attack for the 8-bit check)."""
        for name, values in found.items():
            column = columns.setdefault(name, [0 if name in self.summed_columns else None] * n)
            for position, value, fresh in zip(positions, values, current, strict=True):
                if name in self.summed_columns:
                    column[position] += value
                elif fresh:
                    column[position] = value

    def _zero_gradients(self, model: ImageClassifier, x: torch.Tensor, y: torch.Tensor) -> np.ndarray | None:
        """Per sample: is the cross-entropy gradient at the clean image exactly zero? (``None`` for score-based probes.)"""
        if "gradients" not in self.requires or model.gradients == "none":
            return None
        grad = model.input_gradients(x, y)
        return (grad.flatten(1) == 0).all(dim=1).numpy()

    # -- metrics -------------------------------------------------------------------------------
    def metrics(self, records: pd.DataFrame) -> dict[str, Any]:
        """Every metric from the per-sample records (see the module docstring)."""
        epsilons = self.epsilon_grid
        correct = records["correct"].to_numpy(bool)
        grid = np.asarray(epsilons)[:, None]
        curves = {}
        for suffix, column in (("", "min_epsilon"), ("_8bit", "min_epsilon_8bit")):
            broken = pd.to_numeric(records[column], errors="coerce").to_numpy(float)  # NaN: never fooled
            robust = correct[None, :] & ~(grid >= broken[None, :])
            curves[suffix] = robust_accuracy_curve(robust, epsilons)
        min_epsilon = pd.to_numeric(records["min_epsilon"], errors="coerce").to_numpy(float)
        fooled_final = correct & ~np.isnan(min_epsilon)
        broken_correct = min_epsilon[correct & ~np.isnan(min_epsilon)]
        metrics: dict[str, Any] = {
            "clean_accuracy": float(correct.mean()),
            "robust_accuracy": curves[""],
            "robust_accuracy_8bit": curves["_8bit"],
            "auc": normalized_auc(epsilons, list(curves[""].values())),
            "auc_8bit": normalized_auc(epsilons, list(curves["_8bit"].values())),
            "attack_success_rate": float(fooled_final.sum() / correct.sum()) if correct.any() else 0.0,
            "median_min_epsilon": float(np.median(broken_correct)) if len(broken_correct) else None,
            "norm": self.norm,
            "epsilon": float(max(epsilons)),
            "samples": len(records),
        }
        if "zero_gradient" in records.columns:
            metrics["zero_gradient_fraction"] = float(records["zero_gradient"].astype(bool).mean())
        metrics.update(self.extra_metrics(records))
        return metrics

    def merge(self, parts: Sequence[ProbeResult], offsets: Sequence[int]) -> ProbeResult:
        """Concatenate the shards' records (re-indexed) and recompute every metric from them."""
        records = pd.concat(
            [p.records.assign(index=p.records["index"] + offset) for p, offset in zip(parts, offsets, strict=True)],
            ignore_index=True,
        )
        metrics = self.metrics(records)
        if "bounds" in parts[0].metrics:
            metrics["bounds"] = parts[0].metrics["bounds"]
        artifacts = [a for p in parts for a in p.artifacts][: self.examples]
        timeouts = [p.message for p in parts if p.status == "timeout"]
        status, message = ("timeout", "; ".join(timeouts)) if timeouts else ("ok", "")
        return ProbeResult(
            metrics["auc"], metrics, records, artifacts, status=status, message=message, adversarials=concat_adversarials(parts)
        )
