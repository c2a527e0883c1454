"""The evaluation store: one SQLite file (WAL mode, so the app reads while a run writes).

An evaluation is keyed by content: the experiment key (hashes of every checkpoint, merge method
and parameters, merged keys), the task's evaluation identity (evaluator and its version, parameters
and the files they name, device kind, precision) and the coefficient vector. Each result is
committed as soon as it is measured, so a crash, Ctrl-C or `kill -9` loses at most the evaluation
in progress. A file that is not ours is reported, never overwritten.

Several processes (a run, app servers, verifications) share one store: every write takes the
write lock up front (`BEGIN IMMEDIATE`) and waits for it, and a transaction that still meets a
busy database is retried, so `database is locked` never reaches the user before `LOCK_WAIT_S`.
Nothing is written until there is a result to keep: a new store file is created with its first
result, and an experiment's registration and new file hashes ride along with its first stored
evaluation, so a command that fails (or only reads) leaves the store as it found it.
"""
from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from explorer.core.design import coefficient_key
from explorer.errors import StoreError

APPLICATION_ID = 0x4D455850  # "MEXP"
SCHEMA_VERSION = 1
LOCK_WAIT_S = 120.0  # how long one operation waits for other writers before giving up
MEMORY = ":memory:"  # a private, throw-away store (Ray workers: only the driver writes the real one)
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
CREATE TABLE IF NOT EXISTS samples (
    experiment TEXT NOT NULL,
    task_identity TEXT NOT NULL,
    coeff_key TEXT NOT NULL,
    task TEXT NOT NULL,
    coefficients TEXT NOT NULL,
    n_total INTEGER NOT NULL,
    scores BLOB NOT NULL,
    seconds REAL NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (experiment, task_identity, coeff_key)
);
CREATE TABLE IF NOT EXISTS told (
    experiment TEXT NOT NULL,
    task_identity TEXT NOT NULL,
    coeff_key TEXT NOT NULL,
    mean REAL NOT NULL,
    std REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (experiment, task_identity, coeff_key)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
"""
SAMPLES_TABLE = SCHEMA.split(";")[2].strip()  # added to stores written before it, with their first sample
TOLD_TABLE = SCHEMA.split(";")[3].strip()  # likewise, with the first prediction told
T = TypeVar("T")
#: Kinds of stored points. Fitted: the design and the adaptive rounds' points. Checks (verify, and
#: each step of a polish) are shown, never fitted; "reference" (base, experts, task arithmetic) and
#: "test" (held-out split) neither.
FIT_KINDS = ("design", "adaptive")
CHECK_KINDS = ("verify", "polish")


def _transient(exc: sqlite3.OperationalError) -> bool:
    """Errors another connection causes (it holds the lock, or a WAL snapshot moved): worth a retry."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class Store:
    """Evaluation results on disk. Safe for several readers and writers (processes or threads)."""

    def __init__(self, path: str | Path, read_only: bool = False):
        """read_only: the file is opened read-only (SQLite `mode=ro`) and never written, not even the
        file-hash cache or an experiment's registration (commands that only read: pick, present mode)."""
        self.memory = str(path) == MEMORY
        self.read_only = bool(read_only) and not self.memory
        self.path = Path(path)
        self._lock = threading.RLock()  # one connection shared by threads (app sessions): one statement at a time
        self._pending: dict[str, tuple[str, dict]] = {}  # experiment key -> (name, meta), written with its first result
        self._pending_hashes: dict[str, str] = {}
        self._conn: sqlite3.Connection | None = None
        self._ready = False  # our schema is there (a new store gets it with its first write)
        if not self.memory:
            try:
                if self.path.exists() and not self.path.is_file():
                    raise StoreError(f"{self.path}: is not a file; choose another store path")
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot use it as a store ({exc.strerror or exc})") from None
        self._retry(self._ensure, False)

    def _exists(self) -> bool:
        try:
            return self.memory or (self.path.is_file() and self.path.stat().st_size > 0)
        except OSError:
            return False

    def _ensure(self, write: bool) -> None:
        """Connect when there is something to read (or, for a write, create the file), and check it is ours."""
        if write and self.read_only:
            raise StoreError(f"{self.path}: opened read-only; nothing was written")
        if self._conn is None:
            existed = self._exists()
            if not existed and not write:
                return  # no store yet: reads find nothing, and nothing is created for them
            if not self.memory and not self.read_only:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"{self.path}: cannot create its directory ({exc.strerror})") from None
            if self.read_only:  # SQLite refuses every write on this connection
                target, uri = f"{self.path.resolve().as_uri()}?mode=ro", True
            else:
                target, uri = (MEMORY if self.memory else str(self.path)), False
            conn = sqlite3.connect(target, uri=uri, timeout=LOCK_WAIT_S / 2, check_same_thread=False)
            try:
                self._ready = self._validate(conn, existed)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        elif not self._ready:
            self._ready = self._validate(self._conn, True)  # another process may have created it meanwhile
        if write and not self._ready:
            self._initialize()

    def _validate(self, conn: sqlite3.Connection, existed: bool) -> bool:
        """Refuse foreign, newer and damaged files (reading only); True when our schema is in place."""
        conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_S / 2 * 1000)}")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
        if existed and app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise StoreError(f"{self.path}: is a SQLite file of another application; refusing to write to it")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer merge-explorer (schema {version}); upgrade to read it")
        if existed and app_id == APPLICATION_ID:
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {' '.join(str(problem).split())}")
            missing = {"experiments", "evaluations", "file_hashes"} - tables
            if version == SCHEMA_VERSION and missing:
                raise sqlite3.DatabaseError(f"table {sorted(missing)[0]!r} is missing")
        if not self.read_only:
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash loses nothing committed
        return app_id == APPLICATION_ID and version == SCHEMA_VERSION

    def _initialize(self) -> None:
        """Give a new store its schema (with its first write, in one transaction)."""
        conn = self._conn
        if not self.memory:
            conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._ready = True

    def _retry(self, operation: Callable[..., T], *args) -> T:
        """Run `operation` under the connection lock; retry while other connections keep the store busy.

        Any other SQLite error means the file is damaged: reported as a StoreError naming it.
        """
        deadline = time.monotonic() + LOCK_WAIT_S
        delay = 0.005
        second_looks = 2  # "malformed" is re-checked on a fresh connection before the file is called damaged
        while True:
            try:
                with self._lock:
                    return operation(*args)
            except sqlite3.OperationalError as exc:
                if _transient(exc) and time.monotonic() < deadline:
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.5)
                    continue
                if _transient(exc):
                    raise StoreError(f"{self.path}: kept busy by other writers for over {LOCK_WAIT_S:.0f} s; "
                                     "try again") from None
                raise StoreError(f"{self.path}: unusable store ({exc}); move it away to start a new one") from None
            except sqlite3.DatabaseError as exc:
                if "malformed" in str(exc) and second_looks and not self.memory and self._conn is not None:
                    second_looks -= 1
                    with self._lock:
                        self._conn.close()
                        self._conn, self._ready = None, False
                    time.sleep(0.05)
                    continue
                kind = "not a merge-explorer store" if "not a database" in str(exc) else "corrupt store"
                raise StoreError(f"{self.path}: {kind} ({exc}); move it away or choose another store path") from None
            except (UnicodeDecodeError, OverflowError) as exc:  # damaged text or numbers in a page SQLite accepted
                raise StoreError(f"{self.path}: corrupt store ({type(exc).__name__}: {exc}); move it away to start a "
                                 "new one") from None

    def _write(self, statements: Callable[[sqlite3.Connection], None]) -> None:
        """One write transaction: the lock is taken up front, pending registrations and hashes ride along."""
        def transaction():
            self._ensure(write=True)
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                statements(self._conn)
                self._write_hashes(self._conn)
            self._pending_hashes.clear()

        self._retry(transaction)

    def _read(self, sql: str, params: tuple = (), empty: list | None = None) -> list[tuple]:
        """Rows of a query; `empty` (default no rows) while the store has no schema yet."""
        def query():
            self._ensure(write=False)
            if self._conn is None or not self._ready:
                return list(empty or [])
            return self._conn.execute(sql, params).fetchall()

        return self._retry(query)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn, self._ready = None, False

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # experiments -----------------------------------------------------------------------------
    def register_experiment(self, key: str, name: str, meta: dict, defer: bool = False) -> None:
        """Record (or refresh) an experiment's name and metadata.

        defer: keep it in memory and write it with the experiment's first stored evaluation (so
        opening an experiment that then fails, or only reading one, leaves the file untouched).
        """
        if defer:
            self._pending[key] = (name, meta)
            return
        self._write(lambda conn: self._upsert_experiment(conn, key, name, meta))

    @staticmethod
    def _upsert_experiment(conn: sqlite3.Connection, key: str, name: str, meta: dict) -> None:
        now = time.time()
        conn.execute(
            "INSERT INTO experiments(key, name, meta, created, updated) VALUES (?,?,?,?,?) "
            "ON CONFLICT(key) DO UPDATE SET name=excluded.name, meta=excluded.meta, updated=excluded.updated",
            (key, name, json.dumps(meta, sort_keys=True), now, now),
        )

    def experiments(self) -> list[dict]:
        rows = self._read(
            "SELECT e.key, e.name, e.meta, e.updated, (SELECT COUNT(DISTINCT coeff_key) FROM evaluations v "
            "WHERE v.experiment = e.key) FROM experiments e ORDER BY e.updated DESC"
        )
        out = []
        for k, n, m, u, c in rows:
            try:
                meta = json.loads(m)
            except (TypeError, ValueError):
                raise StoreError(f"{self.path}: experiment {k!r} has unreadable metadata; the store is damaged") from None
            out.append(dict(key=k, name=n, meta=meta, updated=u, n_points=c))
        return out

    # evaluations -----------------------------------------------------------------------------
    def get(self, experiment: str, task_identity: str, coefficients) -> float | None:
        rows = self._read(
            "SELECT value FROM evaluations WHERE experiment=? AND task_identity=? AND coeff_key=?",
            (experiment, task_identity, coefficient_key(coefficients)),
        )
        return None if not rows else self._number(rows[0][0], experiment)

    def put(self, experiment: str, task_identity: str, task: str, coefficients, value: float,
            seconds: float = 0.0, kind: str = "design") -> None:
        """Record one measurement and commit it at once (idempotent for the same key)."""
        if not np.isfinite(value):
            raise StoreError(f"refusing to store non-finite value {value} for task {task!r}")
        c = np.asarray(coefficients, dtype=float).ravel()
        pending = self._pending.get(experiment)

        def statements(conn):
            if pending is not None:
                self._upsert_experiment(conn, experiment, *pending)
            conn.execute(
                "INSERT OR IGNORE INTO evaluations(experiment, task_identity, coeff_key, task, coefficients, value,"
                " seconds, kind, created) VALUES (?,?,?,?,?,?,?,?,?)",
                (experiment, task_identity, coefficient_key(c), task, json.dumps(c.tolist()), float(value),
                 float(seconds), kind, time.time()),
            )

        self._write(statements)
        if pending is not None:
            self._pending.pop(experiment, None)

    def evaluations(self, experiment: str) -> list[dict]:
        rows = self._read(
            "SELECT task, task_identity, coefficients, value, seconds, kind, created FROM evaluations "
            "WHERE experiment=? ORDER BY created",
            (experiment,),
        )
        out = []
        for t, i, c, v, s, k, cr in rows:
            coefficients = self._coefficients(c, f"an evaluation of task {t!r}")
            out.append(dict(task=t, task_identity=i, coefficients=coefficients, value=self._number(v, experiment),
                            seconds=s, kind=k, created=cr))
        return out

    def _coefficients(self, text, what: str) -> list[float]:
        try:
            return [float(x) for x in json.loads(text)]
        except (TypeError, ValueError):
            raise StoreError(f"{self.path}: {what} has unreadable coefficients; the store is damaged") from None

    def _number(self, value, experiment: str) -> float:
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise StoreError(f"{self.path}: experiment {experiment[:12]!r} has a stored value {value!r} that is not "
                             "a finite number; the store is damaged")
        return float(value)

    # per-example scores (measurements on a subsample, explorer.core.sampling) --------------------
    def _has_samples(self) -> bool:
        """Whether the file has the samples table (stores written before it existed lack it until
        their first subsampled measurement)."""
        if getattr(self, "_samples_table", False):
            return True
        found = bool(self._read("SELECT 1 FROM sqlite_master WHERE type='table' AND name='samples'"))
        self._samples_table = found
        return found

    def put_samples(self, experiment: str, task_identity: str, task: str, coefficients, scores: np.ndarray,
                    n_total: int, seconds: float = 0.0, kind: str = "design") -> None:
        """Record a task's per-example scores at a point (the first len(scores) examples of the task's
        order) and commit at once. A longer prefix replaces a shorter one; once every example is
        scored, their mean is also stored as the point's full-set value (`get`)."""
        scores = np.asarray(scores, dtype=np.float32).ravel()
        if not np.all(np.isfinite(scores)):
            raise StoreError(f"refusing to store non-finite per-example scores for task {task!r}")
        if not 1 <= len(scores) <= int(n_total):
            raise StoreError(f"task {task!r}: {len(scores)} per-example scores for a set of {n_total}")
        c = np.asarray(coefficients, dtype=float).ravel()
        key = coefficient_key(c)
        pending = self._pending.get(experiment)
        now = time.time()

        def statements(conn):
            conn.execute(SAMPLES_TABLE)
            if pending is not None:
                self._upsert_experiment(conn, experiment, *pending)
            row = conn.execute("SELECT length(scores), seconds, kind FROM samples WHERE experiment=? AND "
                               "task_identity=? AND coeff_key=?", (experiment, task_identity, key)).fetchone()
            if row is not None and row[0] >= scores.nbytes:
                return
            spent = float(seconds) + (row[1] if row else 0.0)
            first_kind = row[2] if row else kind  # a design point extended by a verify stays a design point
            conn.execute(
                "INSERT OR REPLACE INTO samples(experiment, task_identity, coeff_key, task, coefficients, n_total,"
                " scores, seconds, kind, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (experiment, task_identity, key, task, json.dumps(c.tolist()), int(n_total),
                 scores.astype("<f4").tobytes(), spent, first_kind, now),
            )
            if len(scores) == int(n_total):
                conn.execute(
                    "INSERT OR IGNORE INTO evaluations(experiment, task_identity, coeff_key, task, coefficients, value,"
                    " seconds, kind, created) VALUES (?,?,?,?,?,?,?,?,?)",
                    (experiment, task_identity, key, task, json.dumps(c.tolist()), float(np.mean(scores, dtype=np.float64)),
                     spent, first_kind, now),
                )

        self._write(statements)
        self._samples_table = True
        if pending is not None:
            self._pending.pop(experiment, None)

    def get_samples(self, experiment: str, task_identity: str, coefficients) -> tuple[np.ndarray, int] | None:
        """(per-example scores, the task's set size) stored at a point, or None."""
        if not self._has_samples():
            return None
        rows = self._read("SELECT scores, n_total FROM samples WHERE experiment=? AND task_identity=? AND coeff_key=?",
                          (experiment, task_identity, coefficient_key(coefficients)))
        return None if not rows else (self._scores(rows[0][0], experiment), int(rows[0][1]))

    def samples(self, experiment: str) -> list[dict]:
        """Every subsampled measurement of an experiment: task, identity, coefficients, scores, n_total, kind."""
        if not self._has_samples():
            return []
        rows = self._read("SELECT task, task_identity, coefficients, scores, n_total, kind FROM samples "
                          "WHERE experiment=? ORDER BY created", (experiment,))
        out = []
        for t, i, c, b, n, k in rows:
            coefficients = self._coefficients(c, f"a sample of task {t!r}")
            out.append(dict(task=t, task_identity=i, coefficients=coefficients, scores=self._scores(b, experiment),
                            n_total=int(n), kind=k))
        return out

    def _scores(self, blob, experiment: str) -> np.ndarray:
        if not isinstance(blob, bytes) or len(blob) % 4:
            raise StoreError(f"{self.path}: experiment {experiment[:12]!r} has damaged per-example scores")
        return np.frombuffer(blob, dtype="<f4").astype(np.float64)

    # what the adaptive rounds told before measuring (explorer.core.surrogate.front_scale) ---------
    def put_told(self, experiment: str, rows) -> None:
        """Record, in one transaction, the predicted mean and std (metric units) each (task identity,
        coefficients) was told before it was measured; the first told prediction of a point stands."""
        rows = [(experiment, i, coefficient_key(c), float(m), float(s), time.time()) for i, c, m, s in rows
                if np.isfinite(m) and np.isfinite(s)]
        if not rows:
            return
        pending = self._pending.get(experiment)

        def statements(conn):
            conn.execute(TOLD_TABLE)
            if pending is not None:
                self._upsert_experiment(conn, experiment, *pending)
            conn.executemany("INSERT OR IGNORE INTO told(experiment, task_identity, coeff_key, mean, std, created)"
                             " VALUES (?,?,?,?,?,?)", rows)

        self._write(statements)
        if pending is not None:
            self._pending.pop(experiment, None)

    def told(self, experiment: str) -> dict[tuple[str, str], tuple[float, float]]:
        """{(task identity, coefficient key): (mean, std)} told for an experiment's points ({} for
        stores written before the table existed)."""
        if not self._read("SELECT 1 FROM sqlite_master WHERE type='table' AND name='told'"):
            return {}
        rows = self._read("SELECT task_identity, coeff_key, mean, std FROM told WHERE experiment=?", (experiment,))
        return {(i, k): (self._number(m, experiment), self._number(s, experiment)) for i, k, m, s in rows}

    def count(self, experiment: str) -> int:
        return self._read("SELECT COUNT(*) FROM evaluations WHERE experiment=?", (experiment,), [(0,)])[0][0]

    def flush(self) -> None:
        """Write pending file hashes now (a no-op when there are none, or read-only: they stay in memory)."""
        if self._pending_hashes and not self.read_only:
            self._write(lambda conn: None)

    # file hashes -----------------------------------------------------------------------------
    def hash_cache(self) -> "_HashCache":
        return _HashCache(self)

    def _write_hashes(self, conn: sqlite3.Connection) -> None:
        for key, digest in self._pending_hashes.items():
            path = key.rsplit("|", 4)[0] + "|"  # one row per file: a changed file's old row goes
            conn.execute("DELETE FROM file_hashes WHERE substr(key, 1, ?) = ? AND key != ?", (len(path), path, key))
            conn.execute("INSERT OR REPLACE INTO file_hashes(key, digest) VALUES (?,?)", (key, digest))


class _HashCache:
    """dict-like view on the file_hashes table, used by checkpoints.content_hash.

    Keys carry the file's identity and state (path, size, mtime, ctime, inode); new digests are
    kept in memory until the store's next write.
    """

    def __init__(self, store: Store):
        self._store = store

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str, default=None):
        if key in self._store._pending_hashes:
            return self._store._pending_hashes[key]
        rows = self._store._read("SELECT digest FROM file_hashes WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def __getitem__(self, key: str) -> str:
        digest = self.get(key)
        if digest is None:
            raise KeyError(key)
        return digest

    def __setitem__(self, key: str, digest: str) -> None:
        self._store._pending_hashes[key] = digest
