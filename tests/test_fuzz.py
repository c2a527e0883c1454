"""Malformed input never crashes: property-based tests (hypothesis) through the CLI and the app state.

Random and mutated specs, share-link query strings, `--weights` / `--min` values, and truncated or
bit-flipped safetensors checkpoints and SQLite stores are fed to `explorer.cli.main` (in process)
and to the app's state (`Workspace.open`, `decode_preferences`, `choose`). Every case must end in
success or in exactly one line `error: ...` with exit status 2 (or a problem line shown on the
page), never a traceback, and a command that fails must leave the store's bytes as they were.

FUZZ_SCALE=N multiplies the number of examples (the default keeps this file near a minute);
the number of inputs tried is printed at the end of the session (pytest -s).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from explorer import cli  # noqa: E402
from explorer.app_state import Workspace, choose, decode_preferences  # noqa: E402
from explorer.errors import ExplorerError  # noqa: E402
from explorer.experiment.experiment import Experiment  # noqa: E402

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
TRIED: Counter = Counter()
OUTCOMES: Counter = Counter()  # (category, exit status or the error's first words): FUZZ_VERBOSE=1 prints them


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def report_count():
    yield
    print(f"\nmalformed inputs tried: {sum(TRIED.values())} ({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))})")
    if os.environ.get("FUZZ_VERBOSE"):
        for (category, outcome), n in sorted(OUTCOMES.items()):
            print(f"{n:6d}  {category}: {outcome}")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """The toy experiment, run to the end once: a complete store to read and to protect."""
    from tests.shared_toy import copy_toy, shared_toy

    spec = copy_toy(shared_toy(tmp_path_factory), tmp_path_factory.mktemp("fuzz") / "toy")
    exp = Experiment.from_file(spec)
    exp.run(progress=False)
    exp.store.close()
    return spec


def store_bytes(path: Path) -> bytes | None:
    """The store's content: every row of every table (a WAL checkpoint may move pages between the
    -wal file and the main file without changing a byte of content), else its raw bytes."""
    if not path.exists():
        return None
    import hashlib
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            h = hashlib.sha256()
            for pragma in ("application_id", "user_version"):
                h.update(repr(conn.execute(f"PRAGMA {pragma}").fetchone()).encode())
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").fetchall():
                h.update(table.encode())
                h.update(repr(sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)).encode())
            return h.digest()
        finally:
            conn.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        return b"raw:" + path.read_bytes() + b"|" + (Path(f"{path}-wal").read_bytes() if Path(f"{path}-wal").exists() else b"")


def run_cli(*args) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main([str(a) for a in args])
    return code, err.getvalue()


def _outcome(code: int, err: str) -> str:
    if code != cli.EXIT_ERROR:
        return f"exit {code}"
    words = err.replace("error: ", "").split()
    return " ".join(w if "/" not in w else ".../" + w.rsplit("/", 1)[-1] for w in words[:9])


def assert_clean(code: int, err: str, store: Path, before: bytes | None, ok_codes=(0, 1), category: str = "") -> None:
    """Success, or one line `error: ...` (exit 2) with the store as it was."""
    OUTCOMES[(category, _outcome(code, err))] += 1
    assert "Traceback" not in err
    if code in ok_codes:
        return
    assert code == cli.EXIT_ERROR, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 10, err
    assert store_bytes(store) == before, f"the store changed on a failed command: {err}"


# --- specs -----------------------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(["", "~nobody/x", "/dev/zero", "/", "..", "base.safetensors", "low.safetensors",
                                     "tests.toy_zoo:accuracy", "os:getcwd", "nope:nope", "auto", "cuda:7", "cpu",
                                     "ties", "dare", "loss", "\x00", "a" * 5000]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=12)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_specs(draw, base: dict) -> str:
    """The valid toy spec with a few keys deleted, replaced, renamed or added, as YAML text."""
    spec = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(spec) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["delete", "replace", "rename", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


@st.composite
def damaged_text(draw, text: str) -> str:
    """The valid spec's YAML with characters inserted, deleted or replaced, or cut short."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        c = draw(st.sampled_from(list(":-[]{}#&*!|>'\"%@` \n\t,?") + ["\x00", "\ufeff", "é"]))
        if op == "insert":
            chars.insert(i, c)
        elif op == "delete" and i < len(chars):
            del chars[i]
        elif op == "replace" and i < len(chars):
            chars[i] = c
        elif op == "truncate":
            chars = chars[:i]
    return "".join(chars)


