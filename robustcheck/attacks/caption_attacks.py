"""Caption attacks on CNN+LSTM captioners: ``caption-gan`` (Aafaq et al. 2021) and ``caption-pgd``.

Both steer the encoder features -- the hidden layer the decoder reads -- towards those of a
*target image* that carries the desired caption, within an L-infinity ball of radius ``eps``:

* ``caption-gan`` trains a generator ``G(x, x_target, eps) = eps * tanh(...)`` (so
  ``|G| <= eps`` exactly) against a discriminator ``D`` (clean vs perturbed) on a *training* split
  of scenes, with loss ``feature mimicking + gan_weight * GAN loss + norm_weight * L2 hinge``; it
  then attacks unseen images in one forward pass each (no per-image optimisation). One
  generator serves every epsilon (``eps`` is an input) and every target (the target image is).
* ``caption-pgd`` (baseline) optimises each image separately with signed-gradient PGD on feature
  mimicking plus the decoder's negative log-likelihood of the target caption (Show-and-Fool).

Evaluation modes (Aafaq et al.): **targeted** -- the target is another image of the attacked set
with a different caption, success = the adversarial caption equals it exactly; **keyword** -- a
word absent from the clean caption (``keyword`` param, or drawn per sample), the target image is
one whose caption contains it, success = the word appears in the adversarial caption.

Metrics (``results.json``): ``targeted_success`` and ``keyword_success`` at the largest epsilon and
as curves ``*_vs_eps`` (epsilon ``0`` = the clean images); ``bleu{1..4}_target`` /
``bleu{1..4}_clean`` (corpus BLEU of targeted adversarial captions against the targets / the clean
captions, largest epsilon); ``l2`` / ``linf`` (mean perturbation norms there); ``ms_per_image``
(attack time per attacked image; the GAN's training time is ``train_seconds``);
``transfer_targeted_success`` / ``transfer_keyword_success`` (the same adversarials captioned by
``transfer_model``); ``clean_exact_match``. Score = 1 - targeted success at the largest epsilon.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from robustcheck.api import Artifact, Probe, ProbeResult, RunContext, Table
from robustcheck.captioning import CaptionDataset, ImageCaptioner, as_caption_data, corpus_bleu
from robustcheck.data import ImageDataset
from robustcheck.errors import InputError, ProbeTimeout, UsageError
from robustcheck.metrics import epsilon_key

MODES = ("targeted", "keyword")
DEFAULT_EPSILONS = [8 / 255, 16 / 255, 32 / 255, 64 / 255]


# -- targets ------------------------------------------------------------------------------------
@dataclass
class TargetPlan:
    """Per attacked sample: the targeted-mode target and the keyword-mode keyword and target.

    Indices point into the attacked data (targets are other unseen images). ``keyword_target`` is
    ``-1`` where no image carries a keyword absent from the clean caption (sample skipped there).
    """

    clean: list[str]
    target: np.ndarray
    keyword: list[str]
    keyword_target: np.ndarray

    def target_index(self, mode: str) -> np.ndarray:
        return self.target if mode == "targeted" else self.keyword_target


def plan_targets(
    clean: list[str], references: list[str], generator: torch.Generator, keyword: str | None
) -> TargetPlan:
    """Draw (seeded) a target image per sample whose reference caption differs from the clean
    caption, and a keyword absent from the clean caption with a target image containing it."""
    n = len(clean)
    words = [set(r.split()) for r in references]
    vocabulary = sorted(set().union(*words)) if words else []
    target = np.full(n, -1)
    keyword_target = np.full(n, -1)
    keywords: list[str] = []
    for i in range(n):
        order = torch.randperm(n, generator=generator).tolist()
        target[i] = next((j for j in order if references[j] != clean[i]), -1)
        present = set(clean[i].split())
        if keyword is not None:
            word = keyword
        else:
            candidates = [w for w in vocabulary if w not in present]
            word = (
                candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
                if candidates
                else ""
            )
        keywords.append(word)
        if word and word not in present:
            keyword_target[i] = next((j for j in order if word in words[j]), -1)
    if (target < 0).any():
        raise InputError("caption attacks need at least two different captions in the attacked data")
    return TargetPlan(clean, target, keywords, keyword_target)


def succeeded(captions: list[str], plan: TargetPlan, references: list[str], mode: str) -> np.ndarray:
    """Success flags ``(N,)``: exact target caption (targeted) or keyword present (keyword mode)."""
    index = plan.target_index(mode)
    if mode == "targeted":
        return np.array([c == references[j] for c, j in zip(captions, index, strict=True)], dtype=bool)
    return np.array(
        [j >= 0 and w in c.split() for c, w, j in zip(captions, plan.keyword, index, strict=True)], dtype=bool
    )


# -- shared pieces ------------------------------------------------------------------------------
def feature_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample feature-mimicking loss ``(B,)``: squared distance to the target features
    ``(B, D)``, divided by the target's mean squared norm (scale-free across captioners)."""
    scale = target.pow(2).sum(1).mean().clamp_min(1e-8).detach()
    return (features - target).pow(2).sum(1) / scale


