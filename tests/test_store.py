import sqlite3
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.core.design import coefficient_key
from explorer.errors import StoreError
from explorer.experiment.store import Store


def test_wal_mode_lets_a_reader_see_committed_results_while_a_writer_holds_a_transaction(tmp_path):
    path = tmp_path / "s.sqlite"
    writer = Store(path)
    assert not path.exists() and writer.get("exp", "task-id", [0.1, 0.2]) is None  # created with its first result
    writer.put("exp", "task-id", "a", [0.1, 0.2], 0.9)
    assert writer._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw = sqlite3.connect(path, timeout=0.5)
    raw.execute("BEGIN IMMEDIATE")  # another process in the middle of writing
    raw.execute("INSERT INTO evaluations VALUES ('exp','task-id','x','a','[]',0.1,0,'design',0)")
    reader = Store(path)
    assert reader.get("exp", "task-id", [0.1, 0.2]) == pytest.approx(0.9)
    raw.rollback()


def test_put_is_idempotent_and_keys_are_canonical(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    s.put("e", "t", "a", np.array([0.1, 0.30000000000000004]), 0.5)
    s.put("e", "t", "a", [0.1, 0.3], 0.7)  # the same point again: the first measurement stays
    assert s.count("e") == 1 and s.get("e", "t", [0.1, 0.3]) == 0.5
    assert coefficient_key([0.0, -0.0]) == coefficient_key([0, 0])
    with pytest.raises(StoreError, match="non-finite"):
        s.put("e", "t", "a", [0.2, 0.2], float("nan"))
    assert s.count("e") == 1


def test_told_predictions_reach_stores_written_before_the_table_and_the_first_told_stands(tmp_path):
    """A store from before the told table reads as having told nothing, read-only too; its first told
    prediction adds the table without touching what it held; telling a point again changes nothing."""
    path = tmp_path / "old.sqlite"
    s = Store(path)
    s.put("e", "t", "a", [0.1, 0.3], 0.5)
    s.close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE told")
    raw.commit()
    raw.close()
    assert Store(path, read_only=True).told("e") == {}
    s = Store(path)
    s.put_told("e", [("t", [0.1, 0.3], 0.52, 0.01), ("t", [0.2, 0.2], float("nan"), 0.01)])
    s.put_told("e", [("t", [0.1, 0.30000000000000004], 0.9, 0.5)])
    assert Store(path, read_only=True).told("e") == {("t", coefficient_key([0.1, 0.3])): (0.52, 0.01)}
    assert s.count("e") == 1 and s.get("e", "t", [0.1, 0.3]) == 0.5
    raw = sqlite3.connect(path)
    raw.execute("UPDATE told SET std='x'")  # damaged by hand: named, not a traceback
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="old.sqlite.*not a finite number"):
        Store(path, read_only=True).told("e")


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()

    def write(offset):
        s = Store(path)
        for i in range(40):
            s.put("e", "t", "a", [offset + i, 0.0], float(i))
        s.close()

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert Store(path).count("e") == 120


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="newer merge-explorer"):
        Store(path)


# --- a store that never serves a stale value ------------------------------------------------------
import os
import time
import uuid
from pathlib import Path

import yaml

from explorer.experiment.experiment import Experiment
from explorer.merging import checkpoints
from explorer.merging.checkpoints import content_hash
from tests import toy_zoo


def listed_accuracy(model, classes_file: str, spec_dir: str, split: str = "val") -> float:
    """The toy metric over the classes listed in a text file: a metric that depends on a file's bytes."""
    classes = [int(x) for x in (Path(spec_dir) / classes_file).read_text().split()]
    return toy_zoo.accuracy(model, classes, split)


listed_accuracy.version = "1"


def _settle(*paths):
    """Wait until files are older than the hash cache's racy window (so their digests are cached)."""
    newest = max(max(Path(p).stat().st_mtime_ns, Path(p).stat().st_ctime_ns) for p in paths)
    time.sleep(max(0.0, checkpoints.RACY_S + 0.05 - (time.time_ns() - newest) / 1e9))


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    from tests.shared_toy import shared_toy

    return shared_toy(tmp_path_factory).parent