def test_random_and_mutated_specs(toy, tmp_path_factory):
    base = yaml.safe_load(toy.read_text())
    text = toy.read_text()
    store = toy.parent / "store.sqlite"
    spec_path = toy.parent / "fuzzed.yaml"

    @examples(120)
    @given(st.one_of(mutated_specs(base), damaged_text(text), st.text(max_size=200),
                     st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
    def check(spec_text):
        TRIED["specs"] += 1
        try:
            spec_path.write_text(spec_text, encoding="utf-8", errors="surrogateescape")
        except UnicodeEncodeError:
            spec_path.write_bytes(spec_text.encode("utf-8", "replace"))
        before = store_bytes(store)
        code, err = run_cli("pick", spec_path, "--store", store)
        assert_clean(code, err, store, before, category="spec")
        try:
            Workspace().open(spec_path, store=store)  # the app: an ExplorerError is shown on the page
        except ExplorerError as exc:
            assert "\n" not in str(exc)

    check()


# --- share links and preference arguments ------------------------------------------------------------
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "0x10", "1_0", "", " ", "٣", "1e-400"]))


@st.composite
def pairs(draw, tasks) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from(tasks), st.text(max_size=8)))
        sep = draw(st.sampled_from([":", "=", "", "::", "%3A"]))
        parts.append(f"{name}{sep}{draw(numbers)}")
    return draw(st.sampled_from([",", ";", ",,"])).join(parts)


def test_share_link_query_strings(toy):
    exp = Experiment.from_file(toy)
    result = exp.result()
    tasks = exp.tasks

    @examples(300)
    @given(st.dictionaries(st.one_of(st.sampled_from(["w", "min", "pick", "exp"]), st.text(max_size=5)),
                           st.one_of(pairs(tasks), st.lists(numbers, max_size=5).map(",".join), st.text(max_size=40)),
                           max_size=5))
    def check(params):
        TRIED["share links"] += 1
        weights, minimums, picked, problems = decode_preferences(params, tasks)
        assert all(isinstance(p, str) and "\n" not in p for p in problems)
        assert all(np.isfinite(v) for v in list(weights.values()) + list(minimums.values()))
        if picked is not None:
            assert picked.shape == (len(tasks),) and np.all(np.isfinite(picked))
        decision = choose(result, weights, minimums, picked)  # what the page shows for the link
        assert decision.coefficients.shape == (len(tasks),) and np.all(np.isfinite(decision.predicted))

    check()


def test_weights_and_minimums_on_the_command_line(toy):
    tasks = ["low", "mid", "high"]
    store = toy.parent / "store.sqlite"

    @examples(60)
    @given(st.one_of(pairs(tasks).map(lambda s: s.replace(":", "=")), st.text(max_size=20)),
           st.sampled_from(["--weights", "--min"]))
    def check(value, option):
        TRIED["command-line preferences"] += 1
        before = store_bytes(store)
        code, err = run_cli("pick", toy, f"{option}={value}")
        assert_clean(code, err, store, before, category=option)

    check()


# --- damaged files -------------------------------------------------------------------------------
@st.composite
def damaged_bytes(draw, data: bytes, header_bytes: int) -> bytes:
    """Cut short, or a few bits flipped (mostly in the header, where damage is structural)."""
    out = bytearray(data)
    if draw(st.booleans()):
        return bytes(out[: draw(st.integers(0, len(out) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        limit = header_bytes if draw(st.integers(0, 3)) else len(out)
        i = draw(st.integers(0, min(limit, len(out)) - 1))
        out[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


def _header_size(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def test_truncated_and_bit_flipped_checkpoints(toy, tmp_path):
    work = tmp_path / "toy"
    shutil.copytree(toy.parent, work)
    spec, store, target = work / toy.name, work / "store.sqlite", work / "mid.safetensors"
    original = target.read_bytes()

    @examples(20)
    @given(damaged_bytes(original, _header_size(original)))
    def check(data):
        TRIED["checkpoints"] += 1
        target.write_bytes(data)
        before = store_bytes(store)
        code, err = run_cli("run", spec, "--budget", "10", "--no-progress")
        assert_clean(code, err, store, before, ok_codes=(0,), category="checkpoint")
        if code == cli.EXIT_ERROR:
            assert "mid.safetensors" in err  # the culprit is named

    try:
        check()
    finally:
        target.write_bytes(original)


def test_truncated_and_bit_flipped_stores(toy, tmp_path):
    original = (toy.parent / "store.sqlite").read_bytes()
    damaged = tmp_path / "damaged.sqlite"

    @examples(60)
    @given(damaged_bytes(original, 4096))  # the header and the schema page, or anywhere
    def check(data):
        TRIED["stores"] += 1
        for p in tmp_path.glob("damaged.sqlite*"):
            p.unlink()
        damaged.write_bytes(data)
        before = store_bytes(damaged)
        code, err = run_cli("pick", toy, "--store", damaged)
        assert_clean(code, err, damaged, before, category="store")
        if code == cli.EXIT_ERROR:
            assert damaged.read_bytes() == data  # byte for byte
            assert "damaged.sqlite" in err or "complete evaluations" in err, err  # the culprit is named
        damaged.write_bytes(data)
        try:
            handle = Workspace().open(toy, store=damaged)
            handle.snapshot()
            handle.fit()
        except ExplorerError as exc:  # shown on the page as one line
            assert "\n" not in str(exc)

    check()
