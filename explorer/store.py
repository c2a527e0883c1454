"""The evaluation store: one SQLite file (WAL mode, so the app reads while a run writes).

An evaluation is keyed by content: the experiment key (hashes of every checkpoint, merge method
and parameters, merged keys), the task's evaluation identity (evaluator, parameters, data
fingerprint) and the coefficient vector. Each result is committed as soon as it is measured, so a
crash or Ctrl-C loses at most the evaluation in progress. A file that is not ours is reported,
never overwritten.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from .errors import StoreError

APPLICATION_ID = 0x4D455850  # "MEXP"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    meta TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    experiment TEXT NOT NULL,
    task_identity TEXT NOT NULL,
    coeff_key TEXT NOT NULL,
    task TEXT NOT NULL,
    coefficients TEXT NOT NULL,
    value REAL NOT NULL,
    seconds REAL NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (experiment, task_identity, coeff_key)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
"""


def coefficient_key(coefficients) -> str:
    """Canonical text of a coefficient vector (10 decimals), so equal vectors share a key."""
    c = np.asarray(coefficients, dtype=float).ravel()
    return ",".join(f"{x:.10f}" for x in np.round(c, 10) + 0.0)


class Store:
    """Evaluation results on disk. Safe for several readers and writers (processes or threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create its directory ({exc.strerror})") from None
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            tables = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a merge-explorer store ({exc}); move it away or choose another store path") from None
        if existed and app_id != APPLICATION_ID and (app_id != 0 or tables):
            self._conn.close()
            raise StoreError(f"{self.path}: is a SQLite file of another application; refusing to write to it")
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written by a newer merge-explorer (schema {version})")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if app_id != APPLICATION_ID or version != SCHEMA_VERSION:  # new store: the only writes here
                self._conn.execute("PRAGMA journal_mode=WAL")
                with self._conn:
                    self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    self._conn.executescript(SCHEMA)
                    self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._conn.execute("SELECT COUNT(*) FROM experiments").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StoreError(f"{self.path}: locked by another writer for over a minute; try again") from None
            raise StoreError(f"{self.path}: corrupt store ({exc}); move it away to start a new one") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: corrupt store ({exc}); move it away to start a new one") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # experiments -----------------------------------------------------------------------------
    def register_experiment(self, key: str, name: str, meta: dict) -> None:
        now = time.time()
        with self._conn:
            self._conn.execute(
                "INSERT INTO experiments(key, name, meta, created, updated) VALUES (?,?,?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET name=excluded.name, meta=excluded.meta, updated=excluded.updated",
                (key, name, json.dumps(meta, sort_keys=True), now, now),
            )

    def experiments(self) -> list[dict]:
        rows = self._conn.execute(
            "SELECT e.key, e.name, e.meta, e.updated, (SELECT COUNT(DISTINCT coeff_key) FROM evaluations v "
            "WHERE v.experiment = e.key) FROM experiments e ORDER BY e.updated DESC"
        ).fetchall()
        return [dict(key=k, name=n, meta=json.loads(m), updated=u, n_points=c) for k, n, m, u, c in rows]

    # evaluations -----------------------------------------------------------------------------
    def get(self, experiment: str, task_identity: str, coefficients) -> float | None:
        row = self._conn.execute(
            "SELECT value FROM evaluations WHERE experiment=? AND task_identity=? AND coeff_key=?",
            (experiment, task_identity, coefficient_key(coefficients)),
        ).fetchone()
        return None if row is None else float(row[0])

    def put(self, experiment: str, task_identity: str, task: str, coefficients, value: float,
            seconds: float = 0.0, kind: str = "design") -> None:
        """Record one measurement and commit it at once (idempotent for the same key)."""
        if not np.isfinite(value):
            raise StoreError(f"refusing to store non-finite value {value} for task {task!r}")
        c = np.asarray(coefficients, dtype=float).ravel()
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO evaluations(experiment, task_identity, coeff_key, task, coefficients, value,"
                " seconds, kind, created) VALUES (?,?,?,?,?,?,?,?,?)",
                (experiment, task_identity, coefficient_key(c), task, json.dumps(c.tolist()), float(value),
                 float(seconds), kind, time.time()),
            )

    def evaluations(self, experiment: str) -> list[dict]:
        rows = self._conn.execute(
            "SELECT task, task_identity, coefficients, value, seconds, kind, created FROM evaluations "
            "WHERE experiment=? ORDER BY created",
            (experiment,),
        ).fetchall()
        return [dict(task=t, task_identity=i, coefficients=json.loads(c), value=v, seconds=s, kind=k, created=cr)
                for t, i, c, v, s, k, cr in rows]

    def count(self, experiment: str) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM evaluations WHERE experiment=?", (experiment,)).fetchone()[0]

    # file hashes -----------------------------------------------------------------------------
    def hash_cache(self) -> "_HashCache":
        return _HashCache(self._conn)


class _HashCache:
    """dict-like view on the file_hashes table, used by checkpoints.content_hash."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __contains__(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM file_hashes WHERE key=?", (key,)).fetchone() is not None

    def __getitem__(self, key: str) -> str:
        row = self._conn.execute("SELECT digest FROM file_hashes WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def __setitem__(self, key: str, digest: str) -> None:
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO file_hashes(key, digest) VALUES (?,?)", (key, digest))
