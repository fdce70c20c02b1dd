"""Standard attacks through foolbox 3, as probes: FGSM, PGD (Linf, L2), DeepFool, C&W-L2, Boundary.

Every attack is run at each epsilon in ``epsilons`` (minimisation attacks run once and foolbox
clips their result to each epsilon). Success is *re-checked* by running the target model on the
clipped adversarials: foolbox's own flags are only reported (``foolbox_disagreements``). An
adversarial found within a smaller epsilon also lies within every larger one, so a sample counts
as robust at ``eps`` only if no attack at any epsilon up to ``eps`` fooled it: the robust-accuracy
curve never increases.

With a defense applied, ``adaptive=True`` (default) attacks the defended model end to end;
``adaptive=False`` crafts on the bare model and feeds the result through the defense.
``eot=N`` (> 1) attacks the mean logits over N forward passes (expectation over transformation,
Athalye et al. 2018): for randomised defenses, each gradient then averages N random draws.

Metrics: ``clean_accuracy``; ``robust_accuracy`` (epsilon as a string -> accuracy);
``auc`` (area under the robust-accuracy curve over the epsilon range, in [0, 1]);
``attack_success_rate`` (fooled at the largest epsilon, among clean-correct samples);
``median_min_epsilon`` (over clean-correct samples fooled within the range); ``bounds`` (the model's,
for the validity flags); for the gradient attacks ``zero_gradient_fraction``: the share of samples whose
loss gradient with respect to the input, at the clean image, is exactly zero (records: ``zero_gradient``).

Epsilons must lie within what the model's bounds allow: an Linf epsilon above ``high - low`` (or an L2
radius above ``(high - low) * sqrt(C*H*W)``) can move every pixel anywhere already, so it is refused
before the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustcheck.api import (
    BatchProgress,
    Probe,
    ProbeResult,
    RunContext,
    adversarial_examples,
    check_epsilon_range,
    concat_adversarials,
)
from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import InputError, ProbeTimeout
from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops.metrics import normalized_auc, robust_accuracy_curve
from robustcheck.params import Param
from robustcheck.probes._foolbox import import_foolbox

LINF_EPSILONS = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
L2_EPSILONS = [0.0, 0.25, 0.5, 1.0, 2.0]


class FoolboxAttack(Probe):
    """Base class: subclasses set ``norm``, re-declare ``epsilons`` (their default grid), declare their
    own parameters and implement :meth:`make_attack`."""

    norm: ClassVar[str] = "linf"
    requires = frozenset({"gradients"})
    score_doc = (
        "Normalised area under the robust-accuracy-vs-epsilon curve (1 = every sample stays correctly "
        "classified at every epsilon; 0 = none does)."
    )

    adaptive = Param(True, "with a defense: attack it end to end (false: craft on the bare model)")
    examples = Param(4, "fooled samples shown as clean / adversarial images in the report", ge=0)
    eot = Param(1, "forward passes averaged per attack step (expectation over transformation)", ge=1)
    epsilons = Param(
        LINF_EPSILONS, "perturbation budgets to attack at (sorted)", ge=0, min_items=1, sort=True
    )

    def make_attack(self, fb: Any) -> Any:
        raise NotImplementedError

    def check_requirements(self, model: ImageClassifier) -> None:  # type: ignore[override]
        """The base checks, then the epsilons against the model's bounds (L2: when its input shape is known;
        :meth:`run` checks again with the data's shape)."""
        super().check_requirements(model)
        self.check_epsilons(model, model.input_shape)

    def check_epsilons(self, model: ImageClassifier, shape: Sequence[int] | None) -> None:
        """Refuse epsilons larger than any perturbation within ``model.bounds`` can be (``shape``: ``(C, H, W)``)."""
        check_epsilon_range(self.name, model, self.norm, self.epsilons, shape)

    # -- running -------------------------------------------------------------------------------
    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        self.check_epsilons(model, data.shape)
        surrogate = context.bare_model if context.bare_model is not None and not self.adaptive else model
        rows: list[dict[str, Any]] = []
        clipped_parts, disagreements = [], 0
        status, message = "ok", ""
        for start in range(0, len(data), context.batch_size):
            try:
                context.check_time()
            except ProbeTimeout as exc:
                status, message = "timeout", f"{exc}: {start} of {len(data)} samples attacked"
                break
            x = data.x[start : start + context.batch_size]
            y = data.y[start : start + context.batch_size]
            shown = context.batch_progress(len(x))
            try:
                clipped, fb_success = self._attack(surrogate, x, y, shown)
            except ProbeTimeout as exc:  # the budget ran out inside the attack: keep the finished batches
                status, message = "timeout", f"{exc}: {start} of {len(data)} samples attacked"
                break
            held, batch_rows = self._evaluate(model, x, y, clipped, start)
            zero = self._zero_gradients(surrogate, x, y)
            if zero is not None:
                for row, flag in zip(batch_rows, zero.tolist(), strict=True):
                    row["zero_gradient"] = bool(flag)
            if surrogate is model:  # foolbox judged success on the same model: count where it disagrees
                disagreements += int((fb_success.numpy() == held).sum())
            clipped_parts.append(clipped)
            rows.extend(batch_rows)
            shown.finish()
        if not rows:
            raise ProbeTimeout("time budget spent before the first batch finished")
        records = pd.DataFrame(rows)
        adaptive = bool(self.adaptive) if context.bare_model is not None else None
        metrics = self._metrics(records, disagreements, adaptive)
        metrics["bounds"] = list(model.bounds)
        adversarials = self._at_min_epsilon(data, records, torch.cat(clipped_parts, dim=1))
        artifacts = adversarial_examples(model, data, records, adversarials, self.examples)
        return ProbeResult(
            metrics["auc"], metrics, records, artifacts, status=status, message=message, adversarials=adversarials
        )

    def _at_min_epsilon(self, data: ImageDataset, records: pd.DataFrame, clipped: torch.Tensor) -> torch.Tensor:
        """Per record, the adversarial ``(C, H, W)`` at its ``min_epsilon`` where one fooled it, else the clean image."""
        images = data.x[: len(records)].clone()
        for position, (eps, correct) in enumerate(zip(records["min_epsilon"], records["correct"], strict=True)):
            if correct and pd.notna(eps):  # NaN: never fooled
                images[position] = clipped[self.epsilons.index(float(eps)), position]
        return images

    def _metrics(self, records: pd.DataFrame, disagreements: int, adaptive: bool | None) -> dict[str, Any]:
        """Every metric, from the per-sample records alone (so shards merge exactly).

        A sample is robust at ``epsilons[k]`` if it is classified correctly and no attack up to
        ``epsilons[k]`` fooled it: its ``min_epsilon`` (first breaking epsilon) is missing or larger.
        """
        epsilons: list[float] = self.epsilons
        correct = records["correct"].to_numpy(bool)
        min_epsilon = records["min_epsilon"].to_numpy(float)  # NaN: never fooled
        robust = correct[None, :] & ~(np.asarray(epsilons)[:, None] >= min_epsilon[None, :])
        curve = robust_accuracy_curve(robust, epsilons)
        fooled_final = correct & ~robust[-1]
        broken = min_epsilon[correct & ~np.isnan(min_epsilon)]
        return {
            "clean_accuracy": float(correct.mean()),
            "robust_accuracy": curve,
            "auc": normalized_auc(epsilons, list(curve.values())),
            "attack_success_rate": float(fooled_final.sum() / correct.sum()) if correct.any() else 0.0,
            "median_min_epsilon": float(np.median(broken)) if len(broken) else None,
            "norm": self.norm,
            "adaptive": adaptive,
            # foolbox's success flags contradicting the re-run (only when crafted on the target itself)
            "foolbox_disagreements": int(disagreements),
            "samples": len(records),
            **(
                {"zero_gradient_fraction": float(records["zero_gradient"].astype(bool).mean())}
                if "zero_gradient" in records.columns
                else {}
            ),
        }

    shardable = True

    def merge(self, parts: Sequence[ProbeResult], offsets: Sequence[int]) -> ProbeResult:
        """Concatenate the shards' records (re-indexed) and recompute every metric from them."""
        records = pd.concat(
            [p.records.assign(index=p.records["index"] + offset) for p, offset in zip(parts, offsets, strict=True)],
            ignore_index=True,
        )
        disagreements = sum(int(p.metrics["foolbox_disagreements"]) for p in parts)
        metrics = self._metrics(records, disagreements, parts[0].metrics.get("adaptive"))
        if "bounds" in parts[0].metrics:
            metrics["bounds"] = parts[0].metrics["bounds"]
        artifacts = [a for p in parts for a in p.artifacts][: self.examples]
        timeouts = [p.message for p in parts if p.status == "timeout"]
        status, message = ("timeout", "; ".join(timeouts)) if timeouts else ("ok", "")
        return ProbeResult(
            metrics["auc"], metrics, records, artifacts, status=status, message=message, adversarials=concat_adversarials(parts)
        )

    def _attack(
        self, surrogate: ImageClassifier, x: torch.Tensor, y: torch.Tensor, shown: BatchProgress | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Craft adversarials on ``surrogate``: ``(num_eps, B, C, H, W)`` clipped images and foolbox's success
        flags; ``shown`` advances the progress bar as the epsilons finish."""
        fb = import_foolbox()
        if self.eot > 1:
            surrogate = expectation_over_draws(surrogate, self.eot)
        x, y = x.to(surrogate.device), y.to(surrogate.device)
        low, high = surrogate.bounds
        if x.numel() and (x.min() < low or x.max() > high):  # foolbox would fail a bare assert
            raise InputError(
                f"probe {self.name!r}: input values lie in [{x.min().item():.4g}, {x.max().item():.4g}], "
                f"outside the bounds [{low:g}, {high:g}] of model {surrogate.name!r}"
            )
        with surrogate.eval_mode(), surrogate.frozen():
            fmodel = fb.PyTorchModel(surrogate, bounds=surrogate.bounds, device=surrogate.device)
            try:
                clipped, success = self._run_attack(fb, fmodel, x, y, shown)
            except AssertionError as exc:  # foolbox asserts on inputs outside bounds, with no message
                raise InputError(
                    f"foolbox rejected the inputs of probe {self.name!r}: values in [{x.min().item():.4g}, "
                    f"{x.max().item():.4g}] must lie within the model bounds [{low:g}, {high:g}] ({exc or 'assertion failed'})"
                ) from exc
        return torch.stack([c.detach().cpu() for c in clipped]), torch.stack([s.cpu() for s in success])

    def _zero_gradients(self, surrogate: ImageClassifier, x: torch.Tensor, y: torch.Tensor) -> np.ndarray | None:
        """Per sample: is the gradient of the cross-entropy loss with respect to the input, at the clean
        image, exactly zero on the model the attack crafts on? ``None`` for attacks that use no gradients
        and models without them."""
        if "gradients" not in self.requires or surrogate.gradients == "none":
            return None
        adapter_gradients = getattr(surrogate, "input_gradients", None)
        if callable(adapter_gradients):  # the adapter's own: it also refuses NaN / Inf gradients, naming the model
            grad = adapter_gradients(x, y)
        else:
            with surrogate.eval_mode(), surrogate.frozen(), torch.enable_grad():
                x = x.to(surrogate.device).detach().requires_grad_(True)
                loss = nn.functional.cross_entropy(surrogate(x), y.to(surrogate.device), reduction="sum")
                # zero where the output does not depend on the input at all
                grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
            grad = torch.zeros_like(x) if grad is None else grad
        return (grad.detach().flatten(1) == 0).all(dim=1).cpu().numpy()

    def _run_attack(
        self, fb: Any, fmodel: Any, x: torch.Tensor, y: torch.Tensor, shown: BatchProgress | None = None
    ) -> tuple[list[torch.Tensor], Any]:
        """Per-epsilon clipped adversarials and success flags. A fixed-epsilon attack runs one epsilon per
        foolbox call (what foolbox itself does in one call, in the same order, so the random draws are the
        same), and the progress bar moves after each; a minimisation attack needs one call for all."""
        attack, criterion = self.make_attack(fb), fb.criteria.Misclassification(y)
        if not isinstance(attack, fb.attacks.base.FixedEpsilonAttack):
            _, clipped, success = attack(fmodel, x, criterion, epsilons=self.epsilons)
            return clipped, success
        clipped, success = [], []
        for epsilon in self.epsilons:
            _, one_clipped, one_success = attack(fmodel, x, criterion, epsilons=epsilon)
            clipped.append(one_clipped)
            success.append(one_success)
            if shown is not None:
                shown.part(1 / len(self.epsilons))
        return clipped, success

    def _evaluate(
        self, model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, clipped: torch.Tensor, offset: int
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Re-run ``model`` on clean and adversarial images.

        Returns the per-epsilon flags ``(num_eps, B)`` (correct and the adversarial of this epsilon not
        fooling) and one record per sample; ``min_epsilon`` is the first epsilon at which the sample is
        not robust (misclassified or fooled at that or any smaller epsilon).
        """
        epsilons = self.epsilons
        clean_prob = model.predict(x).softmax(1)
        clean_conf, clean_pred = clean_prob.max(1)
        correct = clean_pred == y
        adv_prob = model.predict(clipped.flatten(0, 1)).softmax(1).view(len(epsilons), len(x), -1)
        adv_conf, adv_pred = adv_prob.max(2)
        held = (correct.unsqueeze(0) & (adv_pred == y.unsqueeze(0))).numpy()
        robust = np.logical_and.accumulate(held, axis=0)
        p = 2 if self.norm == "l2" else float("inf")
        rows = []
        for i in range(len(x)):
            broken = np.flatnonzero(~robust[:, i])
            first = int(broken[0]) if len(broken) else len(epsilons) - 1
            rows.append(
                {
                    "index": offset + i,
                    "label": int(y[i]),
                    "prediction": int(clean_pred[i]),
                    "confidence": float(clean_conf[i]),
                    "correct": bool(correct[i]),
                    # smallest epsilon of the grid at which the sample is misclassified (0 if already clean)
                    "min_epsilon": float(epsilons[first]) if len(broken) else None,
                    "adv_prediction": int(adv_pred[first, i]),
                    "adv_confidence": float(adv_conf[first, i]),
                    "perturbation": float((clipped[first, i] - x[i]).flatten().norm(p=p)),
                }
            )
        return held, rows

class MeanLogits(nn.Module):
    """``(B, C, H, W)`` -> the mean of ``model``'s logits ``(B, K)`` over ``draws`` forward passes.

    The input is tiled into one batch of ``draws * B`` images, so a randomised model draws
    independently for each copy.
    """

    def __init__(self, model: ImageClassifier, draws: int) -> None:
        super().__init__()
        self.model, self.draws = model, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x.repeat(self.draws, *([1] * (x.ndim - 1))))
        return logits.view(self.draws, len(x), -1).mean(dim=0)


