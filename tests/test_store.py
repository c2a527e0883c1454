import sqlite3
import threading

import numpy as np
import pytest

from explorer.errors import StoreError
from explorer.store import Store, coefficient_key


def test_wal_mode_lets_a_reader_see_committed_results_while_a_writer_holds_a_transaction(tmp_path):
    path = tmp_path / "s.sqlite"
    writer = Store(path)
    assert writer._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer.put("exp", "task-id", "a", [0.1, 0.2], 0.9)
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
