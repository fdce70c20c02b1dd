"""What an audit uses when nobody says otherwise; shared by the CLI, the audit plan, the runner, the
pytest plugin and the plugin API. Importing it costs nothing (the CLI's ``--help`` reads it)."""

from __future__ import annotations

DEFAULT_MODEL = "digits-cnn"
DEFAULT_OUT = "robustcheck-report"
#: samples per run.
DEFAULT_SAMPLES = 100
#: samples per batch.
DEFAULT_BATCH_SIZE = 64
#: seconds per run; a run over budget ends with status ``timeout``.
DEFAULT_BUDGET_S = 120.0
