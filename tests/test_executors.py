"""Executors: in-process and Ray give the same store; a worker killed mid-run loses nothing."""
from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest
import yaml

from explorer.experiment.executors import InProcessExecutor, make_executor
from explorer.experiment.experiment import Experiment
from tests.toy_zoo import accuracy, build


def crashing_accuracy(model, classes, **kwargs) -> float:
    """The toy metric, but the first call inside a Ray worker kills that worker's process.

    The marker file is named by an environment variable, not a param: a file a param names is part
    of the task's identity, and this one appears mid-run.
    """
    crash_marker = os.environ["CRASH_MARKER"]
    if os.environ.get("MERGE_EXPLORER_WORKER") and not os.path.exists(crash_marker):
        open(crash_marker, "w").close()
        os._exit(1)
    return accuracy(model, classes, **kwargs)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build(tmp_path_factory.mktemp("toy"))


def _crashing_spec(spec_path, directory):
    spec = yaml.safe_load(spec_path.read_text())
    spec["store"] = str(directory / "store.sqlite")
    for name, task in spec["tasks"].items():
        task["checkpoint"] = str(spec_path.parent / task["checkpoint"])
        task["evaluator"] = "tests.test_executors:crashing_accuracy"
    spec["model"]["base"] = str(spec_path.parent / spec["model"]["base"])
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _rows(store_path):
    with sqlite3.connect(store_path) as conn:
        return conn.execute("SELECT task, coeff_key, value FROM evaluations ORDER BY task, coeff_key").fetchall()


def test_make_executor_names():
    assert isinstance(make_executor(None), InProcessExecutor)
    assert isinstance(make_executor("inprocess"), InProcessExecutor)
    with pytest.raises(Exception, match="unknown executor"):
        make_executor("dask")


def test_inprocess_executor_matches_default_run(toy, tmp_path):
    a = Experiment.from_file(toy, store_path=tmp_path / "a.sqlite").run(progress=False)
    b = Experiment.from_file(toy, store_path=tmp_path / "b.sqlite").run(progress=False, executor=InProcessExecutor())
    assert _rows(tmp_path / "a.sqlite") == _rows(tmp_path / "b.sqlite")
    np.testing.assert_allclose(a.front_predicted, b.front_predicted)


def test_ray_executor_same_results_and_survives_a_killed_worker(toy, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(os.getcwd()), os.environ.get("PYTHONPATH", "")]))
    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    local_dir.mkdir(), ray_dir.mkdir()
    local_spec, ray_spec = _crashing_spec(toy, local_dir), _crashing_spec(toy, ray_dir)
    monkeypatch.setenv("CRASH_MARKER", str(ray_dir / "crashed"))

    local = Experiment.from_file(local_spec)
    expected = local.run(progress=False)  # in-process: never crashes (not a worker)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = make_executor("ray", num_workers=2)
        exp = Experiment.from_file(ray_spec)
        result = exp.run(progress=False, executor=executor)
    finally:
        ray.shutdown()
    assert (ray_dir / "crashed").exists(), "no worker was killed: the test did not test recovery"
    assert executor.restarts >= 1
    local_rows, ray_rows = _rows(local_dir / "store.sqlite"), _rows(ray_dir / "store.sqlite")
    assert [r[:2] for r in ray_rows] == [r[:2] for r in local_rows]  # nothing lost, nothing duplicated
    np.testing.assert_allclose([r[2] for r in ray_rows], [r[2] for r in local_rows], atol=1e-12)
    np.testing.assert_allclose(result.front_predicted, expected.front_predicted, atol=1e-9)
