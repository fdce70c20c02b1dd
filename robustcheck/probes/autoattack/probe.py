"""The registered probes: ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square`` and the ``autoattack`` ensemble.

Each takes a ``norm`` (``linf`` or ``l2``) and ``epsilons`` (the threat model); see
:mod:`robustcheck.probes.autoattack.base` for the re-check, the 8-bit check, records and metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from robustcheck.params import Param
from robustcheck.probes.autoattack.apgd import apgd, apgd_targeted
from robustcheck.probes.autoattack.base import AttackSession, BatchAttack, ThreatModelProbe
from robustcheck.probes.autoattack.ensemble import PARTS, VERSIONS, PartSettings, autoattack
from robustcheck.probes.autoattack.fab import fab_targeted
from robustcheck.probes.autoattack.square import square_attack


class APGDCE(ThreatModelProbe):
    """APGD-CE (Croce & Hein 2020): projected gradient ascent on cross-entropy with adaptive step size, momentum
    and random restarts."""

    steps = Param(100, "iterations per restart", ge=1)
    restarts = Param(1, "random restarts (each only on samples not yet fooled)", ge=1)
    rho = Param(0.75, "the step size halves at a checkpoint where the loss rose in at most this share of the steps", gt=0, le=1)
    eot = Param(1, "forward passes averaged per gradient (expectation over transformation)", ge=1)
    default_budget_s = 240.0
    cost = "100 steps per epsilon: about 70 s on 100 digits-cnn samples at 8/255 (busy 2-core machine)"

    def attack(self, session: AttackSession, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> BatchAttack:
        assert eps is not None
        outcome = apgd(
            session.model, x, y, eps=eps, norm=self.norm, bounds=session.model.bounds, loss="ce", steps=self.steps,
            restarts=self.restarts, rho=self.rho, eot=self.eot, generator=session.generator, tick=session.tick,
            check_gradients=session.check_gradients,
        )  # fmt: skip
        return BatchAttack(outcome.adversarial)


class APGDT(ThreatModelProbe):
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss towards each of the most likely other classes."""

    steps = Param(100, "iterations per target and restart", ge=1)
    restarts = Param(1, "random restarts per target (each only on samples not yet fooled)", ge=1)
    target_classes = Param(9, "most likely other classes attacked in turn (at most classes - 1)", ge=1)
    rho = Param(0.75, "the step size halves at a checkpoint where the loss rose in at most this share of the steps", gt=0, le=1)
    eot = Param(1, "forward passes averaged per gradient (expectation over transformation)", ge=1)
    default_budget_s = 600.0
    cost = "9 targets x 100 steps per epsilon: about 230 s on 100 digits-cnn samples at 8/255 (busy 2-core machine)"

    def attack(self, session: AttackSession, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> BatchAttack:
        assert eps is not None
        outcome = apgd_targeted(
            session.model, x, y, eps=eps, norm=self.norm, bounds=session.model.bounds, target_classes=self.target_classes,
            steps=self.steps, restarts=self.restarts, rho=self.rho, eot=self.eot, generator=session.generator,
            tick=session.tick, check_gradients=session.check_gradients,
        )  # fmt: skip
        return BatchAttack(outcome.adversarial)


class FABT(ThreatModelProbe):
    """FAB-T (Croce & Hein 2020): targeted minimal-norm boundary attack; records each sample's closest adversarial."""

    minimal = Param(
        False,
        "search every target and restart for each sample's closest adversarial, once for all epsilons "
        "(false: as in AutoAttack, stop at the first adversarial within each epsilon; cheaper)",
    )
    steps = Param(100, "iterations per target and restart", ge=1)
    restarts = Param(1, "runs per target: the first from the clean image, the others from random points", ge=1)
    target_classes = Param(9, "most likely other classes attacked in turn (at most classes - 1)", ge=1)
    alpha_max = Param(0.1, "largest weight of the step from the original image", ge=0, le=1)
    eta = Param(1.05, "overshoot past the linearised boundary", ge=1)
    beta = Param(0.9, "backward step towards the original image after a success", gt=0, lt=1)
    default_budget_s = 600.0
    cost = "9 targets x 100 steps: up to 300 s on 100 digits-cnn samples (minimal=true; busy 2-core machine)"

    @property
    def minimal_norm(self) -> bool:
        return bool(self.minimal)

    def attack(self, session: AttackSession, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> BatchAttack:
        adversarial, norms = fab_targeted(
            session.model, x, y, norm=self.norm, bounds=session.model.bounds, eps=eps,
            restart_radius=max(self.epsilon_grid) or 1.0, target_classes=self.target_classes, steps=self.steps,
            restarts=self.restarts, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
            generator=session.generator, tick=session.tick, check_gradients=session.check_gradients,
        )  # fmt: skip
        closest = [float(v) if np.isfinite(v) else None for v in norms.tolist()]
        return BatchAttack(adversarial, columns={"min_norm": closest})

    def extra_metrics(self, records: pd.DataFrame) -> dict[str, Any]:
        """``median_min_norm``: median norm of the closest adversarial found (``minimal=true``: over every target;
        otherwise of the adversarial that stopped the search), over the clean-correct samples with one."""
        found = pd.to_numeric(records.loc[records["correct"], "min_norm"], errors="coerce").dropna()
        return {"median_min_norm": float(found.median()) if len(found) else None}


class Square(ThreatModelProbe):
    """Square Attack (Andriushchenko et al. 2020): score-based random search in square windows; counts queries."""

    requires = frozenset()
    summed_columns = ("queries",)
    queries = Param(5000, "forward passes per sample and epsilon", ge=1)
    p_init = Param(0.8, "share of the image the first windows cover (halved on a fixed schedule)", gt=0, le=1)
    default_budget_s = 480.0
    cost = "5000 queries per robust sample and epsilon: about 200 s on 100 digits-cnn samples at 8/255 (busy 2-core machine)"

    def attack(self, session: AttackSession, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> BatchAttack:
        assert eps is not None
        found = square_attack(
            session.model, x, y, eps=eps, norm=self.norm, bounds=session.model.bounds, queries=self.queries,
            p_init=self.p_init, generator=session.generator, tick=session.tick,
        )  # fmt: skip
        return BatchAttack(found.adversarial, columns={"queries": found.queries.tolist()})

    def extra_metrics(self, records: pd.DataFrame) -> dict[str, Any]:
        return query_metrics(records)


def query_metrics(records: pd.DataFrame) -> dict[str, Any]:
    """``queries``: total forward passes of Square; ``mean_queries`` per clean-correct sample;
    ``median_queries_fooled``: over the samples Square fooled (queries summed over the epsilons tried)."""
    if "queries" not in records.columns:
        return {}
    queries = pd.to_numeric(records["queries"], errors="coerce").fillna(0)
    attacked = records["correct"].to_numpy(bool)
    fooled = attacked & records["min_epsilon"].notna().to_numpy()
    if "attack" in records.columns:  # in AutoAttack, only the samples Square itself fooled
        fooled &= (records["attack"] == "square").to_numpy()
    return {
        "queries": int(queries.sum()),
        "mean_queries": float(queries[attacked].mean()) if attacked.any() else None,
        "median_queries_fooled": float(queries[fooled].median()) if fooled.any() else None,
    }


class AutoAttack(ThreatModelProbe):
    """AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T and Square, each on the samples still robust;
    version rand: APGD-CE and APGD-DLR with EOT for randomised defenses."""

    summed_columns = ("queries",)
    version = Param("standard", "standard (deterministic models) or rand (randomised defenses, with EOT)", choices=list(VERSIONS))
    attacks = Param(None, "parts to run in this order instead of the version's", type=str, list=True, min_items=1, choices=list(PARTS))
    steps = Param(100, "APGD and FAB iterations per target and restart", ge=1)
    restarts = Param(1, "APGD and FAB restarts per target", ge=1)
    target_classes = Param(9, "targets of APGD-T and FAB-T (most likely other classes; at most classes - 1)", ge=1)
    queries = Param(5000, "Square's forward passes per sample and epsilon", ge=1)
    eot = Param(None, "forward passes averaged per APGD gradient; none: 1 (standard), 20 (rand)", type=int, ge=1)
    default_budget_s = 1500.0
    cost = (
        "the four attacks on the samples still robust: about 740 s on 100 digits-cnn samples and 60 s on 100 "
        "digits-mlp-robust samples at one epsilon (busy 2-core machine)"
    )

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.attacks) if self.attacks is not None else VERSIONS[self.version]

    def attack(self, session: AttackSession, x: torch.Tensor, y: torch.Tensor, eps: float | None) -> BatchAttack:
        assert eps is not None
        eot = self.eot if self.eot is not None else (20 if self.version == "rand" else 1)
        settings = PartSettings(
            steps=self.steps, restarts=self.restarts, target_classes=self.target_classes, queries=self.queries, eot=eot
        )
        outcome = autoattack(
            self.parts, session.model, session.verify, x, y, eps=eps, norm=self.norm, bounds=session.model.bounds,
            settings=settings, generator=session.generator, tick=session.tick, check_gradients=session.check_gradients,
        )  # fmt: skip
        columns: dict[str, list[Any]] = {"attack": list(outcome.fooled_by)}
        if "square" in self.parts:
            columns["queries"] = outcome.queries.tolist()
        return BatchAttack(outcome.adversarial, outcome.fooled, columns)

    def extra_metrics(self, records: pd.DataFrame) -> dict[str, Any]:
        """``fooled_by``: how many samples each part fooled first (at their smallest breaking epsilon);
        ``version`` and ``attacks``: what ran; Square's query counts."""
        by = records["attack"].dropna() if "attack" in records.columns else pd.Series(dtype=object)
        counts = {part: int((by == part).sum()) for part in self.parts}
        return {"version": self.version if self.attacks is None else "custom", "attacks": list(self.parts), "fooled_by": counts, **query_metrics(records)}
