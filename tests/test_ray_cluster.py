"""A run on an existing two-node Ray cluster (started with `ray start`) uses both nodes, and losing
the worker node mid-run loses only the points in flight there: they are re-run on the head node,
nothing is measured twice, the driver alone writes the store, and the front is the undisturbed one.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
import yaml

from tests.toy_zoo import accuracy, build

ray = pytest.importorskip("ray")

from explorer.experiment.executors import make_executor  # noqa: E402 - after the skip: imports ray's extras
from explorer.experiment.experiment import Experiment  # noqa: E402
from tests.ray_nodes import ROOT, LocalCluster, node_env  # noqa: E402

DELAY_S = 0.25  # per evaluator call: a point (3 tasks) takes ~0.8 s, so the kill lands mid-point


def node_logged_accuracy(model, classes, **kwargs) -> float:
    """The toy metric; inside a Ray worker it first appends '<node id> <pid>' to NODE_CALL_LOG."""
    log = os.environ.get("NODE_CALL_LOG")
    if log and os.environ.get("MERGE_EXPLORER_WORKER"):
        with open(log, "a") as fh:
            fh.write(f"{ray.get_runtime_context().get_node_id()} {os.getpid()}\n")
        time.sleep(DELAY_S)
    return accuracy(model, classes, **kwargs)


def _spec(template, directory):
    """The toy spec with absolute checkpoint paths (every node reads them at the same paths)."""
    directory.mkdir()
    spec = yaml.safe_load(template.read_text())
    spec["store"] = str(directory / "store.sqlite")
    spec["model"]["base"] = str(template.parent / spec["model"]["base"])
    for task in spec["tasks"].values():
        task["checkpoint"] = str(template.parent / task["checkpoint"])
        task["evaluator"] = "tests.test_ray_cluster:node_logged_accuracy"
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _rows(store):
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT task, coeff_key, value FROM evaluations ORDER BY task, coeff_key").fetchall()


def _calls(log, skip=0):
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[0] for line in lines[skip:]]


def test_two_node_cluster_spreads_points_and_survives_losing_the_worker_node(tmp_path):
    template = build(tmp_path / "toy")
    log = tmp_path / "calls.log"
    with LocalCluster(head_cpus=2, worker_cpus=2, env={"NODE_CALL_LOG": str(log)}) as cluster:
        # 1. undisturbed, the way users run it: the CLI pointed at the cluster
        calm = _spec(template, tmp_path / "calm")
        t0 = time.monotonic()
        cli = subprocess.run([sys.executable, "-m", "explorer.cli", "run", str(calm), "--no-progress",
                              "--executor", "ray", "--ray-address", cluster.address, "--workers", "2"],
                             cwd=ROOT, env=node_env(), capture_output=True, text=True, timeout=600)
        calm_s = time.monotonic() - t0
        assert cli.returncode == 0, cli.stderr[-3000:]
        assert "on 2 node(s)" in cli.stderr, cli.stderr[-3000:]  # the placement line: both nodes measured
        calm_calls = Counter(_calls(log))
        assert len(calm_calls) == 2 and min(calm_calls.values()) >= 3, calm_calls

        # 2. the same experiment, new store, and the worker node SIGKILLed mid-run
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        try:
            node_b = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_b" in n["Resources"])
            head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_head" in n["Resources"])
            before = len(log.read_text().splitlines())
            executor = make_executor("ray", num_workers=2)
            killed = {}

            def kill_worker_node_after_two_points():
                while sum(node == node_b and what == "measured" for _, node, what, _ in list(executor.history)) < 2:
                    time.sleep(0.02)
                killed["measured_on_b"] = sum(n == node_b and w == "measured" for _, n, w, _ in executor.history)
                killed["calls_on_b"] = _calls(log, before).count(node_b)
                cluster.worker.kill()

            killer = threading.Thread(target=kill_worker_node_after_two_points, daemon=True)
            killer.start()
            hurt = Experiment.from_file(_spec(template, tmp_path / "hurt"))
            t0 = time.monotonic()
            result = hurt.run(progress=False, executor=executor)
            hurt_s = time.monotonic() - t0
            killer.join(timeout=5)
            hurt.store.close()
        finally:
            ray.shutdown()

    assert killed, "the worker node was never killed: the run finished before it measured two points"
    history = executor.history
    lost = [c for c, node, what, _ in history if what == "lost"]
    measured = Counter(c for c, _, what, _ in history if what == "measured")
    assert lost, "no point was in flight on the worker node when it died: recovery was not tested"
    assert all(node == node_b for _, node, what, _ in history if what == "lost")
    assert max(measured.values()) == 1  # nothing measured twice ...
    for c in lost:  # ... and every point in flight on the lost node was re-run on the head
        assert [node for p, node, what, _ in history if p == c and what == "measured"] == [head]
    on_b = [c for c, node, what, _ in history if node == node_b and what == "measured"]
    assert len(on_b) == killed["measured_on_b"] and len(lost) <= 2  # after the kill: nothing on B; lost: ≤ B's workers
    calls = Counter(_calls(log, before))
    tasks = len(hurt.tasks)
    assert calls[node_b] <= tasks * (len(on_b) + len(lost))  # B's calls: its points, plus partial ones lost with it
    assert calls[head] == tasks * (len(measured) - len(on_b))  # head measured every other point once, each task once
    # the driver alone wrote the store: same rows (task, point) as the undisturbed run, same values, same front
    calm_rows, hurt_rows = _rows(tmp_path / "calm" / "store.sqlite"), _rows(tmp_path / "hurt" / "store.sqlite")
    assert [r[:2] for r in hurt_rows] == [r[:2] for r in calm_rows]
    assert [r[2] for r in hurt_rows] == [r[2] for r in calm_rows]
    with sqlite3.connect(tmp_path / "hurt" / "store.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    calm_exp = Experiment.from_file(calm, read_only=True)
    np.testing.assert_array_equal(result.front_coefficients, calm_exp.result().front_coefficients)
    calm_exp.store.close()
    print(f"\ntwo-node kill: {len(measured)} points, {killed['measured_on_b']} measured on the worker node before "
          f"the kill, {len(lost)} in flight lost and re-run on the head; undisturbed {calm_s:.1f} s, "
          f"disturbed {hurt_s:.1f} s (driver start-up included in the undisturbed CLI run only)")


def test_losing_the_whole_cluster_stops_the_cli_with_one_line_and_a_resumable_store(tmp_path):
    template = build(tmp_path / "toy")
    spec = _spec(template, tmp_path / "run")
    store = tmp_path / "run" / "store.sqlite"

    def stored():
        with sqlite3.connect(store, timeout=30) as conn:
            try:
                return conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
            except sqlite3.OperationalError:  # no table yet
                return 0

    cmd = [sys.executable, "-m", "explorer.cli", "run", str(spec), "--no-progress", "--executor", "ray", "--ray-timeout", "10"]
    with LocalCluster(head_cpus=1, worker_cpus=1, env={"NODE_CALL_LOG": str(tmp_path / "calls.log")}) as cluster:
        proc = subprocess.Popen(cmd + ["--ray-address", cluster.address], cwd=ROOT, env=node_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while stored() < 6 and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        cluster.worker.kill()
        cluster.head.kill()
        lost_at = time.monotonic()
        _, err = proc.communicate(timeout=300)
        waited = time.monotonic() - lost_at
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, err[-3000:]
    assert len(errors) == 1 and "head" in errors[0] and "run the same command again" in errors[0], err[-3000:]
    assert "Traceback" not in err
    assert waited < 10 + 30  # the timeout, plus one poll and the process's exit
    rows = stored()
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # resumable: the same command (here in-process, the cluster being gone) measures only what is missing
    log = tmp_path / "rerun.log"
    rerun = subprocess.run([sys.executable, "-m", "explorer.cli", "run", str(spec), "--no-progress"], cwd=ROOT,
                           env=node_env({"TOY_CALL_LOG": str(log)}), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rows >= 6 and _calls(log) and len(_calls(log)) == stored() - rows
