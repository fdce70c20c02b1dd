"""Throughput of the 15 common corruptions at the 5 severities (:mod:`robustcheck.ops.corruptions`).

For every corruption-severity pair and image side (32 x 32 with the CIFAR parameters, 224 x 224 with the
ImageNet ones) a batch of ``--batch`` random-content images is corrupted ``--repeats`` times (after one
warm-up call); the median wall time gives images per second. ``--per-image`` also times the same function
on one image at a time (the way the reference implementation works, one PIL/numpy image per call) and
prints the ratio batched / per-image, measured in the same run on the same images.

Images are CIFAR-10 / ImageNet samples bundled with foolbox (tiled to the batch size), so content-dependent
steps (JPEG, clipping) see real statistics.

    python benchmarks/bench_corruptions.py --threads 1
    python benchmarks/bench_corruptions.py --sizes 32 --batch 256 --per-image
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustcheck.data.loading import load_data
from robustcheck.ops.corruptions import CORRUPTIONS, SEVERITIES

SOURCES = {32: "foolbox-cifar10", 224: "foolbox-imagenet"}


def images(side: int, batch: int) -> torch.Tensor:
    """``batch`` sample images of ``side`` x ``side`` (foolbox's bundled samples, repeated)."""
    x = load_data(SOURCES[side]).x if side in SOURCES else torch.rand(8, 3, side, side)
    return x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch].contiguous()


def median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up: caches (swap schedules, resampling matrices) and allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[32, 224], help="image sides (default 32 224)"
    )
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per pair (default 3; median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--per-image", action="store_true", help="also time one image per call (ratio)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, median of {args.repeats}"
    )
    for side in args.sizes:
        x = images(side, args.batch)
        header = f"{'corruption':18s} " + " ".join(f"{'sev ' + str(s):>9s}" for s in SEVERITIES)
        print(f"\n{side} x {side} (images/s{'; batched / per-image' if args.per_image else ''})\n{header}")
        totals = []
        for name, fn in CORRUPTIONS.items():
            cells = []
            for severity in SEVERITIES:
                generator = torch.Generator().manual_seed(0)
                batched = median_seconds(
                    lambda fn=fn, s=severity, g=generator, x=x: fn(x, s, g), args.repeats
                )
                rate = len(x) / batched
                totals.append(rate)
                cell = f"{rate:9.0f}"
                if args.per_image:
                    single = x[:8]
                    per_image = median_seconds(
                        lambda fn=fn, s=severity, g=generator, single=single: [
                            fn(img[None], s, g) for img in single
                        ],
                        args.repeats,
                    )
                    cell += f" ({rate / (len(single) / per_image):.1f}x)"
                cells.append(cell)
            print(f"{name:18s} " + " ".join(cells), flush=True)
        print(f"harmonic mean over the 75 pairs: {statistics.harmonic_mean(totals):.0f} images/s")


if __name__ == "__main__":
    main()
