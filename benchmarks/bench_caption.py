"""Benchmark: caption-gan vs caption-pgd on digits-captioner, success vs eps, both modes, transfer, time.

One run on unseen digits-scenes (test split); the GAN trains on the training split first. Prints the
GAN-vs-PGD table (success per eps for targeted and keyword modes, transfer to digits-captioner-b,
milliseconds per attacked image) and the issue's aims checked on the numbers of this same run.

    python benchmarks/bench_caption.py                 # defaults: 100 scenes, 1000 GAN steps
    python benchmarks/bench_caption.py --samples 40 --steps 300 --pgd-steps 30   # quick
"""

from __future__ import annotations

import argparse
import time

import torch

from robustcheck.data.captions import digits_scenes
from robustcheck.models.loading import load_model
from robustcheck.ops.metrics import epsilon_key
from robustcheck.probes.captions.attacks import CaptionGAN


def rises(curve: dict[str, float]) -> bool:
    """Non-decreasing over increasing epsilon (``"0"`` first) and above its start at the largest one."""
    values = list(curve.values())
    return all(a <= b for a, b in zip(values, values[1:], strict=False)) and values[-1] > values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="unseen test scenes attacked")
    parser.add_argument("--steps", type=int, default=1000, help="GAN training steps")
    parser.add_argument("--max-train-seconds", type=float, default=None, help="cap on GAN training time (default: run all steps)")
    parser.add_argument("--pgd-steps", type=int, default=50)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8, 16, 32, 64], help="in 1/255 units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model("digits-captioner")
    data = digits_scenes("test").head(args.samples)
    epsilons = [e / 255 for e in args.epsilons]
    probe = CaptionGAN(
        epsilons=epsilons,
        steps=args.steps,
        max_train_seconds=args.max_train_seconds,
        compare_pgd=True,
        pgd_steps=args.pgd_steps,
    )
    start = time.perf_counter()
    result = probe(model, data, seed=args.seed)
    total = time.perf_counter() - start
    m = result.metrics
    print(
        f"caption-gan vs caption-pgd on digits-captioner, {m['samples']} unseen scenes, seed {args.seed}, "
        f"{args.threads} thread(s), status {result.status} {result.message}"
    )
    print(
        f"clean exact match {m['clean_exact_match']:.3f}; GAN training {m['train_steps']} steps in {m['train_seconds']:.1f} s; "
        f"whole run {total:.1f} s"
    )
    print(result.tables[0].frame.to_string(index=False))
    print()
    for key in ("bleu1_target", "bleu4_target", "bleu1_clean", "bleu4_clean", "l2", "linf"):
        print(f"GAN {key} at eps {args.epsilons[-1]:g}/255: {m[key]:.3f}")
    top = epsilon_key(epsilons[-1])
    gan_t, gan_k = m["targeted_success"], m["keyword_success"]
    pgd_t, pgd_k = m["pgd_targeted_success"], m["pgd_keyword_success"]
    speedup = m["speedup_vs_pgd"]
    curve_t, curve_k = m["targeted_success_vs_eps"], m["keyword_success_vs_eps"]
    aims = [
        ("success 0 at eps 0 (both modes)", curve_t["0"] == 0 and curve_k["0"] == 0),
        ("targeted success rises with eps (GAN)", rises(curve_t)),
        ("keyword success rises with eps (GAN)", rises(curve_k)),
        ("keyword >= targeted at every eps (GAN)", all(curve_k[e] >= curve_t[e] for e in curve_t)),
        (f"GAN targeted >= 0.30 at {top}: {gan_t:.3f}", gan_t >= 0.30),
        (f"GAN keyword >= 0.50 at {top}: {gan_k:.3f}", gan_k >= 0.50),
        (f"GAN >= half of PGD (targeted {gan_t:.3f} vs {pgd_t:.3f}, keyword {gan_k:.3f} vs {pgd_k:.3f})",
         gan_t >= pgd_t / 2 and gan_k >= pgd_k / 2),
        (f"GAN >= 20x less time per image ({m['ms_per_image']:.3f} vs {m['pgd_ms_per_image']:.3f} ms, {speedup:.0f}x)", speedup >= 20),
    ]  # fmt: skip
    if "transfer_targeted_success" in m:
        print(
            f"transfer to {m['transfer_model']}: GAN targeted {m['transfer_targeted_success']:.3f}, keyword "
            f"{m['transfer_keyword_success']:.3f}; PGD targeted {m['pgd_transfer_targeted_success']:.3f}"
        )
    print()
    for text, ok in aims:
        print(f"[{'met' if ok else 'NOT met'}] {text}")


if __name__ == "__main__":
    main()
