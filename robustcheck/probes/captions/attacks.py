"""Caption attacks on CNN+LSTM captioners: ``caption-gan`` (Aafaq et al. 2021) and ``caption-pgd``.

Both steer the encoder features -- the hidden layer the decoder reads -- towards those of a
*target image* that carries the desired caption, within an L-infinity ball of radius ``eps``:

* ``caption-gan`` trains a generator ``G(x, x_target, eps) = eps * tanh(...)`` against a
  discriminator on a *training* split of images, then attacks unseen images in one forward pass
  each (:mod:`robustcheck.probes.captions.gan`).
* ``caption-pgd`` (baseline) optimises each image separately with signed-gradient PGD on feature
  mimicking plus the decoder's negative log-likelihood of the target caption (Show-and-Fool).

Targets and the two evaluation modes (targeted caption, keyword injection) are in
:mod:`robustcheck.probes.captions.goals`; measurements and report in
:mod:`robustcheck.probes.captions.results`.

Metrics (``results.json``): ``targeted_success`` and ``keyword_success`` at the largest epsilon and
as curves ``*_vs_eps`` (epsilon ``0`` = the clean images); ``bleu{1..4}_target`` /
``bleu{1..4}_clean`` (corpus BLEU of the adversarial captions of the first mode against the targets
/ the clean captions, largest epsilon); ``l2`` / ``linf`` (mean perturbation norms there);
``ms_per_image`` (attack time per attacked image; the GAN's training time is ``train_seconds``);
``transfer_targeted_success`` / ``transfer_keyword_success`` (the same adversarials captioned by
``transfer_model``); ``clean_exact_match``; with ``compare_pgd``, ``pgd_*`` and ``speedup_vs_pgd``.
Score = 1 - targeted success at the largest epsilon.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np
import torch

from robustcheck.api import Probe, ProbeResult, RunContext
from robustcheck.data.captions import CaptionDataset, as_caption_data
from robustcheck.data.dataset import ImageDataset
from robustcheck.data.loading import load_data
from robustcheck.errors import ProbeTimeout, UsageError
from robustcheck.models.captioner import ImageCaptioner
from robustcheck.models.loading import load_model
from robustcheck.params import Param
from robustcheck.probes.captions import results as report
from robustcheck.probes.captions.gan import (
    Discriminator,
    GANSettings,
    PerturbationGenerator,
    perturb,
    train_gan,
)
from robustcheck.probes.captions.goals import (
    MODES,
    AttackBatch,
    TargetPlan,
    feature_loss,
    plan_targets,
    project,
    success_fn,
)
from robustcheck.probes.captions.results import Evaluation, Key

__all__ = [
    "MODES",
    "AttackBatch",
    "CaptionAttack",
    "CaptionGAN",
    "CaptionPGD",
    "Discriminator",
    "PerturbationGenerator",
    "TargetPlan",
    "plan_targets",
]

DEFAULT_EPSILONS = [8 / 255, 16 / 255, 32 / 255, 64 / 255]
#: ``transfer_model="auto"``: the second captioner for each built-in one (another seed and width).
AUTO_TRANSFER = {"digits-captioner": "digits-captioner-b", "digits-captioner-b": "digits-captioner"}


@dataclass
class _BatchRecords:
    """One batch's captions (``Evaluation.add`` arguments) and attack time, kept until the batch is whole."""

    records: list[tuple[Key, list[str], list[str] | None, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0

    def add(
        self, key: Key, model: ImageCaptioner, transfer: ImageCaptioner | None, x: torch.Tensor, adv: torch.Tensor
    ) -> None:
        """Caption ``adv`` ``(B, C, H, W)`` with both captioners and keep it against clean ``x``."""
        adv = adv.detach()
        moved = transfer.caption(adv.to(transfer.device)) if transfer is not None else None
        self.records.append((key, model.caption(adv), moved, x.cpu(), adv.cpu()))


class CaptionAttack(Probe):
    """Shared engine: plan targets, :meth:`prepare`, attack batch by batch, measure, report."""

    requires = frozenset({"captioner"})
    method: ClassVar[str] = "attack"
    score_doc = (
        "1 - targeted success rate at the largest epsilon (fraction of unseen images whose adversarial "
        "caption is not exactly the attacker's target caption)."
    )

    epsilons = Param(
        DEFAULT_EPSILONS,
        "L-inf budgets in image units, attacked from the smallest up (the largest gives the score)",
        gt=0,
        min_items=1,
        sort=True,
    )
    mode = Param(
        "both", "evaluation: exact target caption, keyword injection or both", choices=("both", *MODES)
    )
    keyword = Param(
        None,
        "the word keyword mode injects (none: drawn per sample from the data's captions)",
        type=str,
        check=lambda word: len(word.split()) == 1,
        check_doc="one word",
    )
    transfer_model = Param(
        "auto",
        "model spec of a second captioner that captions the same adversarials (auto: the built-in pair; none: off)",
        optional=True,
    )
    examples = Param(4, "example images per mode in the report", ge=0)

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode == "both" else (self.mode,)

    # -- to implement --------------------------------------------------------------------------
    def prepare(
        self, model: ImageCaptioner, data: CaptionDataset, evaluation: Evaluation, context: RunContext
    ) -> None:
        """Work done once before attacking (the GAN trains its generator here)."""

    def attack(self, model: ImageCaptioner, batch: AttackBatch, eps: float) -> torch.Tensor:
        """Adversarials ``(B, C, H, W)`` within ``eps`` of ``batch.x`` and inside ``model.bounds``."""
        raise NotImplementedError

    # -- running -------------------------------------------------------------------------------
    def run(self, model: ImageCaptioner, data: ImageDataset, context: RunContext) -> ProbeResult:
        self.check_requirements(model)
        data = as_caption_data(data)
        model.validate(data.x, what=f"data {data.name!r}")
        keyword = self.keyword
        if keyword is not None and keyword not in model.vocabulary.words:
            raise UsageError(
                f"probe {self.name!r}: keyword {keyword!r} is not a word of captioner {model.name!r}"
            )
        transfer = self._transfer_model(model)
        plan = plan_targets(model.caption(data.x), data.texts, context.generator(), keyword)
        with model.eval_mode():
            evaluations, status, message = self.evaluations(model, transfer, data, plan, context)
        return self.result(transfer, data, plan, evaluations, status, message)

    def evaluations(
        self,
        model: ImageCaptioner,
        transfer: ImageCaptioner | None,
        data: CaptionDataset,
        plan: TargetPlan,
        context: RunContext,
    ) -> tuple[list[Evaluation], str, str]:
        """:meth:`prepare`, then :meth:`evaluate`; returns the evaluations to report (this method's first)."""
        evaluation = Evaluation(self.method, self.epsilons)
        self.prepare(model, data, evaluation, context)
        status, message = self.evaluate(model, transfer, data, plan, evaluation, context)
        return [evaluation], status, message

    def _transfer_model(self, model: ImageCaptioner) -> ImageCaptioner | None:
        spec = self.transfer_model
        if spec == "auto":  # the built-in pair: attack one, caption with the other
            spec = AUTO_TRANSFER.get(model.name)
        if spec is None:
            return None
        other = load_model(spec)
        if not isinstance(other, ImageCaptioner):
            raise UsageError(f"probe {self.name!r}: transfer_model {spec!r} is not a captioner")
        if (
            other.input_shape is not None
            and model.input_shape is not None
            and other.input_shape != model.input_shape
        ):
            raise UsageError(
                f"probe {self.name!r}: transfer_model {spec!r} takes {other.input_shape}, model takes {model.input_shape}"
            )
        return other

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
        tokens = model.vocabulary.encode_batch(data.texts).to(model.device)
        for start in range(0, len(data), context.batch_size):
            rows = np.arange(start, min(start + context.batch_size, len(data)))
            try:
                context.check_time()
                batch = self._attack_rows(model, transfer, data, plan, rows, tokens)  # the model may stop it too
            except ProbeTimeout as exc:
                if start == 0:
                    raise
                return "timeout", f"{exc}: {start} of {len(data)} samples attacked"
            for key, captions, moved, x, adv in batch.records:  # a batch counts only once it is whole
                evaluation.add(key, captions, moved, x, adv)
            evaluation.attack_seconds += batch.seconds
            evaluation.attacked_images += batch.images
            evaluation.samples += len(rows)
            context.advance(len(rows))
        return "ok", ""

    def _attack_rows(
        self,
        model: ImageCaptioner,
        transfer: ImageCaptioner | None,
        data: CaptionDataset,
        plan: TargetPlan,
        rows: np.ndarray,
        tokens: torch.Tensor,
    ) -> _BatchRecords:
        """Attack samples ``rows`` at every epsilon in every mode; caption the results with both captioners."""
        batch = _BatchRecords()
        for mode in self.modes:
            index = plan.target_index(mode)[rows]
            sub = rows[index >= 0]  # keyword mode: samples with a reachable keyword only
            if not len(sub):
                continue
            x, tgt = data.x[sub].to(model.device), index[index >= 0]
            batch.add((mode, 0.0), model, transfer, x, x)
            success = success_fn(model, plan.subset(sub), data.texts, mode)
            attack_batch = AttackBatch(x, data.x[tgt].to(model.device), tokens[tgt], success)
            for eps in self.epsilons:
                begin = time.perf_counter()
                adv = self.attack(model, attack_batch, eps)
                batch.seconds += time.perf_counter() - begin
                batch.images += len(x)
                batch.add((mode, eps), model, transfer, x, adv)
        return batch

    def result(
        self,
        transfer: ImageCaptioner | None,
        data: CaptionDataset,
        plan: TargetPlan,
        evaluations: list[Evaluation],
        status: str,
        message: str,
    ) -> ProbeResult:
        """The probe result of ``evaluations`` (the first is this probe's; others are compared to it)."""
        main = evaluations[0]
        n = main.samples
        if n == 0:
            raise ProbeTimeout("time budget spent before the first batch finished")
        references = data.texts[:n]
        plan = plan.subset(np.arange(n))
        other_name = transfer.name if transfer is not None else None
        metrics = report.metrics(main, plan, references, self.modes, other_name)
        metrics["clean_exact_match"] = float(
            np.mean([c == r for c, r in zip(plan.clean, references, strict=True)])
        )
        metrics["samples"] = n
        for other in evaluations[1:]:
            extra = report.metrics(other, plan, references, self.modes, other_name)
            for key in ("targeted_success", "keyword_success", "ms_per_image", "transfer_targeted_success"):
                if key in extra:
                    metrics[f"{other.method}_{key}"] = extra[key]
            metrics[f"speedup_vs_{other.method}"] = other.ms_per_image / max(main.ms_per_image, 1e-9)
        targeted = metrics.get("targeted_success")
        return ProbeResult(
            1.0 - targeted if targeted is not None else None,
            metrics,
            report.records(main, plan, references, self.modes),
            report.artifacts(main, data, plan, references, self.modes, self.examples),
            status=status,
            message=message,
            tables=[report.comparison_table(evaluations, plan, references, self.modes, other_name)],
        )


class CaptionGAN(CaptionAttack):
    """Generator attack on the captioner's hidden features (Aafaq et al. 2021); see the module docstring.

    Params: ``steps`` / ``batch_size`` / ``lr`` / ``max_train_seconds`` / ``width`` of generator
    training; ``gan_weight`` (GAN loss), ``norm_weight`` and ``norm_bound`` (hinge on ``||delta||_2``
    above ``norm_bound`` times the largest L2 norm the L-inf ball allows); ``train_data`` (data spec
    of the training images; ``auto``: the attacked data's own training split, e.g. digits-scenes
    split=train) and ``train_samples``; ``compare_pgd`` also runs ``caption-pgd`` with ``pgd_steps``
    on the same samples and targets for the comparison table.

    Training runs ``steps`` steps, so the same seed gives the same generator on any machine. A run
    whose time budget ends during training stops with status ``timeout``; ``max_train_seconds`` (off by
    default) caps training explicitly, and then results depend on machine speed (``train_steps`` in
    the metrics says how many steps ran).
    """

    default_budget_s = 300.0
    cost = "trains its generator first, 400 steps: about 40 s on digits-captioner, 2 cores"

    name = "caption-gan"
    method = "gan"
    #: the generator trained by the last :meth:`prepare` (``None`` before the first run).
    generator: PerturbationGenerator | None = None

    steps = Param(400, "generator training steps", ge=1)
    batch_size = Param(32, "images per generator training step", ge=1)
    lr = Param(2e-3, "Adam learning rate of generator and discriminator", gt=0)
    max_train_seconds = Param(
        None,
        "cap on generator training time (none: off; results then depend on machine speed)",
        type=float,
        gt=0,
    )
    gan_weight = Param(0.01, "weight of the GAN loss (0: no discriminator)", ge=0)
    norm_weight = Param(0.1, "weight of the L2 hinge on the perturbation", ge=0)
    norm_bound = Param(
        0.8, "share of the largest L2 norm the L-inf ball allows above which the hinge penalises", ge=0
    )
    width = Param(16, "channels of the generator's first layers", ge=1)
    train_data = Param(
        "auto", "data spec of the generator's training images (auto: the attacked data's training split)"
    )
    train_samples = Param(2000, "training images used", ge=1)
    compare_pgd = Param(False, "also run caption-pgd on the same samples and targets for comparison")
    pgd_steps = Param(50, "steps of the caption-pgd comparison", ge=1)

    def evaluations(
        self,
        model: ImageCaptioner,
        transfer: ImageCaptioner | None,
        data: CaptionDataset,
        plan: TargetPlan,
        context: RunContext,
    ) -> tuple[list[Evaluation], str, str]:
        """The GAN's evaluation; with ``compare_pgd``, then the PGD baseline's on the same samples and targets."""
        evaluations, status, message = super().evaluations(model, transfer, data, plan, context)
        if not self.compare_pgd or status != "ok":
            return evaluations, status, message
        baseline = CaptionPGD(
            epsilons=self.epsilons, mode=self.mode, keyword=self.keyword, steps=self.pgd_steps
        )
        pgd = Evaluation(baseline.method, self.epsilons)
        try:
            status, message = baseline.evaluate(model, transfer, data, plan, pgd, context)
        except ProbeTimeout as exc:
            status, message = "timeout", f"{exc} before the PGD baseline finished its first batch"
        if pgd.samples < evaluations[0].samples:  # compare on the same samples only
            return evaluations, "timeout", f"PGD baseline did not finish: {message}"
        return [*evaluations, pgd], status, message

    def _train_data(self, data: CaptionDataset) -> CaptionDataset:
        """The training images: ``train_data``, or the split named by ``data.meta["train_data"]``."""
        spec = self.train_data
        if spec == "auto":
            spec = data.meta.get("train_data")
            if spec is None:
                raise UsageError(
                    f"probe {self.name!r} trains its generator on other images than it attacks: data {data.name!r} "
                    "names no training split, pass train_data=SPEC"
                )
        # digits-scenes renders exactly the scenes asked for; other sources are cut to train_samples
        options = {"n": self.train_samples} if str(spec).partition(":")[0] == "digits-scenes" else {}
        return as_caption_data(load_data(str(spec), **options)).head(self.train_samples)

    def prepare(
        self, model: ImageCaptioner, data: CaptionDataset, evaluation: Evaluation, context: RunContext
    ) -> None:
        """Train the generator on the training split (seeded) for ``steps`` steps, or until
        ``max_train_seconds`` if set; the run's deadline during training is a timeout."""
        train = self._train_data(data)
        model.validate(train.x, what=f"training data {train.name!r}")
        begin = time.perf_counter()
        cap_at = begin + self.max_train_seconds if self.max_train_seconds is not None else math.inf
        deadline_at = (
            begin + (context.deadline - time.monotonic()) if context.deadline is not None else math.inf
        )
        settings = GANSettings(**{f.name: getattr(self, f.name) for f in fields(GANSettings)})
        self.generator, evaluation.train_steps = train_gan(
            model, train.x, self.epsilons, settings, context.generator(), min(cap_at, deadline_at)
        )
        if evaluation.train_steps < self.steps and deadline_at < cap_at:
            raise ProbeTimeout(
                f"time budget spent after {evaluation.train_steps} of {self.steps} generator training steps"
            )
        evaluation.train_seconds = time.perf_counter() - begin

    @torch.no_grad()
    def attack(self, model: ImageCaptioner, batch: AttackBatch, eps: float) -> torch.Tensor:
        """One generator forward pass per image (no captioner call, no gradients)."""
        if self.generator is None:
            raise UsageError(f"probe {self.name!r}: no trained generator yet; run the probe first")
        x = batch.x
        return perturb(
            self.generator, x, batch.x_target, torch.full((len(x),), eps, device=x.device), model.bounds
        )


class CaptionPGD(CaptionAttack):
    """Per-image PGD (L-inf, signed gradients, no random start) on feature mimicking plus the decoder's
    negative log-likelihood per word of the target caption (Show-and-Fool); stops per image once it
    succeeds (checked every ``check_every`` steps). Step size ``step_fraction * eps``."""

    default_budget_s = 300.0
    cost = "50 steps per image, epsilon and mode: about 70 s on 100 digits-scenes, 2 cores"

    name = "caption-pgd"
    method = "pgd"

    steps = Param(50, "PGD steps per image and epsilon", ge=1)
    step_fraction = Param(0.1, "step size as a fraction of eps", gt=0, le=1)
    feature_weight = Param(1.0, "weight of the feature-mimicking loss", ge=0)
    caption_weight = Param(1.0, "weight of the target caption's negative log-likelihood per word", ge=0)
    check_every = Param(10, "steps between success checks (an image stops once it succeeds)", ge=1)

    def validate(self) -> None:
        if self.feature_weight + self.caption_weight == 0:
            raise UsageError("feature_weight and caption_weight must not both be 0")

    def _loss(
        self, model: ImageCaptioner, adv: torch.Tensor, target: torch.Tensor, target_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample objective ``(B,)`` to minimise: weighted feature mimicking plus per-word caption NLL."""
        features = model.encode(adv)
        loss = self.feature_weight * feature_loss(features, target)
        if self.caption_weight > 0:
            words = (target_tokens[:, 1:] != model.vocabulary.pad).sum(1).clamp_min(1)
            loss = loss - self.caption_weight * model.log_likelihood(features, target_tokens) / words
        return loss

    def attack(self, model: ImageCaptioner, batch: AttackBatch, eps: float) -> torch.Tensor:
        """Signed-gradient steps on the images not yet successful, projected on the eps ball and bounds."""
        x, target_tokens = batch.x, batch.target_tokens
        with model.frozen():
            with torch.no_grad():
                target = model.encode(batch.x_target)
            adv = x.clone()
            done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
            for step in range(1, self.steps + 1):
                active = ~done
                adv_a = adv[active].requires_grad_(True)
                loss = self._loss(model, adv_a, target[active], target_tokens[active]).sum()
                (grad,) = torch.autograd.grad(loss, adv_a)
                with torch.no_grad():
                    adv[active] = project(
                        x[active], adv_a - self.step_fraction * eps * grad.sign(), eps, model.bounds
                    )
                if step % self.check_every == 0 or step == self.steps:
                    done |= batch.success(adv).to(done.device)
                    if done.all():
                        break
        return adv.detach()
