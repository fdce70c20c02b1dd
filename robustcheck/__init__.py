"""robustcheck: robustness and adversarial testing harness for PyTorch image models.

Importing the package is cheap (no torch): the public API is loaded on first attribute access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ImageClassifier": "robustcheck.models.classifier",
    "ImageDataset": "robustcheck.data.dataset",
    "load_data": "robustcheck.data.loading",
    "load_model": "robustcheck.models.loading",
    "Probe": "robustcheck.api",
    "Defense": "robustcheck.api",
    "Verifier": "robustcheck.api",
    "ProbeResult": "robustcheck.api",
    "Artifact": "robustcheck.api",
    "RunContext": "robustcheck.api",
    "register": "robustcheck.registry",
    "create_probe": "robustcheck.plugins",
    "create_defense": "robustcheck.plugins",
    "RunSpec": "robustcheck.run.runner",
    "Runner": "robustcheck.run.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robustcheck' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