def expectation_over_draws(model: ImageClassifier, draws: int) -> ImageClassifier:
    """``model`` averaged over ``draws`` forward passes (EOT), with the same bounds, labels and device."""
    return ImageClassifier(
        MeanLogits(model, draws),
        bounds=model.bounds,
        labels=model.labels,
        input_shape=model.input_shape,
        name=f"{model.name} (EOT x{draws})",
        device=model.device,
    )


class FGSM(FoolboxAttack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015), Linf."""

    norm = "linf"
    in_default_audit = True
    epsilons = Param(
        LINF_EPSILONS, "Linf perturbation budgets to attack at (sorted)", ge=0, min_items=1, sort=True
    )

    def make_attack(self, fb: Any) -> Any:
        return fb.attacks.LinfFastGradientAttack(random_start=False)


class _ProjectedGradient(FoolboxAttack):
    """Projected gradient descent (Madry et al. 2018) with a random start; subclasses pick the norm."""

    in_default_audit = True
    foolbox_attack: ClassVar[str]  # the foolbox class: LinfPGD, L2PGD
    steps = Param(20, "gradient steps per epsilon", ge=1)
    rel_stepsize = Param(0.1, "step size relative to epsilon", gt=0)
    random_start = Param(True, "start from a uniformly random point of the epsilon ball")

    def make_attack(self, fb: Any) -> Any:
        attack = getattr(fb.attacks, self.foolbox_attack)
        return attack(rel_stepsize=self.rel_stepsize, steps=self.steps, random_start=self.random_start)


class PGDLinf(_ProjectedGradient):
    """Projected gradient descent (Madry et al. 2018), Linf, random start."""

    norm = "linf"
    foolbox_attack = "LinfPGD"
    epsilons = Param(LINF_EPSILONS, "Linf perturbation budgets to attack at (sorted)", ge=0, min_items=1, sort=True)


class PGDL2(_ProjectedGradient):
    """Projected gradient descent (Madry et al. 2018), L2, random start."""

    norm = "l2"
    foolbox_attack = "L2PGD"
    epsilons = Param(L2_EPSILONS, "L2 perturbation budgets to attack at (sorted)", ge=0, min_items=1, sort=True)


class DeepFool(FoolboxAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016), L2 minimal perturbation."""

    norm = "l2"
    in_default_audit = True
    epsilons = Param(
        L2_EPSILONS, "L2 budgets the minimal adversarial is clipped to (sorted)", ge=0, min_items=1, sort=True
    )
    steps = Param(50, "maximum number of DeepFool iterations", ge=1)
    candidates = Param(10, "most likely classes considered at each step", ge=2)
    overshoot = Param(0.02, "relative overshoot past the linearised decision boundary", ge=0)

    def make_attack(self, fb: Any) -> Any:
        return fb.attacks.L2DeepFoolAttack(
            steps=self.steps, candidates=self.candidates, overshoot=self.overshoot
        )


