"""Which torch device a run uses: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

``auto`` takes the first accelerator present (CUDA, then Apple's MPS) and the CPU otherwise. A request is
resolved where the run executes (a Ray worker sees the GPUs its task reserved), and refused with one line
when the device is not there, instead of failing deep inside the first batch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from robustcheck.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """``name`` if it reads as a device request, else :class:`UsageError` (no torch needed)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise UsageError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` asks for, present on this machine (:class:`UsageError` where it is not)."""
    import torch  # here: the CLI checks names before it loads torch

    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"device {name!r} asked for, but {why}; use --device cpu or auto")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise UsageError(f"device {name!r} asked for, but Apple's MPS backend is not available here; use --device cpu or auto")
    return device


def describe_device(device: torch.device) -> str:
    """``"cpu"``, or the device with its GPU model (``"cuda:0 (NVIDIA H100 80GB HBM3)"``)."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
