"""Our AutoAttack (``autoattack`` probe, plain torch) vs ART's AutoAttack, on the same model and samples, in one run.

Both attack ``digits-mlp-robust`` (the zoo's PGD adversarially trained MLP) on the same samples of the ``digits``
test split at the same epsilon (Linf or L2), in the same process with the same torch thread count. Reported: robust accuracy
of each (re-checked here on the returned adversarials, clipped to the ball) and wall time, with the ratio
``reference / ours`` (> 1: ours faster). The goal of issue 17: our robust accuracy within 0.5 points of the
reference's or lower, and ours faster.

* ``ours``: ``create_probe("autoattack", norm="linf", epsilons=[eps])(model, data, seed=0)``, the standard version
  (APGD-CE, APGD-T with 9 targets, FAB-T with 9 targets, Square with 5000 queries; 100 iterations each), including
  the probe's own re-check, 8-bit re-check and records.
* ``reference``: ``art.attacks.evasion.AutoAttack`` with ART's default parts (APGD-CE and APGD-DLR with 5 restarts
  of 100 iterations, DeepFool, Square with 5000 queries and 5 restarts), ``eps_step = 2 * eps`` (the APGD paper's
  initial step; ART's default 0.1 is meant for eps 0.3).

ART is an optional extra (``pip install robustcheck-harness[reference]``); without it the reference is skipped
with a message.

    python benchmarks/bench_autoattack.py --samples 100 --epsilon 0.15
    python benchmarks/bench_autoattack.py --samples 100 --norm l2 --epsilon 1.0
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from robustcheck.data.loading import load_data
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.params import parse_value
from robustcheck.plugins import create_probe
from robustcheck.probes.autoattack.threat import project
from robustcheck.seeding import seed_everything


def run_ours(model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, batch_size: int) -> tuple[float, float]:
    """Robust accuracy and wall seconds of our standard AutoAttack."""
    from robustcheck.data.dataset import ImageDataset

    data = ImageDataset(x, y, [str(i) for i in range(10)], name="digits")
    probe = create_probe("autoattack", norm=norm, epsilons=[eps])
    start = time.perf_counter()
    result = probe(model, data, seed=0, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return float(result.metrics["robust_accuracy"][next(iter(result.metrics["robust_accuracy"]))]), seconds


def run_reference(
    model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, batch_size: int
) -> tuple[float, float] | None:
    """Robust accuracy and wall seconds of ART's AutoAttack (``None`` when ART is not installed)."""
    try:
        import multiprocess  # noqa: F401  (ART's AutoAttack imports it in generate)
        from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, DeepFool, SquareAttack
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        print("reference: skipped (ART is not installed: pip install 'robustcheck-harness[reference]')")
        return None
    seed_everything(0)
    classifier = PyTorchClassifier(
        model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10, clip_values=(0.0, 1.0)
    )
    # ART's default parts (art/attacks/evasion/auto_attack.py), spelled out only to turn their progress bars off
    art_norm = np.inf if norm == "linf" else 2
    apgd = {"norm": art_norm, "eps": eps, "eps_step": 2 * eps, "max_iter": 100, "targeted": False, "nb_random_init": 5,
            "batch_size": batch_size, "verbose": False}  # fmt: skip
    parts = [
        AutoProjectedGradientDescent(classifier, loss_type="cross_entropy", **apgd),
        AutoProjectedGradientDescent(classifier, loss_type="difference_logits_ratio", **apgd),
        DeepFool(classifier, max_iter=100, epsilon=1e-3, nb_grads=10, batch_size=batch_size, verbose=False),
        SquareAttack(classifier, norm=art_norm, max_iter=5000, eps=eps, p_init=0.8, nb_restarts=5, verbose=False),
    ]
    attack = AutoAttack(classifier, norm=art_norm, eps=eps, eps_step=2 * eps, attacks=parts, batch_size=batch_size)
    images, labels = x.numpy(), y.numpy()
    start = time.perf_counter()
    adversarial = attack.generate(images, labels)
    seconds = time.perf_counter() - start
    # re-check as our probe does: clipped into the ball and the bounds, then the model's verdict
    clipped = project(torch.from_numpy(adversarial).float(), x, eps, norm, (0.0, 1.0))
    accuracy = float((model.predict(clipped).argmax(1) == y).float().mean())
    return accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100, help="first N test digits (default 100)")
    parser.add_argument("--epsilon", type=parse_value, default=0.15, help="epsilon (default 0.15; 8/255 accepted)")
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf", help="threat model norm (default linf)")
    parser.add_argument("--batch-size", type=int, default=500, help="samples per batch, both sides (default 500)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--model", default="digits-mlp-robust", help="a registered classifier on 1x8x8 digits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    data = load_data("digits").head(args.samples)
    x, y = data.x, data.y
    clean = float((model.predict(x).argmax(1) == y).float().mean())
    print(f"model {args.model}, {len(x)} digits, {args.norm} epsilon {args.epsilon:.4g}, clean accuracy {clean:.4f}, {args.threads} thread(s)")
    ours, ours_s = run_ours(model, x, y, args.epsilon, args.norm, args.batch_size)
    print(f"ours      : robust accuracy {ours:.4f}  wall {ours_s:8.1f} s")
    reference = run_reference(model, x, y, args.epsilon, args.norm, args.batch_size)
    if reference is None:
        return
    ref, ref_s = reference
    print(f"reference : robust accuracy {ref:.4f}  wall {ref_s:8.1f} s  (ART AutoAttack, default parts)")
    gap = 100 * (ours - ref)
    verdict = "ok" if gap <= 0.5 else "WEAKER than the reference"
    print(f"robust accuracy ours - reference: {gap:+.2f} points ({verdict}; goal <= +0.5)")
    print(f"wall-time ratio reference / ours: {ref_s / ours_s:.2f}x ({'ours faster' if ref_s > ours_s else 'ours slower'})")


if __name__ == "__main__":
    main()
