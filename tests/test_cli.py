"""The command line on a really trained toy experiment: run, resume, pick, export, bad input."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests import toy_zoo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy_template(tmp_path_factory):
    return toy_zoo.build(tmp_path_factory.mktemp("toy_template"))


@pytest.fixture
def toy(toy_template, tmp_path):
    """A fresh copy of the toy experiment (checkpoints + spec, empty store) per test."""
    d = tmp_path / "toy"
    shutil.copytree(toy_template.parent, d, ignore=shutil.ignore_patterns("store.sqlite*"))
    return d / "spec.yaml"


def cli(*args, env=None, check=None):
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "explorer.cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=300)
    if check is not None:
        assert proc.returncode == check, proc.stderr + proc.stdout
    return proc


def rows(store):
    if not Path(store).exists():
        return []
    data = Path(store).read_bytes()
    if not data.startswith(b"SQLite format 3\x00"):  # not a store (yet): compare its bytes instead
        return [data]
    # a store being written is waited for (a lock is an OperationalError, which is a DatabaseError: it
    # must not pass for "not a store"); any other error, a damaged store among them, fails the test
    conn = sqlite3.connect(store, timeout=60)
    try:
        return conn.execute("SELECT experiment, task_identity, coeff_key, value FROM evaluations ORDER BY 1,2,3").fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # created, its tables not yet
            return []
        raise
    finally:
        conn.close()


def test_run_prints_references_r2_and_front(toy):
    proc = cli("run", toy, check=0)
    out = proc.stdout
    for word in ("task", "base", "expert", "task arith.", "R² (LOO-CV)", "low", "mid", "high", "balanced"):
        assert word in out
    assert "24/24" in proc.stderr  # progress bar: points done / total (design + references)
    low = next(line for line in out.splitlines() if line.startswith("low "))
    base, expert = float(low.split()[2]), float(low.split()[3])
    assert expert > base + 0.2  # the expert really is better on its task than the base
    assert low.split()[-1] in ("quadratic", "kriging") and "surrogate: quadratic = MAP's" in out  # family per task
    balanced = next(line for line in out.splitlines() if line.startswith("balanced "))
    assert balanced.count("±") == 3 and balanced.split()[-1] in ("yes", "NO")  # every prediction carries its std
    stds = [float(w) for a, w in zip(balanced.split(), balanced.split()[1:]) if a == "±"]
    assert all(0 < s < 0.2 for s in stds)
    again = cli("run", toy, env={"TOY_CALL_LOG": str(toy.parent / "calls.log")}, check=0)
    assert not (toy.parent / "calls.log").exists() or (toy.parent / "calls.log").read_text().count("\n") <= 3
    assert again.stdout.splitlines()[2:5] == out.splitlines()[2:5]


def test_interrupted_run_resumes_without_reevaluating(toy):
    store = toy.parent / "store.sqlite"
    log = toy.parent / "calls.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOY_DELAY="0.05", TOY_CALL_LOG=str(log))
    # Ctrl-C as a terminal sends it: SIGINT at its default disposition in the run, even where the suite
    # itself was started with SIGINT ignored (a background job of a non-interactive shell passes that on)
    proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "run", str(toy), "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(rows(store)) < 15 and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    done = rows(store)
    assert 15 <= len(done) < 72
    calls_before = log.read_text().count("\n")
    assert calls_before - len(done) <= 1  # at most the evaluation in progress was lost
    cli("run", toy, "--no-progress", env={"TOY_CALL_LOG": str(log)}, check=0)
    calls_after = log.read_text().count("\n") - calls_before
    total = rows(store)
    assert set(done) <= set(total)  # nothing lost
    assert calls_after <= len(total) - len(done) + 1  # nothing already stored was measured again
    assert len({r[:3] for r in total}) == len(total)  # no duplicates


def test_killed_run_leaves_a_usable_store(toy):
    store = toy.parent / "store.sqlite"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOY_DELAY="0.05")
    proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "run", str(toy), "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(rows(store)) < 10 and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()  # no chance to clean up, as in a crash
    proc.wait()
    kept = rows(store)
    cli("run", toy, "--no-progress", check=0)
    assert set(kept) <= set(rows(store))


def test_pick_weights_minimums_and_infeasible(toy):
    cli("run", toy, "--no-progress", check=0)
    base = cli("pick", toy, check=0).stdout
    favour = cli("pick", toy, "--weights", "low=4,mid=1,high=1", check=0).stdout
    coef = lambda text, task: float(next(l for l in text.splitlines() if l.startswith(task + " ")).split()[1])  # noqa: E731
    pred = lambda text, task: float(next(l for l in text.splitlines() if l.startswith(task + " ")).split()[2])  # noqa: E731
    assert pred(favour, "low") > pred(base, "low")
    constrained = cli("pick", toy, "--min", f"high={pred(base, 'high') + 0.01:.4f}", check=0).stdout
    assert pred(constrained, "high") >= pred(base, "high") + 0.01 - 1e-4
    impossible = cli("pick", toy, "--min", "low=0.999,mid=0.999,high=0.999")
    assert impossible.returncode == 1 and "infeasible" in impossible.stdout and "closest feasible point" in impossible.stdout
    assert coef(impossible.stdout, "low") >= 0


def test_export_files_reproduce_the_choice(toy, tmp_path):
    cli("run", toy, "--no-progress", check=0)
    out = tmp_path / "export"
    cli("export", toy, "--weights", "low=2,mid=1,high=1", "--min", "mid=0.9", "--out", out, check=0)
    doc = json.loads((out / "coefficients.json").read_text())
    c = np.array([doc["coefficients"][t] for t in ("low", "mid", "high")])
    assert doc["tasks"] == ["low", "mid", "high"] and doc["merge"] == {"method": "task_arithmetic"}
    assert doc["package"]["name"] == "merge-explorer" and len(doc["checkpoints"]["base"]["sha256"]) == 64
    assert set(doc["surrogate_r2_cv"]) == {"low", "mid", "high"} and doc["predicted"]["mid"] >= 0.9
    cfg = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert cfg["merge_method"] == "task_arithmetic"
    assert cfg["parameters"] == {"normalize": False}
    assert Path(cfg["base_model"]) == toy.parent / "base.safetensors"
    assert [Path(m["model"]).name for m in cfg["models"]] == ["low.safetensors", "mid.safetensors", "high.safetensors"]
    assert [m["parameters"]["weight"] for m in cfg["models"]] == pytest.approx(c.tolist())
    merged = load_file(str(out / "merged.safetensors"))
    base = load_file(str(toy.parent / "base.safetensors"))
    experts = [load_file(str(toy.parent / f"{t}.safetensors")) for t in ("low", "mid", "high")]
    assert merged.keys() == base.keys() and all(merged[k].dtype == base[k].dtype for k in base)
    for k in base:
        want = base[k].double() + sum(ci * (e[k].double() - base[k].double()) for ci, e in zip(c, experts))
        assert torch.allclose(merged[k].double(), want, atol=1e-5)
    model = toy_zoo.make_mlp(merged)  # loadable by the same loader as the base
    measured = toy_zoo.accuracy(model, toy_zoo.GROUPS["mid"])
    assert abs(measured - doc["predicted"]["mid"]) < 0.1


def write_spec(spec_path, change):
    spec = yaml.safe_load(spec_path.read_text())
    change(spec)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))


def expect_error(toy, pattern, *extra):
    store = toy.parent / "store.sqlite"
    before = rows(store)
    proc = cli("run", toy, "--no-progress", *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert rows(store) == before  # store untouched
    return lines[0]


def test_bad_input_missing_checkpoint(toy):
    (toy.parent / "mid.safetensors").unlink()
    expect_error(toy, r"mid\.safetensors: checkpoint file not found")


def test_bad_input_shape_mismatch(toy):
    state = load_file(str(toy.parent / "high.safetensors"))
    state["2.weight"] = torch.zeros(10, 40)
    save_file(state, str(toy.parent / "high.safetensors"))
    expect_error(toy, r"high\.safetensors: tensor '2\.weight' has shape \(10, 40\); base .*base\.safetensors has \(10, 48\)")


def test_bad_input_nan_in_checkpoint(toy):
    state = load_file(str(toy.parent / "low.safetensors"))
    state["0.bias"][3] = float("nan")
    save_file(state, str(toy.parent / "low.safetensors"))
    expect_error(toy, r"low\.safetensors: tensor '0\.bias' contains NaN or inf")


def test_bad_input_nan_metric(toy):
    write_spec(toy, lambda s: [t["params"].update(broken=True) for t in s["tasks"].values()])
    expect_error(toy, r"evaluator of task 'low' returned nan at c=\[0\.0, 0\.0, 0\.0\]; nothing was stored")


def test_bad_input_bounds(toy):
    write_spec(toy, lambda s: s.update(bounds=[0.5, 0.5]))
    expect_error(toy, r"bounds .* lo >= hi")


def test_bad_input_budget_too_small(toy):
    expect_error(toy, r"budget 4 is smaller than the 10 evaluations", "--budget", "4")


def test_bad_input_unknown_key_suggests_closest(toy):
    write_spec(toy, lambda s: s["model"].update(architecure="x"))
    expect_error(toy, r"unknown key 'model\.architecure'; did you mean 'architecture'\?")
    write_spec(toy, lambda s: (s["model"].pop("architecure"), s.update(budjet=3)))
    expect_error(toy, r"unknown key 'budjet'; did you mean 'budget'\?")


def test_bad_input_fewer_than_two_tasks(toy):
    write_spec(toy, lambda s: [s["tasks"].pop(k) for k in ("mid", "high")])
    expect_error(toy, r"tasks: .*at least 2 tasks")


def test_bad_input_corrupt_or_foreign_store(toy):
    store = toy.parent / "store.sqlite"
    store.write_bytes(b"this is not a database" * 100)
    expect_error(toy, r"store\.sqlite: not a merge-explorer store")
    assert store.read_bytes() == b"this is not a database" * 100  # never overwritten
    store.unlink()
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    expect_error(toy, r"store\.sqlite: is a SQLite file of another application")
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("customers",)]


def test_missing_spec_file(tmp_path):
    proc = cli("run", tmp_path / "absent.yaml")
    assert proc.returncode == 2 and "absent.yaml: spec file not found" in proc.stderr


def test_pickled_module_checkpoint_needs_the_trust_flag(toy):
    model = toy_zoo.make_mlp(load_file(str(toy.parent / "mid.safetensors")))
    torch.save(model, toy.parent / "mid.pt")  # a whole pickled module, as in the task_vectors repo
    write_spec(toy, lambda s: s["tasks"]["mid"].update(checkpoint="mid.pt"))
    line = expect_error(toy, r"mid\.pt: it holds a pickled module.*--trust-pickle")
    assert "convert" in line
    cli("run", toy, "--no-progress", "--trust-pickle", check=0)


# --- uncertainty, polish, measured exports -----------------------------------------------------------
def main_out(capsys, *args) -> tuple[int, str, str]:
    from explorer import cli as cli_module

    capsys.readouterr()
    code = cli_module.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(text: str, tasks=("low", "mid", "high"), after: str = "") -> dict[str, list[str]]:
    lines = text.split(after, 1)[1].splitlines() if after else text.splitlines()
    out = {}
    for line in lines:
        words = line.split()
        if words and words[0] in tasks and words[0] not in out:
            out[words[0]] = words
    return out


def test_pick_polish_measures_and_export_uses_the_polished_point(toy, tmp_path, capsys, monkeypatch):
    from explorer.experiment.experiment import Experiment

    assert main_out(capsys, "run", toy, "--no-progress")[0] == 0
    fitted = len(Experiment.from_file(toy).result().samples)
    code, out, err = main_out(capsys, "pick", toy, "--weights", "low=3,mid=1,high=1", "--polish", 5)
    assert code == 0, err
    assert "polish:" in err and "/5 [" in err  # the progress bar: count and time elapsed<left
    rows = table_rows(out, after="polishing the pick")
    assert "measured (pick)" in out and "measured (polished)" in out and "predicted (polished)" in out
    # task, c (pick), pred ± std, measured (pick), c (polished), pred ± std, measured (polished), gain
    polished_c = np.array([float(rows[t][6]) for t in ("low", "mid", "high")])
    polished_m = np.array([float(rows[t][10]) for t in ("low", "mid", "high")])
    exp = Experiment.from_file(toy)
    C, M, kinds = exp.measured(["polish"])
    assert 1 <= len(C) <= 5  # at most the budget, each stored
    k = int(np.argmin(np.abs(C - polished_c).max(axis=1)))
    assert np.allclose(C[k], polished_c, atol=1e-4) and np.allclose(M[k], polished_m, atol=1e-4)
    assert len(exp.result().samples) == fitted  # polish points inform no fit

    log = tmp_path / "calls.log"
    monkeypatch.setenv("TOY_CALL_LOG", str(log))
    code, again, _ = main_out(capsys, "pick", toy, "--weights", "low=3,mid=1,high=1", "--polish", 5, "--no-progress")
    assert code == 0 and "(0 new)" in again and not log.exists()  # resumed from the store: nothing measured again

    out_dir = tmp_path / "export"
    code, out, err = main_out(capsys, "export", toy, "--weights", "low=3,mid=1,high=1", "--polish", 5,
                              "--no-progress", "--no-checkpoint", "--out", out_dir)
    assert code == 0, err
    doc = json.loads((out_dir / "coefficients.json").read_text())
    c = np.array([doc["coefficients"][t] for t in ("low", "mid", "high")])
    assert np.allclose(c, polished_c, atol=1e-4)
    assert np.allclose([doc["measured"][t] for t in ("low", "mid", "high")], polished_m, atol=1e-4)
    assert doc["polish"]["evaluations"] <= 5 and doc["polish"]["achievement_polished"] <= doc["polish"]["achievement_start"]
    assert "validation" in doc["note"] and set(doc["surrogate_family"].values()) <= {"quadratic", "kriging"}
    assert all(s is None or s > 0 for s in doc["predicted_std"].values())
    # the toy evaluator takes `split`: the exported point is measured on split="test" too, and stored
    test = doc["test_split"]["metrics"]
    assert all(0 <= test[t] <= 1 for t in ("low", "mid", "high")) and doc["test_split"]["notes"] == {}
    assert "test split (held out)" in out and "note: The choice was made on validation data" in out
    assert log.read_text().count("\n") == 3  # the test split: one evaluation per task, nothing else


def accuracy_without_split(model, classes):
    """A real evaluator that has no `split` parameter (so no held-out test split)."""
    return toy_zoo.accuracy(model, classes)


def test_held_out_metrics_say_which_tasks_have_no_test_split(toy):
    from explorer.experiment import holdout
    from explorer.experiment.experiment import Experiment

    write_spec(toy, lambda s: s["tasks"]["high"].update(evaluator="tests.test_cli:accuracy_without_split"))
    exp = Experiment.from_file(toy)
    c = np.array([0.3, 0.5, 0.2])
    assert holdout.held_out_metrics(exp, c) == ({"low": None, "mid": None, "high": None},
                                               {"high": holdout.NO_SPLIT,
                                                "low": "not measured yet (`merge-explorer export` measures it)",
                                                "mid": "not measured yet (`merge-explorer export` measures it)"})
    values, notes = holdout.held_out_metrics(exp, c, measure=True)
    assert values["high"] is None and notes == {"high": holdout.NO_SPLIT}
    assert values["mid"] == pytest.approx(toy_zoo.accuracy(exp.engine.model, toy_zoo.GROUPS["mid"], split="test"))
    fresh = Experiment.from_file(toy)  # stored: read back without a model
    assert holdout.held_out_metrics(fresh, c) == (values, notes) and not fresh.loaded
    assert len(fresh.measured()[0]) == 0  # test-split results are not validation points
