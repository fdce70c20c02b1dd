"""Exceptions with messages meant for users, and the CLI exit codes they map to."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_BELOW_THRESHOLD = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_INTERNAL = 4  # an unexpected exception inside robustcheck (``--debug`` shows the traceback)


class RobustCheckError(Exception):
    """Base class: the message is shown to the user as one line, without a traceback."""


class UsageError(RobustCheckError):
    """Bad command line, configuration or parameter."""


class InputError(RobustCheckError):
    """Bad model, data or file: wrong shape, NaN, values outside bounds, unreadable file."""


class UnknownPluginError(UsageError):
    """A name that no registered plugin carries."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = f"{' ' if close else '. '}Known {kind}s: {', '.join(known)}." if known else ""
        super().__init__(f"unknown {kind} {name!r}{hint}{listing}")
        self.kind, self.name, self.suggestions = kind, name, close


class RequirementError(UsageError):
    """A plugin needs something (gradients, a captioner, a ReLU network) the model does not offer."""


class ProbeTimeout(RobustCheckError):
    """Raised cooperatively by a probe when its time budget is spent."""


def suggest(name: str, known: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for a close match of ``name`` in ``known``, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
