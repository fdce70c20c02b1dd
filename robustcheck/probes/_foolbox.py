"""Importing foolbox 3 safely.

foolbox 3.3.4 has two import-time traps: it imports GitPython, which fails where no ``git`` is on
PATH unless ``GIT_PYTHON_REFRESH=quiet`` is set, and it imports the deprecated
``scipy.ndimage.filters`` module, a DeprecationWarning that ``-W error`` turns fatal.
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType


def import_foolbox() -> ModuleType:
    """``import foolbox`` with both import traps defused."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox
    return foolbox


def foolbox_version() -> str:
    """Installed foolbox version, without importing it."""
    try:
        return version("foolbox")
    except PackageNotFoundError:
        return "not installed"
