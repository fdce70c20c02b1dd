"""Measurements of caption attacks and their report: metrics, per-sample records, the comparison table, image rows.

An :class:`Evaluation` collects, per ``(mode, eps)`` (``eps = 0``: the clean images), the
adversarial captions of the attacked samples in order (``TargetPlan.attacked(mode)``), their
captions by the transfer model, and the perturbation norms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustcheck.api import Artifact, Table
from robustcheck.data.captions import CaptionDataset
from robustcheck.ops.bleu import corpus_bleu
from robustcheck.ops.metrics import epsilon_key
from robustcheck.probes.captions.goals import TargetPlan, succeeded

Key = tuple[str, float]  # (mode, eps)


@dataclass
class Evaluation:
    """Everything measured for one attack method: per ``(mode, eps)`` captions, transfer captions and norms.

    ``examples`` keeps the first batch of adversarials ``(B, C, H, W)`` per key for the report;
    ``attack_seconds`` / ``attacked_images`` time the attacks only (not the GAN's training).
    """

    method: str
    epsilons: list[float]
    captions: dict[Key, list[str]] = field(default_factory=dict)
    transfer: dict[Key, list[str]] = field(default_factory=dict)
    l2: dict[Key, list[float]] = field(default_factory=dict)
    linf: dict[Key, list[float]] = field(default_factory=dict)
    examples: dict[Key, torch.Tensor] = field(default_factory=dict)
    attack_seconds: float = 0.0
    attacked_images: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    train_steps: int = 0

    def add(
        self, key: Key, captions: list[str], transfer: list[str] | None, x: torch.Tensor, adv: torch.Tensor
    ) -> None:
        """Record one batch: clean ``x`` and adversarial ``adv`` ``(B, C, H, W)`` (CPU) and their captions."""
        delta = (adv - x).flatten(1)
        self.captions.setdefault(key, []).extend(captions)
        if transfer is not None:
            self.transfer.setdefault(key, []).extend(transfer)
        self.l2.setdefault(key, []).extend(delta.norm(dim=1).tolist())
        self.linf.setdefault(key, []).extend(delta.abs().amax(1).tolist())
        self.examples.setdefault(key, adv)

    @property
    def ms_per_image(self) -> float:
        """Milliseconds of attack per attacked image (all modes and epsilons)."""
        return 1000.0 * self.attack_seconds / max(self.attacked_images, 1)

    def rates(
        self, plan: TargetPlan, references: list[str], mode: str, *, transfer: bool = False
    ) -> dict[float, float]:
        """Success rate per epsilon (``0`` = clean) over the samples attacked in ``mode``."""
        store = self.transfer if transfer else self.captions
        sub = plan.subset(plan.attacked(mode))
        out = {}
        for eps in [0.0, *self.epsilons]:
            captions = store.get((mode, eps))
            if captions:
                out[eps] = float(succeeded(captions, sub, references, mode).mean())
        return out


def metrics(
    evaluation: Evaluation,
    plan: TargetPlan,
    references: list[str],
    modes: tuple[str, ...],
    transfer: str | None,
) -> dict[str, Any]:
    """The metrics of ``evaluation`` (see :mod:`robustcheck.probes.captions.attacks` for the keys).

    BLEU and norms are taken at the largest epsilon in the first of ``modes``; ``transfer`` names
    the second captioner (``None``: none).
    """
    top = evaluation.epsilons[-1]
    out: dict[str, Any] = {"method": evaluation.method, "epsilon": top}
    for mode in modes:
        rates = evaluation.rates(plan, references, mode)
        out[f"{mode}_success"] = rates.get(top)
        out[f"{mode}_success_vs_eps"] = {epsilon_key(e): r for e, r in rates.items()}
        if transfer is not None:
            out[f"transfer_{mode}_success"] = evaluation.rates(plan, references, mode, transfer=True).get(top)
    if transfer is not None:
        out["transfer_model"] = transfer
    key = (modes[0], top)
    if key in evaluation.captions:
        keep = plan.attacked(modes[0])
        adv = evaluation.captions[key]
        targets = [references[j] for j in plan.target_index(modes[0])[keep]]
        clean = [plan.clean[i] for i in keep]
        for order in range(1, 5):
            out[f"bleu{order}_target"] = corpus_bleu(adv, targets, order)
            out[f"bleu{order}_clean"] = corpus_bleu(adv, clean, order)
        out["l2"] = float(np.mean(evaluation.l2[key]))
        out["linf"] = float(np.mean(evaluation.linf[key]))
    out["ms_per_image"] = evaluation.ms_per_image
    if evaluation.train_steps:
        out["train_seconds"] = evaluation.train_seconds
        out["train_steps"] = evaluation.train_steps
    return out


def records(
    evaluation: Evaluation, plan: TargetPlan, references: list[str], modes: tuple[str, ...]
) -> pd.DataFrame:
    """One row per attacked sample, mode and epsilon (``0`` = clean)."""
    rows: list[dict[str, Any]] = []
    for mode in modes:
        keep = plan.attacked(mode)
        sub = plan.subset(keep)
        for eps in [0.0, *evaluation.epsilons]:
            key = (mode, eps)
            captions = evaluation.captions.get(key)
            if captions is None:
                continue
            flags = succeeded(captions, sub, references, mode)
            moved = evaluation.transfer.get(key)
            moved_flags = succeeded(moved, sub, references, mode) if moved is not None else None
            for k, i in enumerate(keep):
                rows.append(
                    {
                        "index": int(i),
                        "mode": mode,
                        "epsilon": eps,
                        "reference": references[i],
                        "clean_caption": plan.clean[i],
                        "target": references[plan.target_index(mode)[i]],
                        "keyword": plan.keyword[i] if mode == "keyword" else "",
                        "adversarial_caption": captions[k],
                        "success": bool(flags[k]),
                        "transfer_caption": moved[k] if moved is not None else None,
                        "transfer_success": bool(moved_flags[k]) if moved_flags is not None else None,
                        "l2": evaluation.l2[key][k],
                        "linf": evaluation.linf[key][k],
                    }
                )
    return pd.DataFrame(rows)


def comparison_table(
    evaluations: list[Evaluation],
    plan: TargetPlan,
    references: list[str],
    modes: tuple[str, ...],
    transfer: str | None,
) -> Table:
    """Success per method and epsilon for each mode (and on the transfer model), with ms per image."""
    rows = []
    for ev in evaluations:
        rates = {m: ev.rates(plan, references, m) for m in modes}
        moved = {m: ev.rates(plan, references, m, transfer=True) for m in modes} if transfer else {}
        for eps in ev.epsilons:
            row: dict[str, Any] = {"method": ev.method, "eps": f"{eps * 255:.4g}/255"}
            for m in modes:
                row[f"{m} success"] = rates[m].get(eps)
                if transfer is not None:
                    row[f"transfer {m}"] = moved[m].get(eps)
            row["ms / image"] = round(ev.ms_per_image, 3)
            rows.append(row)
    note = (
        "Success rates on unseen images; 'transfer' captions the same adversarials with "
        f"{transfer or 'no second model'}. ms / image: attack time per attacked image "
        "(the GAN's one-off training is not included; see train_seconds)."
    )
    if len(evaluations) == 1 and evaluations[0].method == "gan":
        note += " Pass compare_pgd=true to add the PGD baseline rows."
    title = (
        "GAN vs PGD caption attacks"
        if len(evaluations) > 1
        else f"{evaluations[0].method.upper()} caption attack"
    )
    return Table(title, pd.DataFrame(rows), note)


def artifacts(
    evaluation: Evaluation,
    data: CaptionDataset,
    plan: TargetPlan,
    references: list[str],
    modes: tuple[str, ...],
    count: int,
) -> list[Artifact]:
    """Up to ``count`` rows per mode of clean / adversarial / amplified perturbation at the largest epsilon."""
    out: list[Artifact] = []
    eps = evaluation.epsilons[-1]
    for mode in modes:
        key = (mode, eps)
        if key not in evaluation.examples:
            continue
        keep = plan.attacked(mode)
        batch = evaluation.examples[key]
        for k in range(min(count, len(batch))):
            i = int(keep[k])
            x, adv = data.x[i], batch[k]
            delta = (adv - x) / (2 * eps) + 0.5  # [-eps, eps] -> [0, 1]
            goal = (
                f"target: {references[plan.target_index(mode)[i]]}"
                if mode == "targeted"
                else f"keyword: {plan.keyword[i]}"
            )
            out.append(
                Artifact(
                    f"{evaluation.method.upper()} {mode}, sample {i}, eps {eps * 255:.4g}/255",
                    [_unit(x, data.bounds), _unit(adv, data.bounds), delta.clamp(0, 1).numpy()],
                    [
                        f"clean: {plan.clean[i]}",
                        f"adversarial: {evaluation.captions[key][k]} ({goal})",
                        f"perturbation x{0.5 / eps:.3g}",
                    ],
                )
            )
    return out


def _unit(image: torch.Tensor, bounds: tuple[float, float]) -> np.ndarray:
    """An image ``(C, H, W)`` in ``bounds`` as a float array in ``[0, 1]``."""
    low, high = bounds
    return ((image - low) / (high - low)).clamp(0, 1).numpy()