@pytest.fixture
def identity_toy(toy_dir, tmp_path, monkeypatch):
    """The toy experiment where low and mid read their classes from files (evaluator with a version
    attribute) and high is measured by a module written here (versioned by its source)."""
    import shutil

    d = tmp_path / "toy"
    shutil.copytree(toy_dir, d, ignore=shutil.ignore_patterns("store.sqlite*", "spec.yaml"))
    module = f"toy_eval_{uuid.uuid4().hex[:8]}"
    (d / f"{module}.py").write_text("from tests.toy_zoo import accuracy\n")
    monkeypatch.syspath_prepend(str(d))
    (d / "low.txt").write_text("0 1 2 3\n")
    (d / "mid.txt").write_text("4 5 6\n")
    spec = yaml.safe_load((toy_dir / "spec.yaml").read_text())
    spec["tasks"]["low"].update(evaluator="tests.test_store:listed_accuracy", params={"classes_file": "low.txt"})
    spec["tasks"]["mid"].update(evaluator="tests.test_store:listed_accuracy", params={"classes_file": "mid.txt"})
    spec["tasks"]["high"].update(evaluator=f"{module}:accuracy")
    (d / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setattr(listed_accuracy, "version", "1", raising=False)
    return d / "spec.yaml", d / module


def _open(spec_path, **kw) -> Experiment:
    return Experiment.from_file(spec_path, **kw)


def _served(exp: Experiment) -> dict[str, int]:
    """How many design points the store serves per task."""
    counts = {t: 0 for t in exp.tasks}
    for c in exp.design():
        for t in exp.stored(c):
            counts[t] += 1
    return counts


def _measure_all(exp: Experiment, log: Path) -> dict[str, int]:
    """Evaluate the design; return how many evaluator calls each class group got (the re-measured tasks)."""
    log.unlink(missing_ok=True)
    os.environ["TOY_CALL_LOG"] = str(log)
    try:
        for c in exp.design():
            exp.evaluate(c)
    finally:
        del os.environ["TOY_CALL_LOG"]
    lines = log.read_text().splitlines() if log.exists() else []
    names = {"[0, 1, 2, 3]": "low", "[4, 5, 6]": "mid", "[7, 8, 9]": "high"}
    return {t: sum(names.get(line) == t for line in lines) for t in ("low", "mid", "high")}


def test_each_identity_change_invalidates_exactly_the_affected_tasks(identity_toy, tmp_path, monkeypatch):
    spec_path, module = identity_toy
    d = spec_path.parent
    log = tmp_path / "calls.log"
    exp = _open(spec_path)
    n = len(exp.design())
    assert _measure_all(exp, log) == {"low": n, "mid": n, "high": n}
    full = {"low": n, "mid": n, "high": n}
    assert _served(_open(spec_path)) == full
    assert _measure_all(_open(spec_path), log) == {"low": 0, "mid": 0, "high": 0}  # nothing measured twice

    # a file a param names (the class list of `low`): only low is measured again
    (d / "low.txt").write_text("0 1 2\n")
    assert _served(_open(spec_path)) == {"low": 0, "mid": n, "high": n}
    assert _measure_all(_open(spec_path), log) == {"low": 0, "mid": 0, "high": 0} | {"low": 0}  # classes changed...
    counts = log.read_text().splitlines().count("[0, 1, 2]") if log.exists() else 0
    assert counts == n  # ...and low was re-measured on the new list, n times, nothing else

    # the evaluator's explicit version: low and mid (that evaluator), not high
    monkeypatch.setattr(listed_accuracy, "version", "2")
    assert _served(_open(spec_path)) == {"low": 0, "mid": 0, "high": n}
    monkeypatch.setattr(listed_accuracy, "version", "1")
    assert _served(_open(spec_path)) == {"low": n, "mid": n, "high": n}  # back: the old results are served again

    # the source of high's evaluator module: only high
    module.with_suffix(".py").write_text("from tests.toy_zoo import accuracy  # fixed a bug\n")
    assert _served(_open(spec_path)) == {"low": n, "mid": n, "high": 0}
    assert _measure_all(_open(spec_path), log) == {"low": 0, "mid": 0, "high": n}

    # the precision an evaluator declares: low and mid
    monkeypatch.setattr(listed_accuracy, "precision", lambda device: "bfloat16", raising=False)
    assert _served(_open(spec_path)) == {"low": 0, "mid": 0, "high": n}
    monkeypatch.delattr(listed_accuracy, "precision")

    # the device kind: every task (the merged model is the same, so is the experiment key)
    on_cpu, on_cuda = _open(spec_path, device="cpu"), _open(spec_path, device="cuda")
    assert on_cuda.key == on_cpu.key and _served(on_cuda) == {"low": 0, "mid": 0, "high": 0}
    assert _served(on_cpu) == full

    # what results do not depend on: the experiment's name, the bounds
    spec = yaml.safe_load(spec_path.read_text())
    spec.update(name="renamed", bounds=[0.0, 1.5])
    other = d / "other.yaml"
    other.write_text(yaml.safe_dump(spec, sort_keys=False))
    renamed = _open(other)
    assert renamed.task_identities == on_cpu.task_identities and renamed.key == on_cpu.key


def test_a_checkpoint_rewritten_with_its_size_and_mtime_kept_is_hashed_again(identity_toy, tmp_path):
    spec_path, _ = identity_toy
    d = spec_path.parent
    exp = _open(spec_path)
    for c in exp.design()[:3]:
        exp.evaluate(c)
    _settle(*d.glob("*.safetensors"))
    exp = _open(spec_path)  # now the digests are cached in the store
    key, served = exp.key, _served(exp)
    assert served == {"low": 3, "mid": 3, "high": 3}
    cached = [k for (k,) in exp.store._read("SELECT key FROM file_hashes") if ".safetensors|" in k]
    assert len(cached) == 4  # one row per checkpoint file

    # same shapes, so the same size; restore the old mtime: only ctime (and maybe inode) tell
    path = d / "mid.safetensors"
    st = path.stat()
    original = path.read_bytes()
    state = {k: v + 0.01 for k, v in load_file(str(path)).items()}
    save_file(state, str(path))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    changed = _open(spec_path)
    assert changed.key != key and _served(changed) == {"low": 0, "mid": 0, "high": 0}

    path.write_bytes(original)  # the same bytes again: every result is served again, nothing was lost
    again = _open(spec_path)
    assert again.key == key and _served(again) == served


def test_hash_cache_serves_a_digest_only_for_the_same_file_state(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(path))
    _settle(path)
    store = Store(tmp_path / "s.sqlite")
    first = checkpoints.file_digest(path, store.hash_cache())
    sig = checkpoints.file_signature(path)
    assert store.hash_cache().get(sig) == first  # remembered (written with the store's next write)
    store.flush()
    assert Store(tmp_path / "s.sqlite").hash_cache().get(sig) == first

    # a row in the old format (path|size|mtime) with a wrong digest is never served
    st = path.stat()
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        conn.execute("INSERT INTO file_hashes VALUES (?, ?)", (f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}", "0" * 64))
    reopened = Store(tmp_path / "s.sqlite")
    save_file({"w": torch.arange(6, dtype=torch.float32) * 2}, str(path))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    second = checkpoints.file_digest(path, reopened.hash_cache())
    assert second != first and second == checkpoints.file_digest(path)  # rehashed: the ctime moved
    assert content_hash(path, reopened.hash_cache()) == content_hash(path)
    _settle(path)
    checkpoints.file_digest(path, reopened.hash_cache())
    reopened.flush()
    rows = reopened._read("SELECT key, digest FROM file_hashes")
    assert rows == [(checkpoints.file_signature(path), second)]  # one row per file; the stale ones are gone


def test_a_file_changed_within_the_racy_window_is_not_cached(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"a" * 100)
    cache = {}
    content_hash(path, cache)
    assert cache == {}  # just written: it could change again within the same timestamp tick


# --- nothing written until there is a result; damaged stores are named ---------------------------
def _bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


def test_opening_an_experiment_writes_nothing_until_its_first_result(identity_toy):
    spec_path, _ = identity_toy
    store = spec_path.parent / "store.sqlite"
    exp = _open(spec_path)
    exp.evaluate(exp.design()[0])
    exp.store.close()
    _settle(*spec_path.parent.glob("*.safetensors"))
    _open(spec_path).store.close()  # known experiment: its file hashes are kept now
    before = _bytes(store)
    for _ in range(2):
        e = _open(spec_path)
        assert e.stored(e.design()[0]) and not e.stored(e.design()[1])
        with pytest.raises(Exception, match="run `merge-explorer run` first"):
            e.result()
        e.store.close()
    assert _bytes(store) == before
    rows = Store(store).experiments()
    assert [r["name"] for r in rows] == ["toy-digits"]  # registered together with its first result


def test_one_store_shared_by_threads_loses_nothing(tmp_path):
    store = Store(tmp_path / "s.sqlite")

    def write(offset):
        for i in range(50):
            store.put("e", "t", "a", [offset + i, 0.0], float(i))
            assert store.get("e", "t", [offset + i, 0.0]) == float(i)

    threads = [threading.Thread(target=write, args=(k * 1000,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert store.count("e") == 200


def test_a_writer_waits_for_the_lock_instead_of_failing(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    release = threading.Timer(1.0, other.execute, args=("COMMIT",))
    release.start()
    store = Store(path)
    start = time.monotonic()
    store.put("e", "t", "a", [0.0], 1.0)
    assert time.monotonic() - start >= 0.5 and store.get("e", "t", [0.0]) == 1.0
    release.join()

    from explorer.experiment import store as store_module

    monkeypatch.setattr(store_module, "LOCK_WAIT_S", 0.3)
    held = Store(path)
    held._conn.execute("PRAGMA busy_timeout=50")
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match=r"s.sqlite: kept busy by other writers"):
        held.put("e", "t", "a", [1.0], 1.0)
    other.execute("ROLLBACK")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_store_is_named_and_left_as_it_is(tmp_path, damage):
    path = tmp_path / "s.sqlite"
    s = Store(path)
    for i in range(300):
        s.put("e", "t", "a", [float(i), 0.5], float(i))
    s.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    if damage == "truncate":
        data = data[: len(data) // 2 + 100]
    else:
        for offset in range(4096 + 8, len(data), 997):  # btree pages, past the header
            data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"s\.sqlite: (corrupt store|not a merge-explorer store|unusable store)"):
        Store(path).evaluations("e")
    assert path.read_bytes() == bytes(data)