class CarliniWagnerL2(FoolboxAttack):
    """Carlini & Wagner L2 attack (2017), minimal perturbation with binary search over the constant."""

    norm = "l2"
    epsilons = Param(
        L2_EPSILONS, "L2 budgets the minimal adversarial is clipped to (sorted)", ge=0, min_items=1, sort=True
    )
    binary_search_steps = Param(5, "binary-search steps over the trade-off constant c", ge=1)
    steps = Param(100, "optimisation steps per binary-search step", ge=1)
    stepsize = Param(0.01, "Adam step size of the optimisation", gt=0)
    confidence = Param(0.0, "logit margin (kappa) an adversarial must reach", ge=0)

    def make_attack(self, fb: Any) -> Any:
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps,
            steps=self.steps,
            stepsize=self.stepsize,
            confidence=self.confidence,
        )


class Boundary(FoolboxAttack):
    """Boundary attack (Brendel et al. 2018): decision-based, needs no gradients, L2."""

    default_budget_s = 240.0
    cost = "500 decision-based steps: about 60 s on 100 digits-cnn samples, 2 cores"

    norm = "l2"
    requires = frozenset()
    epsilons = Param(
        L2_EPSILONS, "L2 budgets the minimal adversarial is clipped to (sorted)", ge=0, min_items=1, sort=True
    )
    steps = Param(500, "maximum number of boundary-walk steps", ge=1)

    def make_attack(self, fb: Any) -> Any:
        return fb.attacks.BoundaryAttack(steps=self.steps)

    def _run_attack(
        self, fb: Any, fmodel: Any, x: torch.Tensor, y: torch.Tensor, shown: BatchProgress | None = None
    ) -> tuple[list[torch.Tensor], Any]:
        """foolbox's BoundaryAttack raises ValueError for the whole batch when its random-noise
        initialisation finds no adversarial start for some sample (and warns first). Run that same
        initialisation here and attack only the samples it found a start for; the others count as
        not fooled (their adversarial is the clean image). Samples misclassified already are not
        attacked either: their adversarial is the clean image itself, and foolbox's walk would divide
        by their zero distance to it (NaN candidates, which the model adapter refuses)."""
        epsilons = self.epsilons
        init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50)  # foolbox's default init_attack
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*failed to draw sufficient random inputs", category=UserWarning)
            starts = init.run(fmodel, x, fb.criteria.Misclassification(y))
        with torch.no_grad():
            wrong = fmodel(x).argmax(1) != y
            found = (fmodel(starts).argmax(1) != y) & ~wrong
        attack = self.make_attack(fb)
        if bool(found.all()):
            _, clipped, success = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=epsilons, starting_points=starts)
            return clipped, success
        clipped = [x.clone() for _ in epsilons]
        success = [wrong.clone() for _ in epsilons]
        if bool(found.any()):
            _, part, part_success = attack(
                fmodel, x[found], fb.criteria.Misclassification(y[found]), epsilons=epsilons, starting_points=starts[found]
            )
            for k in range(len(epsilons)):
                clipped[k][found], success[k][found] = part[k], part_success[k]
        return clipped, success
