"""A store written by the previous release (0.1.0, before the package moved into layers) is reused:
no evaluation runs again, no fit is recomputed, and the public paths its spec names still import.

The fixture (tests/fixtures/release-0.1.0/) is a tiny Llama experiment run to the end by that
release's code (tests/fixtures/make_previous_release.py, commit in previous-release.json): the
checkpoints, the JSONL data, the spec and its store with the cached front.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0"


@pytest.fixture()
def previous(tmp_path) -> tuple[Path, dict]:
    """A private copy of the fixture (the test may not change the committed store)."""
    root = tmp_path / "release-0.1.0"
    shutil.copytree(FIXTURE, root)
    return root, json.loads((root / "previous-release.json").read_text())


def rows(store: Path, table: str) -> list[tuple]:
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall())


def front_sha256(result) -> str:
    return hashlib.sha256(np.ascontiguousarray(result.front_coefficients).tobytes()
                          + np.ascontiguousarray(result.front_predicted).tobytes()).hexdigest()


def test_previous_store_is_reused_with_no_evaluation_and_no_refit(previous):
    from explorer.experiment import Experiment

    root, meta = previous
    store = root / "store.sqlite"
    evaluations, fronts = rows(store, "evaluations"), rows(store, "fronts")
    exp = Experiment.from_file(root / "spec.yaml")
    assert exp.key == meta["experiment_key"]
    # the LM suite is versioned by hand since it learnt `indices`; the identities it had are served
    for task, identity in meta["task_identities"].items():
        assert identity in (exp.task_identities[task], *exp.previous_identities[task])
    result = exp.run(progress=False)  # the whole run again: everything is in the store
    assert not exp.loaded  # no model was loaded, so nothing was measured
    assert rows(store, "evaluations") == evaluations  # zero re-evaluations
    assert len(exp.store.evaluations(exp.key)) == meta["evaluations"]
    # FIT_VERSION 6 shows a front that is non-dominated as a whole (issue 18), unlike the previous
    # release's: refitted once from the stored points, then restored from the cache
    assert front_sha256(result) != meta["front_sha256"]
    fits = {r[0] for r in fronts}  # one row per array of a fit, keyed by the fit's digest
    assert len({r[0] for r in rows(store, "fronts")}) == len(fits) + 1
    after = rows(store, "fronts")
    again = Experiment.from_file(root / "spec.yaml").run(progress=False)
    assert rows(store, "fronts") == after and front_sha256(again) == front_sha256(result)


def test_public_paths_of_the_previous_release_still_work(previous):
    import importlib

    from explorer import ExploreResult, explore  # noqa: F401 - the README's entry point
    from explorer.experiment.identity import previous_versions, resolve_callable
    from explorer.runner import Experiment  # noqa: F401 - the README's spec-driven entry point

    _, meta = previous
    for path in ("explorer.clip_suite:evaluate", "explorer.lm_suite:evaluate"):
        fn = resolve_callable(path)
        assert callable(fn) and callable(fn.fingerprint)
    clip = resolve_callable("explorer.clip_suite:evaluate")
    assert clip is importlib.import_module("explorer.suites.clip").evaluate
    # results stored by the previous release's CLIP suite (explorer/clip_suite.py) are served after the move
    assert meta["clip_suite_version"] in previous_versions(clip)


def test_reading_commands_leave_the_previous_store_byte_for_byte(previous, capsys):
    """pick and export of the coefficients only read: the store's file is not touched (also when refused)."""
    from explorer import cli

    root, _ = previous
    store = root / "store.sqlite"
    before = store.read_bytes()
    spec = str(root / "spec.yaml")
    assert cli.main(["pick", spec, "--weights", "upper=2,reverse=1"]) in (0, 1)
    assert cli.main(["pick", spec, "--weights", "nosuchtask=1"]) == 2  # refused: names the option
    assert "--weights" in capsys.readouterr().err
    assert cli.main(["pick", spec, "--weights", "upper=oops"]) == 2  # refused before the store is opened
    assert cli.main(["export", spec, "--no-checkpoint", "--out", str(root / "out")]) in (0, 1)
    assert (root / "out" / "coefficients.json").is_file()
    assert store.read_bytes() == before


def test_present_mode_reads_the_previous_store_without_writing(previous):
    """The app's present mode (read-only stakeholder view): snapshot, fit, a choice and its text
    exports, from a store it opens read-only; the file is byte for byte what it was."""
    from explorer import app_state as S

    root, meta = previous
    store = root / "store.sqlite"
    before = store.read_bytes()
    handle = S.Workspace().open(root / "spec.yaml", read_only=True)
    C, M, kinds, _ = handle.snapshot()
    assert len(C) == meta["points"]
    result = handle.fit()
    decision = S.choose(result, {"upper": 2.0, "reverse": 1.0}, {})
    files = handle.export_text_files(result, decision, {"upper": 2.0, "reverse": 1.0}, {})
    assert json.loads(files["coefficients.json"])["experiment_key"] == meta["experiment_key"]
    with pytest.raises(Exception, match="read-only"):  # a measurement would need a write: refused, one line
        handle.verify(np.full(2, 0.123))
    assert store.read_bytes() == before