def project(
    x: torch.Tensor, adv: torch.Tensor, eps: torch.Tensor | float, bounds: tuple[float, float]
) -> torch.Tensor:
    """``adv`` clipped to the L-inf ball of radius ``eps`` (scalar or ``(B, 1, 1, 1)``) around ``x`` and to ``bounds``."""
    adv = torch.max(torch.min(adv, x + eps), x - eps)
    return adv.clamp(*bounds)


@dataclass
class Evaluation:
    """Everything measured for one attack method: per (mode, eps) captions, flags and norms."""

    method: str
    epsilons: list[float]
    captions: dict[tuple[str, float], list[str]] = field(default_factory=dict)
    transfer: dict[tuple[str, float], list[str]] = field(default_factory=dict)
    l2: dict[tuple[str, float], list[float]] = field(default_factory=dict)
    linf: dict[tuple[str, float], list[float]] = field(default_factory=dict)
    examples: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)
    attack_seconds: float = 0.0
    attacked_images: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    train_steps: int = 0

    def add(
        self,
        key: tuple[str, float],
        captions: list[str],
        transfer: list[str] | None,
        x: torch.Tensor,
        adv: torch.Tensor,
    ) -> None:
        delta = (adv - x).flatten(1)
        self.captions.setdefault(key, []).extend(captions)
        if transfer is not None:
            self.transfer.setdefault(key, []).extend(transfer)
        self.l2.setdefault(key, []).extend(delta.norm(dim=1).tolist())
        self.linf.setdefault(key, []).extend(delta.abs().amax(1).tolist())

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.attack_seconds / max(self.attacked_images, 1)


