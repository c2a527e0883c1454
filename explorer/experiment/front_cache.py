"""The fit and its amortized front, cached in the store by content, so reading results back refits nothing.

Searching the front (candidates, refinement, thinning) takes seconds, and fitting the surrogates
(with leave-one-out refits and calibration) up to a second. Both are pure functions of the fitted
points, the box, the senses, the seed, the number of front points and the fitting code
(`FIT_VERSION`), so the digest of exactly these keys rows of the store's `fronts` table, and
opening a page, `merge-explorer pick` and `export` restore them instead of fitting again.

Every `front_*` array of an `ExploreResult` is stored as .npy bytes, and each surrogate's fitted
state as JSON (arrays as base64 .npy); `allow_pickle=False` both ways: nothing read back from the
store is ever unpickled, and only classes of this package are rebuilt. The cache is an
optimisation only: a store that cannot be written, a row that cannot be read, or a surrogate
whose state does not survive the round trip means the fit is computed as before.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from explorer.core.kriging import KrigingSurrogate
from explorer.core.lowrank import LowRankQuadraticSurrogate
from explorer.core import result as fit
from explorer.core.result import ExploreResult
from explorer.core.surrogate import QuadraticSurrogate

LOG = logging.getLogger("merge-explorer.front-cache")
PREFIX = "front_"
SURROGATES = "surrogates.json"  # the row holding every task's fitted surrogate
KEEP_PER_EXPERIMENT = 16  # newest fronts kept per experiment; older ones are pruned on write
SCHEMA = """
CREATE TABLE IF NOT EXISTS fronts (
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    array BLOB NOT NULL,
    experiment TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (digest, name)
)
"""


def front_digest(samples, observed, bounds, senses, seed: int, front_points: int, **options) -> str:
    """SHA-256 of everything the front depends on (the fit's inputs, its options, the code version)."""
    h = hashlib.sha256()
    h.update(json.dumps({"fit_version": str(fit.FIT_VERSION), "seed": int(seed), "front_points": int(front_points),
                         "options": options}, sort_keys=True, default=str).encode())
    for a in (samples, observed, bounds, senses):
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def front_arrays(result) -> dict[str, np.ndarray]:
    """Every `front_*` array attribute of a result (today coefficients and predictions, and any added later)."""
    return {k: v for k, v in vars(result).items() if k.startswith(PREFIX) and isinstance(v, np.ndarray)}


def required_names() -> set[str]:
    """The `front_*` fields an `ExploreResult` must be given: a cached front lacking one is a miss."""
    return {f.name for f in dataclasses.fields(ExploreResult) if f.name.startswith(PREFIX)}


def _connect(store) -> sqlite3.Connection:
    """A short-lived connection of our own (the store's file is validated by `Store` already);
    raises sqlite3.Error for a private in-memory store, which has nothing worth caching."""
    if getattr(store, "memory", False):
        raise sqlite3.OperationalError("in-memory store")
    if getattr(store, "read_only", False):
        return sqlite3.connect(f"{Path(store.path).resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    conn = sqlite3.connect(str(Path(store.path)), timeout=60)
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


def _to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def load_front(store, digest: str) -> dict[str, np.ndarray] | None:
    """The cached `front_*` arrays for `digest`, or None (not cached, unreadable, or incomplete)."""
    try:
        conn = _connect(store)
        try:
            rows = conn.execute("SELECT name, array FROM fronts WHERE digest=?", (digest,)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:  # no table yet (a store written before the cache existed) or unreadable
        return None
    try:
        arrays = {name: _from_bytes(blob) for name, blob in rows if name.startswith(PREFIX)}
    except (ValueError, OSError, EOFError) as exc:
        LOG.warning("cached front %s is unreadable (%s); computing it again", digest[:12], exc)
        return None
    if not arrays or not required_names() <= set(arrays):
        return None
    return arrays


def load_fit(store, digest: str) -> tuple[dict[str, np.ndarray] | None, dict[str, object] | None]:
    """(cached `front_*` arrays, cached {task: surrogate}); either is None when it is not usable."""
    front = load_front(store, digest)
    if front is None:
        return None, None
    try:
        conn = _connect(store)
        try:
            row = conn.execute("SELECT array FROM fronts WHERE digest=? AND name=?", (digest, SURROGATES)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return front, None
    if row is None:
        return front, None
    try:
        return front, {t: _surrogate_from_state(doc) for t, doc in json.loads(bytes(row[0]).decode()).items()}
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, UnicodeDecodeError) as exc:
        LOG.warning("cached surrogates %s are unreadable (%s); fitting again", digest[:12], exc)
        return front, None


# --- surrogate state as JSON ---------------------------------------------------------------------
def _encode(value):
    """A JSON-able form of one attribute value; ValueError for anything that would need pickle."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(value, np.ndarray):
        return {"__npy__": base64.b64encode(_to_bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return {"__list__": [_encode(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v) for k, v in value.items()}}
    raise ValueError(f"cannot store a {type(value).__name__} without pickle")


def _decode(value):
    if isinstance(value, dict):
        if "__npy__" in value:
            return _from_bytes(base64.b64decode(value["__npy__"]))
        if "__list__" in value:
            items = [_decode(v) for v in value["__list__"]]
            return tuple(items) if value.get("tuple") else items
        return {k: _decode(v) for k, v in value["__dict__"].items()}
    if isinstance(value, float) or value is None or isinstance(value, (bool, int, str)):
        return value
    raise ValueError(f"unexpected {type(value).__name__} in a cached surrogate")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


#: The classes a cached surrogate may be rebuilt as, by the name stored with it.
SURROGATE_CLASSES = {_class_name(c): c for c in (QuadraticSurrogate, KrigingSurrogate, LowRankQuadraticSurrogate)}
#: Names stored before the package moved into layers (release 0.1.0), read as the same classes.
MOVED = {f"explorer.{old}:{cls}": f"explorer.core.{old}:{cls}" for old, cls in (
    ("surrogate", "QuadraticSurrogate"), ("kriging", "KrigingSurrogate"), ("lowrank", "LowRankQuadraticSurrogate"))}


def _surrogate_state(surrogate) -> dict:
    cls = type(surrogate)
    return {"class": _class_name(cls),
            "state": {k: _encode(v) for k, v in vars(surrogate).items()}}


def _surrogate_from_state(doc: dict):
    name = str(doc["class"])
    cls = SURROGATE_CLASSES.get(MOVED.get(name, name))
    if cls is None:
        raise ValueError(f"refusing to rebuild {name!r}: not a surrogate class of this package")
    surrogate = cls.__new__(cls)
    surrogate.__dict__.update({k: _decode(v) for k, v in doc["state"].items()})
    return surrogate


def surrogates_document(result) -> bytes | None:
    """Every task's surrogate state as JSON, if each one predicts identically after the round trip."""
    try:
        doc = {t: _surrogate_state(result.surrogates[t]) for t in result.tasks}
        data = json.dumps(doc).encode()
        again = json.loads(data.decode())
        probe = np.vstack([result.samples, result.front_coefficients[:50]])
        for t in result.tasks:
            copy = _surrogate_from_state(again[t])
            if not np.array_equal(copy.predict(probe), result.surrogates[t].predict(probe)):
                raise ValueError(f"surrogate of {t!r} predicts differently after the round trip")
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        LOG.info("surrogates not cached (they are refit when read back): %s", exc)
        return None
    return data


def save_fit(store, digest: str, result, experiment: str | None = None) -> bool:
    """Cache a result's front arrays and (when they survive the round trip) its surrogates."""
    return save_front(store, digest, front_arrays(result), experiment, surrogates_document(result))


def save_front(store, digest: str, arrays: Mapping[str, np.ndarray], experiment: str | None = None,
               surrogates: bytes | None = None) -> bool:
    """Store the arrays under `digest` in one transaction (all or nothing); False when it could not."""
    if getattr(store, "read_only", False):  # commands that only read leave the store as they found it
        return False
    now = time.time()
    try:
        blobs = [(digest, name, _to_bytes(np.asarray(a)), experiment, now) for name, a in arrays.items()
                 if name.startswith(PREFIX)]
    except ValueError as exc:  # object arrays would need pickle: not cached
        LOG.warning("front not cached: %s", exc)
        return False
    if surrogates is not None:
        blobs.append((digest, SURROGATES, surrogates, experiment, now))
    try:
        conn = _connect(store)
        try:
            with conn:
                conn.execute(SCHEMA)
                conn.execute("DELETE FROM fronts WHERE digest=?", (digest,))
                conn.executemany("INSERT INTO fronts(digest, name, array, experiment, created) VALUES (?,?,?,?,?)", blobs)
                if experiment is not None:
                    conn.execute(
                        "DELETE FROM fronts WHERE experiment=? AND digest NOT IN (SELECT digest FROM fronts "
                        "WHERE experiment=? GROUP BY digest ORDER BY MAX(created) DESC LIMIT ?)",
                        (experiment, experiment, KEEP_PER_EXPERIMENT))
        finally:
            conn.close()
    except sqlite3.Error as exc:  # read-only store, locked for over a minute, ...: the front was computed anyway
        LOG.warning("front not cached in %s: %s", store.path, exc)
        return False
    return True
