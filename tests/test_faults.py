"""Faults and load on a really trained toy experiment: kill -9, concurrent writers, Ray workers,
state-dict models in bf16/fp16, and the app letting go of engines it no longer shows."""
from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from benchmarks import bench_kill, bench_store_load
from explorer.errors import CheckpointError
from explorer.experiment.executors import RUNTIME_BYTES, _Worker, float32_bytes, plan_workers, worker_memory_bytes
from explorer.experiment.experiment import Experiment
from explorer.merging.inplace import Merger
from explorer.merging.task_vectors import compute_task_vectors
from tests import toy_zoo
from tests.shared_toy import copy_toy, shared_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return shared_toy(tmp_path_factory)  # read-only: tests that write copy it


_copy = copy_toy


def _digest(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


# --- kill -9 and concurrent writers (real processes; the benchmarks run more of the same) ----------
@pytest.mark.slow
def test_kill_9_loses_at_most_the_evaluation_in_progress_and_the_rerun_gives_the_same_front(toy, tmp_path):
    from explorer import cli

    reference = Experiment.from_file(copy_toy(toy, tmp_path / "reference"))
    expected = reference.run(progress=False).front_coefficients
    total_rows = reference.store.count(reference.key)
    assert expected.shape[1] == 3 and total_rows == 63
    rng = np.random.default_rng(1)
    for i in range(2):
        t = bench_kill.kill_trial(toy, tmp_path / f"trial{i}", float(rng.uniform(0.2, 2.0)), expected, 0.05, None,
                                  rerun=lambda spec: cli.main(["run", str(spec), "--no-progress"]))
        assert 0 < t["rows_when_killed"] < total_rows, t  # killed mid-run (not before or after it)
        assert t["lost"] <= 1, t
        assert t["rerun_exit"] == 0 and t["rows_after"] == total_rows, t
        assert t["rerun_calls"] == t["rerun_rows_added"], t  # nothing already stored was measured again
        assert t["integrity"] == "ok" and t["same_front"], t


@pytest.mark.slow
def test_two_app_sessions_verifying_and_a_run_writing_share_one_store(toy, tmp_path):
    spec = _copy(toy, tmp_path / "toy")
    result = bench_store_load.load_trial(spec, budget=12, sessions=2)
    assert result["writer_exit"] == 0 and result["session_exits"] == [0, 0], result
    assert result["verified_points"] >= 6 and result["rows_by_kind"].get("verify", 0) >= 18, result
    assert result["lost"] == 0 and result["mismatched"] == 0 and result["missing_design_points"] == 0, result
    assert result["locked_messages"] == 0 and not result["session_errors"] and result["integrity"] == "ok", result


# --- Ray workers -------------------------------------------------------------------------------
def test_worker_memory_estimate_and_the_default_worker_count(toy):
    exp = Experiment.from_file(toy, store_path=":memory:")
    base = float32_bytes(toy.parent / "base.safetensors")
    assert base == sum(t.numel() * 4 for t in load_file(str(toy.parent / "base.safetensors")).values())
    per_worker = worker_memory_bytes(exp)
    assert per_worker == RUNTIME_BYTES + 4 * base + 3 * base  # (T+1) checkpoints + T task vectors, float32

    # a bf16 checkpoint counts twice its file's tensor bytes
    half = toy.parent.parent / "half.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(toy.parent / "base.safetensors")).items()}, str(half))
    assert float32_bytes(half) == base

    assert plan_workers(None, slots=8, per_worker=per_worker, node_memory=[3.5 * per_worker]) == (3, None)
    assert plan_workers(None, slots=2, per_worker=per_worker, node_memory=[3.5 * per_worker]) == (2, None)
    n, message = plan_workers(8, slots=2, per_worker=per_worker, node_memory=[2.5 * per_worker, 1.2 * per_worker])
    assert n == 3 and message.startswith("asked for 8 workers") and "fits 3: starting 3" in message
    assert "\n" not in message
    n, message = plan_workers(None, slots=4, per_worker=per_worker, node_memory=[0.5 * per_worker])
    assert n == 1 and "starting 1 worker anyway" in message


def _pickled_toy(toy: Path, directory: Path) -> Path:
    """The toy experiment with every checkpoint saved as a pickled whole module (.pt)."""
    directory.mkdir()
    spec = yaml.safe_load(toy.read_text())
    for name in ["base", *spec["tasks"]]:
        module = toy_zoo.make_mlp(load_file(str(toy.parent / f"{name}.safetensors")))
        torch.save(module, directory / f"{name}.pt")
    spec["model"]["base"] = "base.pt"
    for name, task in spec["tasks"].items():
        task["checkpoint"] = f"{name}.pt"
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_worker_loads_pickles_only_when_trusted_and_never_writes_the_store(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGE_EXPLORER_WORKER", "")  # a worker built here marks this process: recorded so that
    monkeypatch.delenv("MERGE_EXPLORER_WORKER")        # the mark is undone after (delenv alone records nothing)
    spec = _pickled_toy(toy, tmp_path / "pickled")
    store = spec.parent / "store.sqlite"
    driver = Experiment.from_file(spec, trust_pickle=True)
    driver.evaluate(np.zeros(3))  # the driver's store exists and holds a result
    before = _digest(store)

    worker = _Worker(str(spec), "cpu", True, None)
    key, identities, values, scored = worker.measure([0.3, 0.3, 0.3], ["low", "high"])
    assert key == driver.key and identities == driver.task_identities
    assert [t for t, _, _ in values] == ["low", "high"] and all(0 < v <= 1 for _, v, _ in values)
    assert scored == []  # nothing subsampled in this spec
    assert _digest(store) == before  # the worker measured, the store is as the driver left it
    assert not list(Path.cwd().glob(".worker-*.sqlite"))

    untrusted = _Worker(str(spec), "cpu", False, None)
    with pytest.raises(CheckpointError, match=r"base\.pt: it holds a pickled module"):
        untrusted.measure([0.3, 0.3, 0.3], ["low"])


@pytest.mark.slow
def test_ray_workers_get_the_trust_flag(toy, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from explorer.experiment.executors import RayExecutor

    spec = _pickled_toy(toy, tmp_path / "pickled")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    exp = Experiment.from_file(spec, trust_pickle=True)  # the CLI's --trust-pickle; the spec itself says false
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        points = [(c, "design") for c in exp.design()[:4]]
        done = list(RayExecutor(num_workers=1).run(exp, points))
    finally:
        ray.shutdown()
    assert len(done) == 4 and all(len(exp.stored(c)) == 3 for c, _ in points)


# --- family: state_dict in half precision, on any device -----------------------------------------
def dict_accuracy(weights: dict, classes, split: str = "val") -> float:
    """The toy metric for a plain state dict (family state_dict), whatever its dtype and device."""
    model = toy_zoo.make_mlp({k: v.detach().to("cpu", torch.float32) for k, v in weights.items()})
    return toy_zoo.accuracy(model, classes, split)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_state_dict_family_merges_half_precision_checkpoints_on_cpu(toy, tmp_path, dtype):
    d = tmp_path / "half"
    d.mkdir()
    spec = yaml.safe_load(toy.read_text())
    states = {}
    for name in ["base", *spec["tasks"]]:
        states[name] = {k: v.to(dtype) for k, v in load_file(str(toy.parent / f"{name}.safetensors")).items()}
        save_file(states[name], str(d / f"{name}.safetensors"))
    spec["model"] = {"family": "state_dict", "base": "base.safetensors"}
    for task in spec["tasks"].values():
        task["evaluator"] = "tests.test_faults:dict_accuracy"
    (d / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    exp = Experiment.from_file(d / "spec.yaml", device="cpu")

    c = np.array([0.3, 0.5, 0.2])
    exp.engine.merger.apply(c)
    merged = exp.engine.model
    for key, base in states["base"].items():
        expected = base.float() + sum(ci * (states[t][key].float() - base.float()) for ci, t in zip(c, exp.tasks))
        assert merged[key].dtype == dtype and merged[key].device.type == "cpu"
        torch.testing.assert_close(merged[key].float(), expected.to(dtype).float(), rtol=0, atol=4 * torch.finfo(dtype).eps * expected.abs().max().item())

    base_low = exp.evaluate(np.zeros(3))[0]
    expert_low = exp.evaluate(np.eye(3)[0])[0]
    assert expert_low > base_low + 0.2  # the half-precision merge is a real, working model


def test_a_plain_dict_model_moves_to_the_task_vectors_device(toy):
    base = load_file(str(toy.parent / "base.safetensors"))
    experts = [load_file(str(toy.parent / f"{t}.safetensors")) for t in ("low", "mid", "high")]
    tv = compute_task_vectors(base, experts)
    target = {k: v.to(torch.bfloat16) for k, v in base.items()}
    merger = Merger(target, base, tv, device="meta")  # a device other than the dict's (no GPU needed)
    assert all(v.device.type == "meta" for v in target.values())
    merger.apply([0.2, 0.2, 0.2])  # CPU slots with meta vectors would fail in addmv(out=)
    assert all(v.dtype == torch.bfloat16 for v in target.values())


# --- the app keeps only the engines it shows -----------------------------------------------------
def test_the_workspace_drops_engines_it_no_longer_shows(toy, tmp_path):
    from explorer.app_state import Workspace

    specs = [_copy(toy, tmp_path / name) for name in ("a", "b", "c")]
    ws = Workspace()
    a = ws.open(specs[0])
    engine_a = weakref.ref(a.experiment.engine)  # a built model and task vectors
    assert ws.open(specs[0]) is a
    b = ws.open(specs[1])
    assert ws.open(specs[1]) is b and len(ws._handles) == 2  # two experiments shown (e.g. two people): both kept
    del a
    ws.open(specs[2])  # a third: the least recently shown (a) goes
    gc.collect()
    assert engine_a() is None and len(ws._handles) == 2

    engine_b = weakref.ref(b.experiment.engine)
    spec_b = yaml.safe_load(specs[1].read_text())
    spec_b["name"] = "edited"
    specs[1].write_text(yaml.safe_dump(spec_b, sort_keys=False))
    edited = ws.open(specs[1])  # the spec file changed: its old version is not shown any more
    del b
    gc.collect()
    assert edited.experiment.spec.name == "edited" and engine_b() is None