class CaptionAttack(Probe):
    """Shared engine: plan targets, :meth:`prepare`, attack batch by batch, measure, report."""

    requires = frozenset({"captioner"})
    method: ClassVar[str] = "attack"
    score_doc = (
        "1 - targeted success rate at the largest epsilon (fraction of unseen images whose adversarial "
        "caption is not exactly the attacker's target caption)."
    )
    common_defaults: ClassVar[dict[str, Any]] = {
        "epsilons": DEFAULT_EPSILONS,
        "mode": "both",
        "keyword": None,
        "transfer_model": "auto",
        "examples": 4,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = {**CaptionAttack.common_defaults, **cls.defaults}

    def validate(self) -> None:
        eps = self.params["epsilons"]
        if (
            not isinstance(eps, list)
            or not eps
            or not all(isinstance(e, (int, float)) and 0 < e < math.inf for e in eps)
        ):
            raise UsageError(
                f"probe {self.name!r}: epsilons must be a non-empty list of positive finite numbers, got {eps}"
            )
        self.params["epsilons"] = sorted(float(e) for e in eps)
        if self.params["mode"] not in ("both", *MODES):
            raise UsageError(
                f"probe {self.name!r}: mode must be 'both', 'targeted' or 'keyword', got {self.params['mode']!r}"
            )
        if self.params["examples"] < 0:
            raise UsageError(f"probe {self.name!r}: examples must be >= 0, got {self.params['examples']}")

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.params["mode"] == "both" else (self.params["mode"],)

    # -- to implement --------------------------------------------------------------------------
    def prepare(
        self, model: ImageCaptioner, data: CaptionDataset, evaluation: Evaluation, context: RunContext
    ) -> None:
        """Work done once before attacking (the GAN trains its generator here)."""

    def attack(
        self, model: ImageCaptioner, x: torch.Tensor, x_target: torch.Tensor, target_tokens: torch.Tensor, eps: float,
        success: Any,
    ) -> torch.Tensor:  # fmt: skip
        """Adversarials ``(B, C, H, W)`` within ``eps`` of ``x`` and ``model.bounds``; ``success(captions)``
        returns the success flags of candidate captions (PGD uses it to stop early)."""
        raise NotImplementedError

    # -- running -------------------------------------------------------------------------------
    def run(self, model: ImageCaptioner, data: ImageDataset, context: RunContext) -> ProbeResult:
        self.check_requirements(model)
        data = as_caption_data(data)
        model.validate(data.x, what=f"data {data.name!r}")
        transfer = self._transfer_model(model)
        clean = model.caption(data.x)
        plan = plan_targets(clean, data.texts, context.generator(), self.params["keyword"])
        evaluation = Evaluation(self.method, self.params["epsilons"])
        with model.eval_mode():
            self.prepare(model, data, evaluation, context)
            status, message = self.evaluate(model, transfer, data, plan, evaluation, context)
        return self.result(model, transfer, data, plan, [evaluation], status, message)

    def _transfer_model(self, model: ImageCaptioner) -> ImageCaptioner | None:
        spec = self.params["transfer_model"]
        if spec == "auto":  # the built-in pair: attack one, caption with the other
            spec = "digits-captioner-b" if model.name == "digits-captioner" else None
        if spec is None:
            return None
        from robustcheck.loading import load_model

        other = load_model(spec)
        if not getattr(other, "is_captioner", False):
            raise UsageError(f"probe {self.name!r}: transfer_model {spec!r} is not a captioner")
        if (
            other.input_shape is not None
            and model.input_shape is not None
            and other.input_shape != model.input_shape
        ):
            raise UsageError(
                f"probe {self.name!r}: transfer_model {spec!r} takes {other.input_shape}, model takes {model.input_shape}"
            )
        return other  # type: ignore[return-value]

    def evaluate(
        self,
        model: ImageCaptioner,
        transfer: ImageCaptioner | None,
        data: CaptionDataset,
        plan: TargetPlan,
        evaluation: Evaluation,
        context: RunContext,
    ) -> tuple[str, str]:
        """Attack every sample at every epsilon in every mode, batch by batch; returns (status, message)."""
        references = data.texts
        tokens = model.vocabulary.encode_batch(references).to(model.device)
        for start in range(0, len(data), context.batch_size):
            try:
                context.check_time()
            except ProbeTimeout as exc:
                if start == 0:
                    raise
                return "timeout", f"{exc}: {start} of {len(data)} samples attacked"
            rows = torch.arange(start, min(start + context.batch_size, len(data)))
            x = data.x[rows].to(model.device)
            for mode in self.modes:
                index = torch.as_tensor(plan.target_index(mode)[rows.numpy()])
                usable = index >= 0  # keyword mode: samples with a reachable keyword only
                if not usable.any():
                    continue
                xs, tgt = x[usable.to(x.device)], index[usable]
                sub = rows[usable]
                sub_plan = _subplan(plan, sub.numpy())
                self._record(evaluation, (mode, 0.0), model, transfer, xs, xs)
                for eps in self.params["epsilons"]:
                    success = _success_fn(model, sub_plan, references, mode)
                    begin = time.perf_counter()
                    adv = self.attack(model, xs, data.x[tgt].to(model.device), tokens[tgt], eps, success)
                    evaluation.attack_seconds += time.perf_counter() - begin
                    evaluation.attacked_images += len(xs)
                    self._record(evaluation, (mode, eps), model, transfer, xs, adv)
            evaluation.samples += len(rows)
            context.advance(len(rows))
        return "ok", ""

    @staticmethod
    def _record(
        evaluation: Evaluation, key: tuple[str, float], model: ImageCaptioner, transfer: ImageCaptioner | None,
        x: torch.Tensor, adv: torch.Tensor,
    ) -> None:  # fmt: skip
        adv = adv.detach()
        captions = model.caption(adv)
        other = transfer.caption(adv.to(transfer.device)) if transfer is not None else None
        evaluation.add(key, captions, other, x.cpu(), adv.cpu())
        if key not in evaluation.examples:
            evaluation.examples[key] = adv.cpu()

    # -- results -------------------------------------------------------------------------------
    def result(
        self,
        model: ImageCaptioner,
        transfer: ImageCaptioner | None,
        data: CaptionDataset,
        plan: TargetPlan,
        evaluations: list[Evaluation],
        status: str,
        message: str,
    ) -> ProbeResult:
        main = evaluations[0]
        n = main.samples
        if n == 0:
            raise ProbeTimeout("time budget spent before the first batch finished")
        references = data.texts[:n]
        plan = _subplan(plan, np.arange(n))
        metrics = self._metrics(main, plan, references, transfer)
        metrics["clean_exact_match"] = float(
            np.mean([c == r for c, r in zip(plan.clean, references, strict=True)])
        )
        metrics["samples"] = n
        for other in evaluations[1:]:
            extra = self._metrics(other, plan, references, transfer)
            for key in ("targeted_success", "keyword_success", "ms_per_image", "transfer_targeted_success"):
                if key in extra:
                    metrics[f"{other.method}_{key}"] = extra[key]
            if other.ms_per_image > 0:
                metrics[f"speedup_vs_{other.method}"] = other.ms_per_image / max(main.ms_per_image, 1e-9)
        targeted = metrics.get("targeted_success")
        score = 1.0 - targeted if targeted is not None else None
        records = self._records(main, plan, references)
        tables = [self._table(evaluations, plan, references, transfer)]
        artifacts = self._artifacts(main, data, plan, references)
        return ProbeResult(score, metrics, records, artifacts, status=status, message=message, tables=tables)

    def _rates(
        self, evaluation: Evaluation, plan: TargetPlan, references: list[str], mode: str, transfer: bool
    ) -> dict[float, float]:
        """Success rate per epsilon (0 = clean) over the samples attacked in ``mode``."""
        store = evaluation.transfer if transfer else evaluation.captions
        keep = np.flatnonzero(plan.target_index(mode) >= 0)
        sub = _subplan(plan, keep)
        out = {}
        for eps in [0.0, *evaluation.epsilons]:
            captions = store.get((mode, eps))
            if captions is None:
                continue
            out[eps] = float(succeeded(captions, sub, references, mode).mean()) if len(captions) else 0.0
        return out

    def _metrics(
        self, evaluation: Evaluation, plan: TargetPlan, references: list[str], transfer: ImageCaptioner | None
    ) -> dict[str, Any]:
        top = evaluation.epsilons[-1]
        metrics: dict[str, Any] = {"method": evaluation.method, "epsilon": top}
        for mode in self.modes:
            rates = self._rates(evaluation, plan, references, mode, transfer=False)
            metrics[f"{mode}_success"] = rates.get(top)
            metrics[f"{mode}_success_vs_eps"] = {epsilon_key(e): r for e, r in rates.items()}
            if transfer is not None:
                transfer_rates = self._rates(evaluation, plan, references, mode, transfer=True)
                metrics[f"transfer_{mode}_success"] = transfer_rates.get(top)
        if transfer is not None:
            metrics["transfer_model"] = transfer.name
        mode = self.modes[0]
        key = (mode, top)
        if key in evaluation.captions:
            keep = np.flatnonzero(plan.target_index(mode) >= 0)
            adv = evaluation.captions[key]
            targets = [references[plan.target_index(mode)[i]] for i in keep]
            clean = [plan.clean[i] for i in keep]
            for order in range(1, 5):
                metrics[f"bleu{order}_target"] = corpus_bleu(adv, targets, order)
                metrics[f"bleu{order}_clean"] = corpus_bleu(adv, clean, order)
            metrics["l2"] = float(np.mean(evaluation.l2[key]))
            metrics["linf"] = float(np.mean(evaluation.linf[key]))
        metrics["ms_per_image"] = evaluation.ms_per_image
        if evaluation.train_steps:
            metrics["train_seconds"] = evaluation.train_seconds
            metrics["train_steps"] = evaluation.train_steps
        return metrics

    def _records(self, evaluation: Evaluation, plan: TargetPlan, references: list[str]) -> pd.DataFrame:
        """One row per attacked sample, mode and epsilon (0 = clean)."""
        rows: list[dict[str, Any]] = []
        for mode in self.modes:
            keep = np.flatnonzero(plan.target_index(mode) >= 0)
            sub = _subplan(plan, keep)
            for eps in [0.0, *evaluation.epsilons]:
                key = (mode, eps)
                if key not in evaluation.captions:
                    continue
                captions = evaluation.captions[key]
                flags = succeeded(captions, sub, references, mode)
                transfer = evaluation.transfer.get(key)
                transfer_flags = succeeded(transfer, sub, references, mode) if transfer is not None else None
                for k, i in enumerate(keep[: len(captions)]):
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
                            "transfer_caption": transfer[k] if transfer is not None else None,
                            "transfer_success": bool(transfer_flags[k])
                            if transfer_flags is not None
                            else None,
                            "l2": evaluation.l2[key][k],
                            "linf": evaluation.linf[key][k],
                        }
                    )
        return pd.DataFrame(rows)

    def _table(
        self,
        evaluations: list[Evaluation],
        plan: TargetPlan,
        references: list[str],
        transfer: ImageCaptioner | None,
    ) -> Table:
        rows = []
        for ev in evaluations:
            rates = {m: self._rates(ev, plan, references, m, transfer=False) for m in self.modes}
            moved = (
                {m: self._rates(ev, plan, references, m, transfer=True) for m in self.modes}
                if transfer
                else {}
            )
            for eps in ev.epsilons:
                row: dict[str, Any] = {"method": ev.method, "eps": f"{eps * 255:.4g}/255"}
                for m in self.modes:
                    row[f"{m} success"] = rates[m].get(eps)
                    if transfer is not None:
                        row[f"transfer {m}"] = moved[m].get(eps)
                row["ms / image"] = round(ev.ms_per_image, 3)
                rows.append(row)
        note = (
            "Success rates on unseen images; 'transfer' captions the same adversarials with "
            f"{transfer.name if transfer else 'no second model'}. ms / image: attack time per attacked image "
            "(the GAN's one-off training is not included; see train_seconds)."
        )
        if len(evaluations) == 1 and evaluations[0].method == "gan":
            note += " Pass compare_pgd=true to add the PGD baseline rows."
        return Table(
            "GAN vs PGD caption attacks"
            if len(evaluations) > 1
            else f"{evaluations[0].method.upper()} caption attack",
            pd.DataFrame(rows),
            note,
        )

    def _artifacts(
        self, evaluation: Evaluation, data: CaptionDataset, plan: TargetPlan, references: list[str]
    ) -> list[Artifact]:
        """Clean / adversarial / amplified perturbation rows at the largest epsilon."""
        out: list[Artifact] = []
        eps = evaluation.epsilons[-1]
        low, high = data.bounds
        for mode in self.modes:
            key = (mode, eps)
            if key not in evaluation.examples:
                continue
            keep = np.flatnonzero(plan.target_index(mode) >= 0)
            adv_batch = evaluation.examples[key]
            for k in range(min(self.params["examples"], len(adv_batch))):
                i = int(keep[k])
                x, adv = data.x[i], adv_batch[k]
                delta = (adv - x) / (2 * eps) + 0.5  # [-eps, eps] -> [0, 1]
                target = references[plan.target_index(mode)[i]]
                goal = f"target: {target}" if mode == "targeted" else f"keyword: {plan.keyword[i]}"
                out.append(
                    Artifact(
                        f"{evaluation.method.upper()} {mode}, sample {i}, eps {eps * 255:.4g}/255",
                        [_unit(x, low, high), _unit(adv, low, high), delta.clamp(0, 1).numpy()],
                        [
                            f"clean: {plan.clean[i]}",
                            f"adversarial: {evaluation.captions[key][k]} ({goal})",
                            f"perturbation x{0.5 / eps:.3g}",
                        ],
                    )
                )
        return out


