"""Crop selection (Shifman & Weiss 2024) on CIFAR-10 in two geometries: accuracy vs 1-pixel fooling rate.

Both models are small CNNs (:mod:`robustcheck.zoo.cifar`) trained here on 8,000 of the shared CIFAR-10
test images (``../shared/data/cifar10-test-jpeg.npz``) and measured on 1,000 class-balanced images of the
other 2,000 with the ``translation`` probe (realistic 1-pixel moves in 4 directions; an image is fooled
when any move changes its label) and its crop-selection trade-off table:

* ``native``: 32 x 32 images, the standard recipe (random 32 x 32 crops of images reflect-padded by
  4 px); the probe builds the larger canvas with ``border=reflect``, so windows K <= 9.
* ``paper``: the paper's geometry, where the crop sits inside a larger real image and K is large:
  every image is resized once to 156 x 156 (bilinear), the model reads 128 x 128 crops through a 4 x 4
  patchify stem and is trained on random crops anywhere in the image (so every candidate crop is in
  its training distribution); 14 px of real context per side allow K up to 27.

Crop selection keeps the same physical crop unless the best position leaves or enters the window
(probability ~ 2 / (K + 1) per move); when the crop changes it jumps by up to K px. Fooling falls only
where (change rate) x (flip rate of a changed crop) is well below the bare flip rate.

    python benchmarks/bench_crop_selection.py                      # both geometries, ~10 min on 2 cores
    python benchmarks/bench_crop_selection.py --geometry paper --windows 3 9 17 25
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustcheck.data.dataset import ImageDataset, hwc_uint8_to_tensor
from robustcheck.models.classifier import ImageClassifier
from robustcheck.plugins import create_probe
from robustcheck.zoo.cifar import CIFAR_MEAN, CIFAR_STD, held_out_split, train_cifar_cnn

CIFAR_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-test-jpeg.npz"
#: paper geometry: image size after the one resize, model input, patchify stem
PHOTO, CROP, STEM = 156, 128, 4


def measure(
    geometry: str, x: torch.Tensor, y: torch.Tensor, classes: list[str], args: argparse.Namespace
) -> None:
    train, test = held_out_split(y)
    test = test[: args.samples]
    if geometry == "paper":
        x = F.interpolate(x, size=(PHOTO, PHOTO), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        recipe, stem, size, windows = {"crop": CROP, "pad": 0}, STEM, CROP, args.windows
    else:
        recipe, stem, size, windows = {"crop": 32, "pad": 4}, 1, 32, [k for k in args.windows if k <= 9]
    start = time.perf_counter()
    module = train_cifar_cnn(x[train], y[train], stem=stem, epochs=args.epochs, **recipe)
    trained = time.perf_counter() - start
    model = ImageClassifier(
        module,
        bounds=(0.0, 1.0),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        labels=classes,
        input_shape=(3, size, size),
        name=f"cifar-{geometry}",
    )
    data = ImageDataset(x[test], y[test], classes, name=f"cifar10-{geometry}")
    start = time.perf_counter()
    result = create_probe("translation", mode="realistic", windows=windows, examples=0)(
        model, data, batch_size=50
    )
    frame = result.tables[1].frame
    print(
        f"\n== {geometry}: {tuple(x.shape[-2:])} images, model input {size} px; trained in {trained:.0f} s, measured in {time.perf_counter() - start:.0f} s"
    )
    print(
        frame[
            [
                "defense",
                "window",
                "accuracy",
                "fooling_rate",
                "consistency",
                "accuracy_drop",
                "fooling_reduction",
            ]
        ].to_string(index=False)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometry", choices=["native", "paper", "both"], default="both")
    parser.add_argument("--windows", type=int, nargs="+", default=[3, 5, 9, 17, 25])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not CIFAR_NPZ.exists():
        print(f"skipped: CIFAR-10 data not found at {CIFAR_NPZ}")
        return
    torch.set_num_threads(args.threads)
    with np.load(CIFAR_NPZ) as npz:
        x, y = hwc_uint8_to_tensor(npz["x"]), torch.from_numpy(npz["y"].astype(np.int64))
        classes = [str(c) for c in npz["classes"]]
    for geometry in ("native", "paper") if args.geometry == "both" else (args.geometry,):
        measure(geometry, x, y, classes, args)


if __name__ == "__main__":
    main()
