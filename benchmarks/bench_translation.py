"""Throughput of the batched ``translation`` probe vs naive loops, and the crop-selection trade-off.

All sides measure the same thing on the same model, samples and shifts, in the same process; runs
alternate and the median wall time of each side is reported as images per second:

* ``batched``: the ``translation`` probe (``windows=[]``, no examples): every view of a batch of
  ``--batch-size`` images in one forward pass.
* ``per-shift``: the same probe with one forward pass per shift (batches of the same images).
* ``per-image``: the same probe with one forward pass per image and shift.

Everything but the forward passes is shared, and the metrics must agree (checked). ``--tradeoff`` also
prints the probe's crop-selection table (accuracy vs fooling rate per window K).

    python benchmarks/bench_translation.py --samples 256 --directions 8
    python benchmarks/bench_translation.py --photos ../shared/data/imagenet-samples --samples 16
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

from robustcheck.data.dataset import ImageDataset
from robustcheck.data.formats.folders import load_labelled_photos
from robustcheck.data.loading import load_data
from robustcheck.models.classifier import ImageClassifier
from robustcheck.models.loading import load_model
from robustcheck.ops.shifts import shift_offsets
from robustcheck.plugins import create_probe
from robustcheck.probes.translation.measure import forward_views
from robustcheck.probes.translation.probe import TranslationProbe


def tiny_224(classes: list[str] | None) -> ImageClassifier:
    """An untrained small conv net on 3x224x224 inputs (throughput only; its answers mean nothing)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 7, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1000),
    )  # fmt: skip
    return ImageClassifier(net.eval(), input_shape=(3, 224, 224), labels=classes, name="tiny-224")


class PerShift(TranslationProbe):
    """The probe with one forward pass per shift (the loop one forward pass of all views replaces)."""

    def _forward(
        self, model: ImageClassifier, views: torch.Tensor, captured: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = [forward_views(model, views[s : s + 1], captured) for s in range(len(views))]
        return torch.cat([p for p, _ in parts]), _cat_features([f for _, f in parts], dim=0)


class PerImage(TranslationProbe):
    """The probe with one forward pass per image and shift."""

    def _forward(
        self, model: ImageClassifier, views: torch.Tensor, captured: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = [[forward_views(model, views[s : s + 1, b : b + 1], captured) for b in range(views.shape[1])]
                for s in range(len(views))]  # fmt: skip
        probs = torch.cat([torch.cat([p for p, _ in row], dim=1) for row in rows])
        features = [_cat_features([f for _, f in row], dim=1) for row in rows]
        return probs, _cat_features(features, dim=0)


def _cat_features(parts: list[torch.Tensor | None], dim: int) -> torch.Tensor | None:
    return None if any(p is None for p in parts) else torch.cat(parts, dim=dim)  # type: ignore[arg-type]


def measure(
    probe_class: type[TranslationProbe], model: ImageClassifier, data: ImageDataset, args: argparse.Namespace
) -> dict[str, Any]:
    probe = probe_class(max_shift=args.max_shift, directions=args.directions, windows=[], examples=0)
    return probe(model, data, batch_size=args.batch_size).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--data", default="digits-rgb32")
    parser.add_argument(
        "--photos",
        help="folder with labels.csv (e.g. ../shared/data/imagenet-samples): 256 px photos, tiny 224 model",
    )
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--max-shift", type=int, default=1)
    parser.add_argument("--directions", type=int, default=8, choices=(4, 8))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--tradeoff", action="store_true", help="also print the crop-selection trade-off table"
    )
    parser.add_argument("--windows", default="3,5,9", help="crop-selection windows for --tradeoff")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.photos:
        data = load_labelled_photos(args.photos, size=256, limit=args.samples)
        model = tiny_224(data.classes)
    else:
        model, data = load_model(args.model), load_data(args.data).head(args.samples)
    sides: dict[str, type[TranslationProbe]] = {
        "batched": TranslationProbe,
        "per-shift": PerShift,
        "per-image": PerImage,
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, dict[str, Any]] = {}
    for side in sides.values():  # warm-up (allocator, kernels), not timed: the first side would pay for it
        measure(side, model, data.head(min(len(data), args.batch_size)), args)
    for _ in range(args.repeats):
        for name, side in sides.items():
            start = time.perf_counter()
            results[name] = measure(side, model, data, args)
            times[name].append(time.perf_counter() - start)
    views = 1 + len(shift_offsets(args.max_shift, args.directions))
    print(f"model {model.name}, {len(data)} images of {tuple(data.shape)}, {views} views each, "
          f"batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}")  # fmt: skip
    print(f"{'side':<10} {'seconds':>8} {'images/s':>10} {'vs batched':>11} {'consistency':>12}")
    base = statistics.median(times["batched"])
    for name in sides:
        t = statistics.median(times[name])
        print(
            f"{name:<10} {t:8.3f} {len(data) / t:10.1f} {t / base:10.2f}x {results[name]['consistency']:12.4f}"
        )
    for name, metrics in results.items():  # the same measurement, whatever the batching
        for key in ("consistency", "tv_distance", "representation_change"):
            a, b = metrics[key], results["batched"][key]
            if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-4):
                raise SystemExit(f"{name} disagrees with batched on {key}: {a} vs {b}")

    if args.tradeoff:
        windows = [int(k) for k in args.windows.split(",") if k]
        probe = create_probe(
            "translation", mode="both", windows=windows, examples=0, max_shift=args.max_shift
        )
        result = probe(model, data, batch_size=args.batch_size)
        print()
        print(result.tables[-1].frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
