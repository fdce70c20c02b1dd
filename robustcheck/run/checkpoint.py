"""Persisting finished runs at once, so an interrupted audit resumes without recomputing them.

One SQLite file per output folder (``DIR/runs.sqlite``). Each row is one run unit: its spec, its
result (score, metrics, status, ...), its per-sample records and its artifacts (PNG bytes).
WAL mode and a busy timeout let several processes append to the same file safely.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from robustcheck.api import Artifact
from robustcheck.errors import InputError
from robustcheck.jsonutil import json_default
from robustcheck.run.history import wal_connection

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    result TEXT NOT NULL,
    records TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    finished TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
"""


def _json_default(value: Any) -> Any:
    """Like :func:`json_default`, but anything else is kept as text (a stored run must not be lost)."""
    try:
        return json_default(value)
    except TypeError:
        return str(value)


def _records_to_json(records: pd.DataFrame) -> str:
    """Per-sample rows, exactly: floats keep all their digits and every column keeps its dtype.

    (``DataFrame.to_json`` rounds floats to 10 digits and ``read_json`` re-infers types, turning
    string columns such as ``"007"`` into integers, so resumed runs would not match fresh ones.)
    """
    cells = records.astype(object).where(records.notna(), None)
    return json.dumps(
        {"columns": [str(c) for c in records.columns], "dtypes": [str(t) for t in records.dtypes], "data": cells.values.tolist()},
        default=_json_default,
    )


def _records_from_json(text: str) -> pd.DataFrame:
    doc = json.loads(text)
    if "dtypes" not in doc:  # written by DataFrame.to_json(orient="split") (robustcheck 0.1.0)
        return pd.read_json(io.StringIO(text), orient="split")
    records = pd.DataFrame(doc["data"], columns=doc["columns"])
    for column, dtype in zip(doc["columns"], doc["dtypes"], strict=True):
        with contextlib.suppress(TypeError, ValueError):
            records[column] = records[column].astype(dtype)
    return records


def artifacts_to_json(artifacts: list[Artifact]) -> str:
    """Artifacts as JSON text (images as base64 PNG); :func:`artifacts_from_json` reads it back."""
    return json.dumps(
        [
            {"title": a.title, "captions": a.captions, "png": [base64.b64encode(p).decode("ascii") for p in a.png_images()]}
            for a in artifacts
        ]
    )


def artifacts_from_json(text: str) -> list[Artifact]:
    return [Artifact(a["title"], [base64.b64decode(p) for p in a["png"]], a["captions"]) for a in json.loads(text)]


class RunStore:
    """Finished runs in ``path`` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.executescript(_SCHEMA)
                row = db.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                elif row[0] > SCHEMA_VERSION:
                    raise InputError(f"{str(self.path)!r} was written by a newer robustcheck (schema {row[0]})")
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot use run store {str(self.path)!r}: {exc}") from exc

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One transaction on a connection closed at the end of the block."""
        return wal_connection(self.path, timeout=30.0)

    def save(self, run_id: str, spec: dict[str, Any], result: dict[str, Any], records: pd.DataFrame, artifacts: list[Artifact]) -> None:
        """Insert or replace one finished run, committed before returning."""
        payload = (
            run_id,
            json.dumps(spec, default=_json_default),
            json.dumps(result, default=_json_default),
            _records_to_json(records),
            artifacts_to_json(artifacts),
        )
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO runs (run_id, spec, result, records, artifacts) VALUES (?, ?, ?, ?, ?)", payload)

    def load(self, run_id: str) -> tuple[dict[str, Any], pd.DataFrame, list[Artifact]] | None:
        """``(result, records, artifacts)`` of a finished run, or None."""
        with self._connect() as db:
            row = db.execute("SELECT result, records, artifacts FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), _records_from_json(row[1]), artifacts_from_json(row[2])

    def run_ids(self) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT run_id FROM runs")}

    def clear(self) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs")
