"""The results database: every audit appends its runs here, and leaderboards read it.

One SQLite file (``results.db`` next to the report by default). Each row is one finished run with
what identifies it (model id and a hash of its weights, defense, data, probe and parameters, seed)
and what produced it (robustcheck and library versions, date). The schema is versioned
(``schema_version`` table) and upgraded in place by :data:`MIGRATIONS`, so older files stay usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from robustcheck.errors import InputError

#: Ordered schema migrations: version -> statements bringing the previous version to it.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            model TEXT NOT NULL,
            weights_hash TEXT,
            defense TEXT,
            data TEXT,
            probe TEXT NOT NULL,
            params TEXT NOT NULL,
            samples INTEGER,
            seed INTEGER,
            score REAL,
            clean_accuracy REAL,
            metrics TEXT NOT NULL,
            status TEXT NOT NULL,
            seconds REAL,
            robustcheck_version TEXT,
            environment TEXT,
            created TEXT NOT NULL,
            report TEXT
        )""",
        "CREATE INDEX runs_key ON runs (model, defense, probe, params)",
    ],
    2: ["ALTER TABLE runs ADD COLUMN flags TEXT"],  # validity flags (robustcheck.run.flags), JSON; NULL before
}
SCHEMA_VERSION = max(MIGRATIONS)
COLUMNS = (
    "run_id", "model", "weights_hash", "defense", "data", "probe", "params", "samples", "seed", "score",
    "clean_accuracy", "metrics", "status", "seconds", "robustcheck_version", "environment", "created", "report", "flags",
)  # fmt: skip


@contextlib.contextmanager
def wal_connection(path: Path, *, timeout: float, autocommit: bool = False) -> Iterator[sqlite3.Connection]:
    """A WAL-mode connection (concurrent readers and writers) that is closed at the end of the block.

    Without ``autocommit`` the block is one transaction, committed or rolled back at its end;
    with it, the caller issues ``BEGIN``/``COMMIT`` itself. (``with sqlite3.connect(...)`` alone
    commits but leaves the connection open.)
    """
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None if autocommit else "DEFERRED")
    try:
        db.execute("PRAGMA journal_mode=WAL")
        if autocommit:
            yield db
        else:
            with db:
                yield db
    finally:
        db.close()


def weights_hash(module: Any) -> str:
    """SHA-256 (16 hex digits) over a module's parameter and buffer names, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ResultsDB:
    """Append-only run history in one SQLite file, safe for concurrent writers (WAL, busy timeout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                self._migrate(db)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot use results database {str(self.path)!r}: {exc}") from exc

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return wal_connection(self.path, timeout=60.0, autocommit=True)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # one writer migrates; others wait, then see the new version
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise InputError(f"{str(self.path)!r} has schema {current}, newer than this robustcheck ({SCHEMA_VERSION})")
            for version in sorted(v for v in MIGRATIONS if v > current):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def append(self, results: dict[str, Any], *, report: str | None = None, hashes: dict[str, str] | None = None) -> int:
        """Append every run of a results.json-shaped dict; return how many rows were added."""
        rows = list(_rows(results, report, hashes or {}))
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            db.execute("COMMIT")
        return len(rows)

    def frame(self) -> pd.DataFrame:
        """Every stored run, oldest first, with ``params`` and ``metrics`` decoded."""
        with self._connect() as db:
            frame = pd.read_sql_query(f"SELECT id, {', '.join(COLUMNS)} FROM runs ORDER BY id", db)
        return _decode(frame)


def _decode(frame: pd.DataFrame) -> pd.DataFrame:
    frame["params"] = frame["params"].map(json.loads)
    frame["metrics"] = frame["metrics"].map(json.loads)
    frame["flags"] = frame["flags"].map(lambda text: json.loads(text) if isinstance(text, str) and text else [])
    return frame


def _rows(results: dict[str, Any], report: str | None, hashes: dict[str, str]) -> Iterable[tuple[Any, ...]]:
    environment = json.dumps(results.get("environment", {}), sort_keys=True)
    for run in results.get("runs", []):
        metrics = run.get("metrics") or {}
        yield (
            run.get("run_id", ""), run["model"], hashes.get(run["model"]), run.get("defense"), run.get("data"),
            run["probe"], json.dumps(run.get("params") or {}, sort_keys=True), run.get("samples"), run.get("seed"),
            run.get("score"), metrics.get("clean_accuracy"), json.dumps(metrics), run.get("status", "ok"),
            run.get("seconds"), results.get("robustcheck_version"), environment, results.get("created", ""), report,
            json.dumps(run.get("flags") or []),
        )  # fmt: skip


def runs_frame(sources: Iterable[str | Path]) -> pd.DataFrame:
    """Runs from results databases and/or ``results.json`` files (or folders holding one)."""
    frames = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise InputError(f"no results database or results.json at {str(source)!r}")
        if path.suffix == ".json":
            try:
                results = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{str(path)!r} is not valid JSON: {exc}") from exc
            if not isinstance(results, dict) or "runs" not in results:
                raise InputError(f"{str(path)!r} is not a robustcheck results.json (no 'runs')")
            report = path.parent / "report.html"
            rows = list(_rows(results, str(report) if report.is_file() else None, {}))
            frame = _decode(pd.DataFrame(rows, columns=list(COLUMNS)))
        else:
            frame = ResultsDB(path).frame()
        frame["source"] = str(source)
        frames.append(frame)
    if not frames:
        raise InputError("no results given")
    return pd.concat(frames, ignore_index=True)