def _unit(image: torch.Tensor, low: float, high: float) -> np.ndarray:
    return ((image - low) / (high - low)).clamp(0, 1).numpy()


def _subplan(plan: TargetPlan, rows: np.ndarray) -> TargetPlan:
    return TargetPlan(
        [plan.clean[i] for i in rows],
        plan.target[rows],
        [plan.keyword[i] for i in rows],
        plan.keyword_target[rows],
    )


def _success_fn(model: ImageCaptioner, plan: TargetPlan, references: list[str], mode: str) -> Any:
    """``success(adv) -> bool tensor (B,)`` for a batch aligned with ``plan``."""

    def success(adv: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(succeeded(model.caption(adv.detach()), plan, references, mode))

    return success


# -- the GAN ------------------------------------------------------------------------------------
class PerturbationGenerator(nn.Module):
    """``G(x, x_target, eps) -> delta`` with ``|delta| <= eps`` exactly (``eps * tanh``).

    Inputs: images ``x`` and targets ``x_target`` ``(B, C, H, W)`` rescaled to ``[0, 1]`` and the
    per-sample budget ``eps`` ``(B,)`` in image units. A two-scale conv net (full and half
    resolution) sees ``x``, ``x_target``, their difference and an ``eps`` plane.
    """

    def __init__(self, channels: int = 1, width: int = 32) -> None:
        super().__init__()
        w = width
        self.full = nn.Sequential(
            nn.Conv2d(3 * channels + 1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU()
        )
        self.coarse = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
        )
        self.out = nn.Sequential(
            nn.Conv2d(3 * w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, x_target: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        e = eps.view(-1, 1, 1, 1).to(x)
        plane = (e * 4.0).expand(-1, 1, *x.shape[2:])  # eps is ~0.03..0.25: bring it to unit scale
        a = self.full(torch.cat([x, x_target, x_target - x, plane], 1))
        b = F.interpolate(self.coarse(a), size=a.shape[2:], mode="nearest")
        return e * torch.tanh(self.out(torch.cat([a, b], 1)))


class Discriminator(nn.Module):
    """Clean (1) vs perturbed (0) logit ``(B,)`` for images ``(B, C, H, W)`` in ``[0, 1]``."""

    def __init__(self, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class CaptionGAN(CaptionAttack):
    """Generator attack on the captioner's hidden features (Aafaq et al. 2021); see the module docstring.

    Params: ``steps`` / ``batch_size`` / ``lr`` / ``max_train_seconds`` of generator training;
    ``gan_weight`` (GAN loss), ``norm_weight`` and ``norm_bound`` (hinge on ``||delta||_2`` above
    ``norm_bound`` times the largest L2 norm the L-inf ball allows); ``train_data`` (data spec of the
    training scenes; ``auto``: the attacked data's own training split, e.g. digits-scenes
    split=train); ``compare_pgd`` also runs ``caption-pgd`` on the same samples and targets
    (``pgd_steps``) for the comparison table.
    """

    name = "caption-gan"
    method = "gan"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 400,
        "batch_size": 32,
        "lr": 2e-3,
        "max_train_seconds": 120.0,
        "gan_weight": 0.01,
        "norm_weight": 0.1,
        "norm_bound": 0.8,
        "width": 16,
        "train_data": "auto",
        "train_samples": 2000,
        "compare_pgd": False,
        "pgd_steps": 50,
    }

    def validate(self) -> None:
        super().validate()
        p = self.params
        for key in ("steps", "batch_size", "width", "train_samples", "pgd_steps"):
            if p[key] < 1:
                raise UsageError(f"probe {self.name!r}: {key} must be >= 1, got {p[key]}")
        for key in ("lr", "max_train_seconds"):
            if not p[key] > 0:
                raise UsageError(f"probe {self.name!r}: {key} must be positive, got {p[key]}")
        for key in ("gan_weight", "norm_weight", "norm_bound"):
            if not p[key] >= 0:
                raise UsageError(f"probe {self.name!r}: {key} must be >= 0, got {p[key]}")

    def run(self, model: ImageCaptioner, data: ImageDataset, context: RunContext) -> ProbeResult:
        if not self.params["compare_pgd"]:
            return super().run(model, data, context)
        self.check_requirements(model)
        data = as_caption_data(data)
        model.validate(data.x, what=f"data {data.name!r}")
        transfer = self._transfer_model(model)
        plan = plan_targets(model.caption(data.x), data.texts, context.generator(), self.params["keyword"])
        gan = Evaluation("gan", self.params["epsilons"])
        baseline = CaptionPGD(
            epsilons=self.params["epsilons"],
            mode=self.params["mode"],
            keyword=self.params["keyword"],
            steps=self.params["pgd_steps"],
        )
        pgd = Evaluation("pgd", self.params["epsilons"])
        with model.eval_mode():
            self.prepare(model, data, gan, context)
            status, message = self.evaluate(model, transfer, data, plan, gan, context)
            if status == "ok":
                try:
                    status, message = baseline.evaluate(model, transfer, data, plan, pgd, context)
                except ProbeTimeout as exc:
                    status, message = "timeout", f"{exc} before the PGD baseline finished its first batch"
        if pgd.samples < gan.samples:  # compare on the same samples only
            return self.result(
                model, transfer, data, plan, [gan], "timeout", message or "PGD baseline did not finish"
            )
        return self.result(model, transfer, data, plan, [gan, pgd], status, message)

    # -- training ------------------------------------------------------------------------------
    def _train_data(self, data: CaptionDataset) -> CaptionDataset:
        spec = self.params["train_data"]
        if spec == "auto":
            spec = data.meta.get("train_data")
            if spec is None:
                raise UsageError(
                    f"probe {self.name!r} trains its generator on other images than it attacks: data {data.name!r} names "
                    "no training split, pass train_data=SPEC"
                )
        from robustcheck.data import load_data

        name, _, _ = str(spec).partition(":")
        train = load_data(
            str(spec), **({"n": self.params["train_samples"]} if name == "digits-scenes" else {})
        )
        return as_caption_data(train).head(self.params["train_samples"])

    def prepare(
        self, model: ImageCaptioner, data: CaptionDataset, evaluation: Evaluation, context: RunContext
    ) -> None:
        """Train ``G`` and ``D`` on the training split (seeded). Stops after ``steps``, ``max_train_seconds``
        or half of the run's remaining time budget, whichever comes first (``train_steps`` says which)."""
        train = self._train_data(data)
        model.validate(train.x, what=f"training data {train.name!r}")
        p = self.params
        gen = context.generator()
        channels = train.x.shape[1]
        generator, disc = _seeded_modules(
            gen, lambda: PerturbationGenerator(channels, p["width"]), lambda: Discriminator(channels)
        )
        self.generator, disc = generator.to(model.device), disc.to(model.device)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=p["lr"], betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=p["lr"], betas=(0.5, 0.999))
        eps_choices = torch.tensor(p["epsilons"])
        low, high = model.bounds
        x_all = train.x.to(model.device)
        begin = time.perf_counter()
        stop = begin + p["max_train_seconds"]
        if context.deadline is not None:  # leave at least half of the run's remaining budget for attacking
            stop = min(stop, begin + 0.5 * max(context.deadline - time.monotonic(), 0.0))
        with model.frozen():
            with torch.no_grad():
                features = torch.cat([model.encode(x_all[i : i + 256]) for i in range(0, len(x_all), 256)])
            for step in range(p["steps"]):
                if time.perf_counter() > stop and step > 0:
                    break
                i = torch.randint(len(train), (p["batch_size"],), generator=gen)
                j = torch.randint(len(train), (p["batch_size"],), generator=gen)
                eps = eps_choices[torch.randint(len(eps_choices), (p["batch_size"],), generator=gen)].to(
                    model.device
                )
                x, x_t = x_all[i], x_all[j]
                adv = self._perturb(x, x_t, eps, (low, high))
                delta = (adv - x).flatten(1)
                limit = eps * math.sqrt(delta.shape[1])  # the largest L2 norm inside the L-inf ball
                loss_feat = feature_loss(model.encode(adv), features[j.to(model.device)]).mean()
                loss_gan = F.binary_cross_entropy_with_logits(
                    disc(_to_unit(adv, low, high)), torch.ones(len(x), device=x.device)
                )
                loss_norm = F.relu(delta.norm(dim=1) / limit - p["norm_bound"]).mean()
                loss = loss_feat + p["gan_weight"] * loss_gan + p["norm_weight"] * loss_norm
                opt_g.zero_grad()
                loss.backward()
                opt_g.step()
                if p["gan_weight"] > 0:  # D: clean (1) vs perturbed (0)
                    real = disc(_to_unit(x, low, high))
                    fake = disc(_to_unit(adv.detach(), low, high))
                    loss_d = F.binary_cross_entropy_with_logits(
                        real, torch.ones_like(real)
                    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
                    opt_d.zero_grad()
                    loss_d.backward()
                    opt_d.step()
                evaluation.train_steps = step + 1
        evaluation.train_seconds = time.perf_counter() - begin
        self.generator.eval()

    def _perturb(
        self, x: torch.Tensor, x_target: torch.Tensor, eps: torch.Tensor, bounds: tuple[float, float]
    ) -> torch.Tensor:
        """``x + G(x, x_target, eps)`` projected on the ball and ``bounds`` (differentiable)."""
        low, high = bounds
        delta = self.generator(_to_unit(x, low, high), _to_unit(x_target, low, high), eps)
        return project(x, x + delta, eps.view(-1, 1, 1, 1), bounds)

    @torch.no_grad()
    def attack(
        self, model: ImageCaptioner, x: torch.Tensor, x_target: torch.Tensor, target_tokens: torch.Tensor, eps: float,
        success: Any,
    ) -> torch.Tensor:  # fmt: skip
        """One generator forward pass per image."""
        return self._perturb(x, x_target, torch.full((len(x),), eps, device=x.device), model.bounds)


def _to_unit(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return (x - low) / (high - low)


def _seeded_modules(generator: torch.Generator, *builders: Any) -> list[nn.Module]:
    """Build modules with PyTorch's default initialisation drawn from a seed taken from ``generator``,
    so the GAN's start depends on the run seed only (the global RNG state is left untouched)."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [build() for build in builders]


# -- the PGD baseline ---------------------------------------------------------------------------
class CaptionPGD(CaptionAttack):
    """Per-image PGD (L-inf, signed gradients) on feature mimicking plus the decoder's negative
    log-likelihood of the target caption (Show-and-Fool); stops per image once it succeeds
    (checked every ``check_every`` steps). Step size ``step_fraction * eps``."""

    name = "caption-pgd"
    method = "pgd"
    defaults: ClassVar[dict[str, Any]] = {
        "steps": 50,
        "step_fraction": 0.1,
        "feature_weight": 1.0,
        "caption_weight": 1.0,
        "check_every": 10,
    }

    def validate(self) -> None:
        super().validate()
        p = self.params
        if p["steps"] < 1 or p["check_every"] < 1:
            raise UsageError(
                f"probe {self.name!r}: steps and check_every must be >= 1, got {p['steps']}, {p['check_every']}"
            )
        if not 0 < p["step_fraction"] <= 1:
            raise UsageError(
                f"probe {self.name!r}: step_fraction must lie in (0, 1], got {p['step_fraction']}"
            )
        if (
            p["feature_weight"] < 0
            or p["caption_weight"] < 0
            or p["feature_weight"] + p["caption_weight"] == 0
        ):
            raise UsageError(
                f"probe {self.name!r}: feature_weight and caption_weight must be >= 0 and not both 0"
            )

    def attack(
        self, model: ImageCaptioner, x: torch.Tensor, x_target: torch.Tensor, target_tokens: torch.Tensor, eps: float,
        success: Any,
    ) -> torch.Tensor:  # fmt: skip
        p = self.params
        bounds = model.bounds
        with model.frozen():
            with torch.no_grad():
                target = model.encode(x_target)
            length = (target_tokens != model.vocabulary.pad).sum(1).clamp_min(1)
            adv = x.clone()
            done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
            for step in range(p["steps"]):
                active = ~done
                adv_a = adv[active].clone().requires_grad_(True)
                features = model.encode(adv_a)
                loss = p["feature_weight"] * feature_loss(features, target[active])
                if p["caption_weight"] > 0:
                    nll = -model.log_likelihood(features, target_tokens[active]) / length[active]
                    loss = loss + p["caption_weight"] * nll
                (grad,) = torch.autograd.grad(loss.sum(), adv_a)
                with torch.no_grad():
                    adv[active] = project(
                        x[active], adv_a - p["step_fraction"] * eps * grad.sign(), eps, bounds
                    )
                if (step + 1) % p["check_every"] == 0 or step + 1 == p["steps"]:
                    done |= success(adv).to(done.device)
                    if done.all():
                        break
        return adv.detach()
