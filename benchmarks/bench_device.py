"""Images per second of a ResNet-18-sized classifier on each device robustcheck can use here, in one run.

    python benchmarks/bench_device.py                    # 32x32 inputs (CIFAR-sized), batch 128
    python benchmarks/bench_device.py --size 224 --batch 32

Two workloads through robustcheck's model adapter (:class:`~robustcheck.models.classifier.ImageClassifier`,
moved with ``move_to`` as ``--device`` does): ``predict`` (forward passes, no gradients) and ``attack step``
(forward + backward to the input, what one PGD iteration costs). The CPU is always measured (with
robustcheck's default threads); CUDA and MPS where present. The last column is the speed-up over the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from robustcheck.devices import describe_device, resolve_device
from robustcheck.models.classifier import ImageClassifier
from robustcheck.threads import configure_threads


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet18(num_classes: int = 10, imagenet_stem: bool = False) -> nn.Module:
    """ResNet-18 (11.2 M parameters): 4 stages of 2 basic blocks, widths 64-512."""
    stem: list[nn.Module] = (
        [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        if imagenet_stem
        else [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    )
    layers, width = [], 64
    for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(width, out, stride), BasicBlock(out, out, 1)]
        width = out
    return nn.Sequential(*stem, *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)).eval()


def images_per_second(model: ImageClassifier, x: torch.Tensor, *, gradients: bool, seconds: float) -> float:
    """Throughput of forward (and backward to the input) passes over batch ``x`` for about ``seconds``."""
    y = torch.zeros(len(x), dtype=torch.long, device=model.device)
    x = x.to(model.device)

    def step() -> None:
        if gradients:
            inputs = x.clone().requires_grad_(True)
            nn.functional.cross_entropy(model(inputs), y).backward()
        else:
            with torch.no_grad():
                model(x)

    step()  # warm-up (kernels, allocator)
    _sync(model.device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    _sync(model.device)
    return count * len(x) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image side (default 32; 224 uses the ImageNet stem)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default 5)")
    args = parser.parse_args()
    configure_threads(None)
    devices = [torch.device("cpu")]
    accelerator = resolve_device("auto")
    if accelerator.type != "cpu":
        devices.append(accelerator)
    torch.manual_seed(0)
    network = resnet18(imagenet_stem=args.size >= 128)
    x = torch.rand(args.batch, 3, args.size, args.size)
    print(f"ResNet-18 ({sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters), "
          f"batch {args.batch} x 3 x {args.size} x {args.size}, {torch.get_num_threads()} CPU thread(s)")  # fmt: skip
    if len(devices) == 1:
        print("no GPU here: CPU only (the GPU rows appear where CUDA or MPS is present)")
    print(f"{'device':<40} {'workload':<12} {'images/s':>10} {'vs CPU':>8}")
    base: dict[str, float] = {}
    for device in devices:
        model = ImageClassifier(network, input_shape=(3, args.size, args.size), name="resnet18").move_to(device)
        for workload, gradients in (("predict", False), ("attack step", True)):
            rate = images_per_second(model, x, gradients=gradients, seconds=args.seconds)
            base.setdefault(workload, rate)
            print(f"{describe_device(device):<40} {workload:<12} {rate:>10.1f} {rate / base[workload]:>7.1f}x")


if __name__ == "__main__":
    main()
