"""The fit and front cached in the store: restored exactly, keyed by content, never unpickled."""
from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from explorer.experiment import front_cache
from explorer.experiment.experiment import Experiment


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory) -> Path:
    from tests.toy_zoo import build

    spec = build(tmp_path_factory.mktemp("toy-front-cache"))
    Experiment.from_file(spec).run(progress=False)
    return spec


def rows(exp) -> list[tuple[str, str]]:
    with sqlite3.connect(exp.store.path) as conn:
        return conn.execute("SELECT digest, name FROM fronts ORDER BY digest, name").fetchall()


def digest_of(exp) -> str:
    """The digest of the experiment's current fit: the newest front it cached (`result()` first)."""
    with sqlite3.connect(exp.store.path) as conn:
        return conn.execute("SELECT digest FROM fronts WHERE experiment=? ORDER BY created DESC LIMIT 1",
                            (exp.key,)).fetchone()[0]


def test_result_is_restored_not_refit(toy_spec):
    first = Experiment.from_file(toy_spec).result()
    exp = Experiment.from_file(toy_spec)
    names = {n for d, n in rows(exp) if d == digest_of(exp)}
    assert front_cache.required_names() <= names
    assert {"front_coefficients", "front_predicted", front_cache.SURROGATES} <= names
    start = time.perf_counter()
    again = exp.result()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"reading a cached fit took {elapsed:.2f} s"
    assert np.array_equal(again.front_coefficients, first.front_coefficients)
    assert np.array_equal(again.front_predicted, first.front_predicted)
    probe = np.random.default_rng(1).uniform(0, 1, (40, len(exp.tasks)))
    assert np.array_equal(again.predict(probe), first.predict(probe))
    assert again.r2_cv() == first.r2_cv()
    assert again.decide({"low": 2.0}).coefficients.tolist() == first.decide({"low": 2.0}).coefficients.tolist()


def cli_pick(spec: Path, capsys) -> np.ndarray:
    from explorer import cli

    capsys.readouterr()
    assert cli.main(["pick", str(spec), "--weights", "low=3,mid=1,high=1"]) in (0, 1)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0] in ("low", "mid", "high")]
    return np.array([float(r[1]) for r in rows[-3:]])


def test_the_stored_front_is_what_is_served(toy_spec, capsys):
    """A front written under the digest is served as it is: proof that reading back searches nothing."""
    exp = Experiment.from_file(toy_spec)
    result = exp.result()
    digest = digest_of(exp)
    planted = {k: v[::2].copy() for k, v in front_cache.front_arrays(result).items()}
    assert front_cache.save_front(exp.store, digest, planted, exp.key, front_cache.surrogates_document(result))
    try:
        served = Experiment.from_file(toy_spec).result()
        assert np.array_equal(served.front_coefficients, planted["front_coefficients"])
        assert len(served.front_predicted) == len(planted["front_predicted"]) < len(result.front_predicted)
        picked = cli_pick(toy_spec, capsys)  # `merge-explorer pick` reads the same cached front
        assert np.min(np.abs(planted["front_coefficients"] - picked).max(axis=1)) < 5e-5
    finally:
        front_cache.save_fit(exp.store, digest, result, exp.key)


def test_digest_covers_every_input(toy_spec, monkeypatch):
    exp = Experiment.from_file(toy_spec)
    C, M, _ = exp.measured(("design", "adaptive"))
    base = front_cache.front_digest(C, M, exp.bounds, exp.senses, 0, 1000)
    M2 = M.copy()
    M2[3, 1] += 1e-9
    changed = [
        front_cache.front_digest(C[1:], M[1:], exp.bounds, exp.senses, 0, 1000),
        front_cache.front_digest(C, M2, exp.bounds, exp.senses, 0, 1000),
        front_cache.front_digest(C, M, exp.bounds * 0.5, exp.senses, 0, 1000),
        front_cache.front_digest(C, M, exp.bounds, -exp.senses, 0, 1000),
        front_cache.front_digest(C, M, exp.bounds, exp.senses, 1, 1000),
        front_cache.front_digest(C, M, exp.bounds, exp.senses, 0, 500),
    ]
    monkeypatch.setattr(sys.modules["explorer.core.result"], "FIT_VERSION", "test-bump")
    changed.append(front_cache.front_digest(C, M, exp.bounds, exp.senses, 0, 1000))
    assert len({base, *changed}) == 1 + len(changed)


def test_new_evaluation_gets_a_new_front(toy_spec, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(toy_spec.parent, copy)
    exp = Experiment.from_file(copy / "spec.yaml")
    before = exp.result()
    exp.evaluate(np.array([0.37, 0.61, 0.22]), kind="adaptive")
    after = Experiment.from_file(copy / "spec.yaml").result()
    assert len(after.samples) == len(before.samples) + 1
    assert len({d for d, _ in rows(exp)}) >= 2
    assert not np.array_equal(after.front_predicted, before.front_predicted)


def test_unreadable_or_foreign_rows_are_refit(toy_spec, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(toy_spec.parent, copy)
    exp = Experiment.from_file(copy / "spec.yaml")
    good = exp.result()
    digest = digest_of(exp)
    doc = json.loads(front_cache.surrogates_document(good))
    doc[exp.tasks[0]]["class"] = "subprocess:Popen"  # a store must not make us import arbitrary classes
    with sqlite3.connect(exp.store.path) as conn:
        conn.execute("UPDATE fronts SET array=? WHERE digest=? AND name=?", (json.dumps(doc).encode(), digest,
                                                                            front_cache.SURROGATES))
    front, surrogates = front_cache.load_fit(exp.store, digest)
    assert front is not None and surrogates is None
    with sqlite3.connect(exp.store.path) as conn:
        conn.execute("UPDATE fronts SET array=? WHERE digest=? AND name='front_predicted'", (b"\x93NUMPY garbage", digest))
    assert front_cache.load_fit(exp.store, digest) == (None, None)
    again = Experiment.from_file(copy / "spec.yaml").result()  # recomputed and written back
    assert np.array_equal(again.front_predicted, good.front_predicted)
    assert front_cache.load_fit(exp.store, digest)[0] is not None


def test_what_needs_pickle_is_not_cached(tmp_path):
    from explorer.experiment.store import Store

    store = Store(tmp_path / "store.sqlite")
    with pytest.raises(ValueError):
        front_cache._encode(object())
    good = {name: np.eye(2) for name in front_cache.required_names()}
    assert front_cache.save_front(store, "d" * 64, {**good, "front_predicted": np.array([object(), 1], dtype=object)}) is False
    assert front_cache.load_front(store, "d" * 64) is None
    assert front_cache.save_front(store, "e" * 64, good)
    assert np.array_equal(front_cache.load_front(store, "e" * 64)["front_coefficients"], np.eye(2))
    incomplete = {k: v for k, v in good.items() if k != "front_predicted"}
    assert front_cache.save_front(store, "f" * 64, incomplete)
    assert front_cache.load_front(store, "f" * 64) is None  # a front missing one of its arrays is a miss
