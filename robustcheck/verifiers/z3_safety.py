"""``z3-safety``: local safety verification after Huang, Kwiatkowska, Wang & Wu, "Safety Verification of Deep
Neural Networks" (CAV 2017), engineered to finish on real networks.

For each correctly classified sample and a region around it, the verifier decides whether some point of the
region changes the decision: SAFE (proved), UNSAFE (with a counterexample re-validated on the float32 model) or
UNKNOWN (per-property timeout, or a violation only within float rounding of the decision boundary). The engine
(:mod:`robustcheck.verifiers.engine`) runs PGD, then interval + CROWN bounds, then Z3 (QF_LRA, exact rational
weights, only unstable ReLUs split, one query per competing class) or the HiGHS MILP backend on what is left
(``engine="milp"``: its SAFE rests on HiGHS's floating-point tolerances unless ``confirm_milp`` has Z3 re-prove
it exactly). ``branching`` runs Z3 inside a branch and bound over the unstable ReLUs.

Regions (``region``): ``linf`` is the L-infinity ball of radius ``eps`` (and each of ``epsilons`` for the
verified-vs-eps curve) clipped to the model bounds; ``manipulation`` is the paper's: ``dims`` dimensions, chosen
by ``selection`` (``activation``: largest deviation from the layer mean; ``gradient``), each moved by up to
``num_span`` steps of ``span``, at the input (``layer`` 0) or at hidden layer ``layer`` (its post-ReLU values).
A hidden-layer region is verified on the rest of the network; a hidden counterexample is mapped back to an input
by solving for a preimage, and reported UNSAFE only if that input misclassifies on the float32 model.

Score: the share of correctly classified samples proved SAFE at ``eps`` (or in the manipulation region).
Metrics: ``verified``, ``falsified``, ``unknown`` (shares of correctly classified samples), ``errors``,
``mean_seconds`` (per property), ``clean_accuracy``, ``mean_unstable_relus``, ``verified_curve``
(eps -> verified share) and ``stage_counts``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pandas as pd

from robustcheck.api import Artifact, ProbeResult, RunContext, Table, Verifier
from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import InputError, ProbeTimeout, RequirementError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops.metrics import epsilon_key
from robustcheck.params import Param
from robustcheck.verifiers import encoding
from robustcheck.verifiers.bounds import compute_bounds
from robustcheck.verifiers.engine import ENGINES, Engine, FloatModel, Options, Outcome, round_into_box
from robustcheck.verifiers.exact import DEFAULT_MAX_OPS
from robustcheck.verifiers.extraction import from_classifier
from robustcheck.verifiers.network import Network
from robustcheck.verifiers.regions import Region, linf_box, manipulation_region
from robustcheck.verifiers.vnnlib import robustness_property

#: upper edges (seconds) of the time histogram bins in the report.
TIME_BINS = (0.1, 1.0, 10.0, 60.0, float("inf"))


class Z3Safety(Verifier):
    """Z3-based local safety verification (Huang et al., CAV 2017) with PGD, CROWN bounds and exact residual queries."""

    name = "z3-safety"
    score_doc = "Share of correctly classified samples proved SAFE (no misclassification anywhere in the region) at eps."
    eps = Param(0.01, "radius of the L-inf region that gives the score (image units)", ge=0)
    epsilons = Param(
        [], "further L-inf radii for the verified-vs-eps curve (region linf)", type=float, list=True, ge=0
    )
    timeout = Param(30.0, "seconds per property before it counts as unknown", gt=0)
    engine = Param("z3", "exact solver for what PGD and the bounds leave open", choices=ENGINES)
    bounds = Param("crown", "bound propagation before the solver", choices=("interval", "crown"))
    region = Param("linf", "L-inf ball or the paper's manipulation region", choices=("linf", "manipulation"))
    layer = Param(0, "layer of the manipulation region (0: the input; k: after hidden layer k)", ge=0)
    dims = Param(4, "dimensions the manipulation region moves", ge=1)
    span = Param(0.05, "step of a manipulated dimension", gt=0)
    num_span = Param(1, "steps each manipulated dimension may move either way", ge=1)
    selection = Param(
        "activation", "how manipulated dimensions are chosen", choices=("activation", "gradient")
    )
    pgd_steps = Param(
        40, "steps of the PGD search for a counterexample that runs first (at least one is made)", ge=0
    )
    pgd_restarts = Param(3, "random starts of that PGD search besides the sample itself", ge=0)
    semantics = Param(
        "float32",
        "what SAFE proves: float32 (the float32 model, rounding included) or real (real-valued network, VNN-COMP)",
        choices=("float32", "real"),
    )
    branching = Param(True, "run Z3 inside a branch and bound over the unstable ReLUs")
    confirm_milp = Param(False, "have Z3 re-prove SAFE verdicts of the MILP engine exactly")
    replay_ops = Param(
        DEFAULT_MAX_OPS, "replay SAFE verdicts of the bounds in exact rational arithmetic up to this many integer "
        "multiply-adds (0: never)", ge=0,
    )
    refine_share = Param(
        0.5, "share of the time left that tightening intermediate bounds by branch and bound may take when the "
        "bounds and a first branch and bound pass leave a disjunct open (0: never)", ge=0.0, le=1.0,
    )
    examples = Param(4, "counterexample images in the report", ge=0)

    def check_requirements(self, model: ImageClassifier) -> None:
        """The model must be a network the verifier can extract (raises naming the offending layer)."""
        super().check_requirements(model)
        try:
            from_classifier(model)
        except InputError as exc:
            raise RequirementError(
                f"verifier {self.name!r} cannot handle model {model.name!r}: {exc}"
            ) from None

    def options(self, seed: int) -> Options:
        """The engine settings of these params (PGD seeded with ``seed``): every parameter that names an
        :class:`Options` field sets it."""
        fields = {f.name for f in dataclasses.fields(Options)}
        return Options(seed=seed, **{key: value for key, value in self.params.items() if key in fields})

    # -- running -------------------------------------------------------------------------------------------
    def run(self, model: ImageClassifier, data: ImageDataset, context: RunContext) -> ProbeResult:
        net = from_classifier(model)
        self._bounds = model.bounds
        verifier = Engine(net, FloatModel.from_classifier(model), self.options(context.seed))
        predictions = model.predict(data.x).argmax(1)
        epsilons = sorted({self.eps, *self.epsilons}) if self.region == "linf" else [self.eps]
        rows: list[dict[str, Any]] = []
        status, message = "ok", ""
        for i in range(len(data)):
            try:
                context.check_time()
            except ProbeTimeout as exc:
                status, message = "timeout", f"{exc}: {i} of {len(data)} samples verified"
                break
            rows.append(self._sample(verifier, net, model, data, i, int(predictions[i]), epsilons, context))
            context.advance(1)
        if not rows:
            raise ProbeTimeout("time budget spent before the first sample was verified")
        records = pd.DataFrame(rows)
        return self._result(model, data, records, epsilons, status, message)

    def _timeout(self, context: RunContext) -> float:
        left = self.timeout
        if context.deadline is not None:
            left = min(left, max(0.5, context.deadline - time.monotonic()))
        return left

    def _sample(self, verifier: Engine, net: Network, model: ImageClassifier, data: ImageDataset, i: int, prediction: int,
                epsilons: list[float], context: RunContext) -> dict[str, Any]:  # fmt: skip
        label = int(data.y[i])
        x = data.x[i].reshape(-1).double().numpy()
        row: dict[str, Any] = {
            "index": i,
            "label": label,
            "prediction": prediction,
            "correct": prediction == label,
        }
        if prediction != label:
            return {**row, "status": "misclassified", "stage": "none", "seconds": 0.0, "unstable_relus": None,
                    "_counterexample": None, "_curve": {}, "_seconds": {}}  # fmt: skip
        per_eps: dict[float, Outcome] = {}
        found: Outcome | None = None
        for eps in epsilons:
            if found is not None:  # a counterexample at a smaller eps lies in every larger ball too
                per_eps[eps] = Outcome("unsafe", found.stage, counterexample=found.counterexample,
                                       output=found.output, unstable=found.unstable, message="from a smaller eps")  # fmt: skip
                continue
            outcome = self._verify_region(verifier, net, model, x, label, eps, context)
            per_eps[eps] = outcome
            if outcome.status == "unsafe":
                found = outcome
        main = per_eps[self.eps]
        cex_pred = int(np.argmax(main.output)) if main.output is not None else None
        row.update(
            status=main.status,
            stage=main.stage,
            seconds=main.seconds,
            unstable_relus=main.unstable,
            queries=main.queries,
            cex_prediction=cex_pred,
            cex_linf=float(np.abs(main.counterexample - x).max())
            if main.counterexample is not None and main.counterexample.shape == x.shape
            else None,
            message=main.message,
            replayed=main.replayed,
            **{f"time_{stage}": t for stage, t in main.stage_seconds.items()},
        )
        row["_counterexample"] = main.counterexample
        row["_curve"] = {epsilon_key(e): o.status for e, o in per_eps.items()}
        row["_seconds"] = {epsilon_key(e): o.seconds for e, o in per_eps.items()}
        return row

    def _verify_region(self, verifier: Engine, net: Network, model: ImageClassifier, x: np.ndarray, label: int, eps: float,
                       context: RunContext) -> Outcome:  # fmt: skip
        timeout = self._timeout(context)
        try:
            if self.region == "linf":
                region = linf_box(x, eps, model.bounds)
            else:
                region = manipulation_region(net, x, label, layer=self.layer, dims=self.dims, span=self.span,
                                             num_span=self.num_span, selection=self.selection, bounds=model.bounds)  # fmt: skip
            if region.layer == 0:
                prop = robustness_property(region.lo, region.hi, label, net.num_outputs)
                return verifier.verify(prop, start=x, grid=region.grid, timeout=timeout)
            return self._verify_hidden(verifier, net, region, label, timeout)
        except (InputError, UsageError):
            raise
        except Exception as exc:  # a solver failure on one property must not lose the others
            return Outcome("error", "none", message=f"{type(exc).__name__}: {exc}")

    def _verify_hidden(
        self, verifier: Engine, net: Network, region: Region, label: int, timeout: float
    ) -> Outcome:
        """Verify the rest of the network on a hidden-layer box; map a hidden counterexample back to an input."""
        start = time.monotonic()
        suffix = net.suffix(region.layer)
        inner = Engine(suffix, FloatModel.from_network(suffix), verifier.options)
        prop = robustness_property(region.lo, region.hi, label, net.num_outputs, "hidden-region")
        outcome = inner.verify(prop, start=region.center, grid=region.grid, timeout=timeout)
        if outcome.status != "unsafe" or outcome.counterexample is None:
            outcome.message = f"hidden layer {region.layer}: {outcome.message}"
            return outcome
        left = timeout - (time.monotonic() - start)
        preimage = find_preimage(
            net, region.layer, outcome.counterexample, verifier.options.engine, self._bounds, max(left, 0.1)
        )
        times = dict(outcome.stage_seconds)
        times["preimage"] = time.monotonic() - start - sum(times.values())
        if preimage is None:
            return Outcome("unknown", outcome.stage, time.monotonic() - start, unstable=outcome.unstable, stage_seconds=times,
                           message=f"hidden layer {region.layer}: counterexample found but no input preimage (or timeout)")  # fmt: skip
        output = verifier.model(preimage[None])[0]
        rivals = np.delete(output, label)
        if rivals.max() > output[label]:
            return Outcome("unsafe", outcome.stage, time.monotonic() - start, preimage, output, outcome.unstable,
                           f"hidden layer {region.layer}: counterexample mapped back to an input", stage_seconds=times)  # fmt: skip
        return Outcome("unknown", outcome.stage, time.monotonic() - start, unstable=outcome.unstable, stage_seconds=times,
                       message=f"hidden layer {region.layer}: the preimage of the counterexample is classified correctly")  # fmt: skip

    # -- results -------------------------------------------------------------------------------------------
    def _result(self, model: ImageClassifier, data: ImageDataset, records: pd.DataFrame, epsilons: list[float], status: str,
                message: str) -> ProbeResult:  # fmt: skip
        correct = records[records["correct"]]
        n_correct = len(correct)

        def share(column: pd.Series, value: str) -> float:
            return float((column == value).sum() / n_correct) if n_correct else 0.0

        curve = {}
        for eps in epsilons:
            key = epsilon_key(eps)
            statuses = (
                correct["_curve"].map(lambda c, k=key: c.get(k)) if n_correct else pd.Series(dtype=object)
            )
            curve[key] = share(statuses, "safe")
        stage_counts = correct.groupby(["stage", "status"]).size() if n_correct else pd.Series(dtype=int)
        metrics = {
            "verified": share(correct["status"], "safe"),
            # SAFE verdicts whose bound proof was recomputed in exact rational arithmetic
            "verified_replayed": share(correct["replayed"], True) if "replayed" in correct else 0.0,
            "falsified": share(correct["status"], "unsafe"),
            "unknown": share(correct["status"], "unknown"),
            "errors": int((correct["status"] == "error").sum()),
            "mean_seconds": float(correct["seconds"].mean()) if n_correct else 0.0,
            "clean_accuracy": float(records["correct"].mean()),
            "mean_unstable_relus": float(correct["unstable_relus"].dropna().mean()) if n_correct else 0.0,
            "verified_curve": curve,
            "stage_counts": {f"{stage}/{st}": int(n) for (stage, st), n in stage_counts.items()},
            "engine": self.engine,
            "region": self.region,
            "samples": len(records),
        }
        artifacts = self._artifacts(model, data, records)
        tables = [self._status_table(records), self._time_table(correct)]
        public = records.drop(columns=[c for c in records.columns if c.startswith("_")])
        public["curve"] = records["_curve"].map(
            lambda c: ", ".join(f"{k}:{v}" for k, v in c.items()) if isinstance(c, dict) else ""
        )
        return ProbeResult(
            metrics["verified"], metrics, public, artifacts, tables=tables, status=status, message=message
        )

    def _status_table(self, records: pd.DataFrame) -> Table:
        columns = [
            "index",
            "label",
            "prediction",
            "status",
            "stage",
            "seconds",
            "unstable_relus",
            "cex_prediction",
            "message",
        ]
        frame = records[[c for c in columns if c in records.columns]].copy()
        frame["seconds"] = frame["seconds"].astype(float).round(3)
        return Table("verdict per sample", frame, f"region {self.region}, eps {self.eps:g}, engine {self.engine}; "
                     "stage = what decided (attack: PGD found a counterexample; bounds: CROWN proved; z3 / milp: the exact solver)")  # fmt: skip

    def _time_table(self, correct: pd.DataFrame) -> Table:
        """Histogram of per-property seconds, one column per deciding stage."""
        edges = (0.0, *TIME_BINS)
        labels = [
            f"{lo:g}-{hi:g} s" if hi != float("inf") else f">= {lo:g} s"
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ]
        stages = sorted(correct["stage"].unique()) if len(correct) else []
        rows = []
        for label, lo, hi in zip(labels, edges[:-1], edges[1:], strict=True):
            inside = correct[(correct["seconds"] >= lo) & (correct["seconds"] < hi)]
            rows.append(
                {"seconds": label, **{stage: int((inside["stage"] == stage).sum()) for stage in stages}}
            )
        return Table(
            "time per property by deciding stage",
            pd.DataFrame(rows),
            "counts of correctly classified samples",
        )

    def _artifacts(self, model: ImageClassifier, data: ImageDataset, records: pd.DataFrame) -> list[Artifact]:
        """Counterexample images next to the originals."""
        artifacts = []
        shape = tuple(model.input_shape or data.shape)
        unsafe = records[(records["status"] == "unsafe") & records["_counterexample"].notna()].head(
            self.examples
        )
        for _, row in unsafe.iterrows():
            cex = np.asarray(row["_counterexample"], np.float32)
            if cex.size != int(np.prod(shape)):
                continue  # hidden-layer points have no image
            i = int(row["index"])
            image = cex.reshape(shape)
            clean = data.x[i].numpy()
            delta = image - clean
            scale = float(np.abs(delta).max()) or 1.0
            low, high = model.bounds
            artifacts.append(
                Artifact(
                    f"sample {i} (label {model.label(int(row['label']))}): {row['stage']}",
                    [(clean - low) / (high - low), (image - low) / (high - low), 0.5 + 0.5 * delta / scale],
                    [
                        f"original: {model.label(int(row['prediction']))}",
                        f"counterexample: {model.label(int(row['cex_prediction']))}",
                        f"difference x{1 / scale:.3g}",
                    ],  # fmt: skip
                )
            )
        return artifacts


def find_preimage(
    net: Network, layer: int, hidden: np.ndarray, engine: str, bounds: tuple[float, float], timeout: float
) -> np.ndarray | None:
    """A flat input in ``bounds`` whose post-ReLU activations at hidden layer ``layer`` equal ``hidden``
    (``z = h`` where ``h > 0``, ``z <= 0`` where ``h = 0``), solved exactly on the prefix network; ``None`` if
    there is none or the solver gave up."""
    prefix = net.prefix(layer)
    lo, hi = np.full(net.num_inputs, float(bounds[0])), np.full(net.num_inputs, float(bounds[1]))
    layer_bounds = compute_bounds(prefix, lo, hi, "crown")
    rows, rhs = [], []
    for j, value in enumerate(hidden):
        unit = np.zeros(prefix.num_outputs)
        unit[j] = 1.0
        rows.append(unit)
        rhs.append(max(float(value), 0.0))
        if value > 0:
            rows.append(-unit)
            rhs.append(-float(value))
    spec, rhs_arr = np.array(rows), np.array(rhs)
    if engine == "milp":
        result = encoding.milp_query(prefix, lo, hi, layer_bounds, spec, rhs_arr, timeout)
    else:
        result = encoding.z3_query(encoding.Z3Network(prefix), lo, hi, layer_bounds, spec, rhs_arr, timeout)
    if result.status != "sat" or result.x is None:
        return None
    return round_into_box(result.x, lo, hi)
