"""`kill -9` of `merge-explorer run` at random moments: what is lost, and does a rerun give the same front?

    python -m benchmarks.bench_kill              # 20 trials
    python -m benchmarks.bench_kill --trials 5

Each trial copies the toy experiment (tests/toy_zoo.py) with an empty store, starts
`merge-explorer run spec` as a real process, sends it SIGKILL at a random moment, then reruns the
same command to the end. Four trials in five kill uniformly within the evaluation phase of an
uninterrupted run (counted from the second evaluator call, when the first result is committed, to
the exit: merges, evaluations, commits, the fit); every fifth kills uniformly within the start-up
before it (imports, store creation, hashing).
The evaluator logs every call before it measures, so per trial:

- lost = evaluator calls made by the killed process − rows it left in the store (at most 1: the
  evaluation in progress; SQLite's WAL commits each row atomically);
- the rerun measures only what the store lacks (its calls = rows it added);
- the rerun's front (`front_coefficients`) equals the front of an uninterrupted run, exactly.

Writes benchmarks/results/kill.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _env(log: Path, delay: float) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOY_CALL_LOG=str(log), TOY_DELAY=str(delay))


def _rows(store: Path) -> int:
    if not store.exists():
        return 0
    conn = sqlite3.connect(store, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    except sqlite3.OperationalError as exc:  # killed before the schema was committed
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()


def _calls(log: Path) -> int:
    return log.read_text().count("\n") if log.exists() else 0


def _run(spec: Path, log: Path, delay: float, budget: int | None) -> subprocess.Popen:
    extra = ["--budget", str(budget)] if budget else []
    return subprocess.Popen([sys.executable, "-m", "explorer.cli", "run", str(spec), "--no-progress", *extra],
                            cwd=ROOT, env=_env(log, delay), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def front(spec: Path) -> np.ndarray:
    sys.path.insert(0, str(ROOT))
    from explorer.experiment.experiment import Experiment

    exp = Experiment.from_file(spec)
    try:
        return exp.result().front_coefficients
    finally:
        exp.store.close()


def fresh_copy(template: Path, directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(template.parent, directory, ignore=shutil.ignore_patterns("store.sqlite*", "calls*.log"))
    return directory / template.name


def reference(template: Path, work: Path, delay: float, budget: int | None) -> tuple[np.ndarray, float, float, int]:
    """(front, start-up seconds, evaluation-phase seconds, rows) of an uninterrupted run."""
    spec = fresh_copy(template, work / "reference")
    log = spec.parent / "calls.log"
    start = time.perf_counter()
    proc = _run(spec, log, delay, budget)
    first = None
    while proc.poll() is None:
        if first is None and _calls(log) >= 2:
            first = time.perf_counter() - start
        time.sleep(0.01)
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    seconds = time.perf_counter() - start
    first = seconds if first is None else first
    return front(spec), first, seconds - first, _rows(spec.parent / "store.sqlite")


def kill_trial(template: Path, work: Path, kill_after: float, expected_front: np.ndarray, delay: float,
               budget: int | None, after_first_call: bool = True, rerun=None) -> dict:
    """One trial: run, SIGKILL `kill_after` s after the first evaluator call (or after the start),
    measure the loss, rerun, compare the front.

    rerun: a function of the spec path running the same command to the end and returning its exit
    status (default: `merge-explorer run` in a new process).
    """
    spec = fresh_copy(template, work)
    store, log = spec.parent / "store.sqlite", spec.parent / "calls.log"
    proc = _run(spec, log, delay, budget)
    if after_first_call:  # from the second evaluator call on: the first result is committed
        while _calls(log) < 2 and proc.poll() is None:
            time.sleep(0.005)
    time.sleep(kill_after)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    rows_killed, calls_killed = _rows(store), _calls(log)
    err = ""
    if rerun is None:
        process = _run(spec, log, 0.0, budget)
        _, err = process.communicate(timeout=1800)
        code = process.returncode
    else:
        saved = {k: os.environ.get(k) for k in ("TOY_CALL_LOG", "TOY_DELAY")}
        os.environ.update(TOY_CALL_LOG=str(log), TOY_DELAY="0")
        try:
            code = rerun(spec)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    rows_after, calls_rerun = _rows(store), _calls(log) - calls_killed
    conn = sqlite3.connect(store)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    got = front(spec) if code == 0 else np.empty((0, expected_front.shape[1]))
    same = got.shape == expected_front.shape and bool(np.array_equal(got, expected_front))
    return {
        "kill_after_s": round(kill_after, 3), "finished_before_kill": finished_first,
        "rows_when_killed": rows_killed, "calls_when_killed": calls_killed, "lost": calls_killed - rows_killed,
        "rerun_exit": code, "rerun_error": err.strip().splitlines()[-1] if code and err.strip() else None,
        "rerun_calls": calls_rerun, "rerun_rows_added": rows_after - rows_killed, "rows_after": rows_after,
        "integrity": integrity, "same_front": same,
        "front_max_abs_diff": float(np.max(np.abs(got - expected_front))) if got.shape == expected_front.shape else None,
    }


def trial_ok(t: dict, total_rows: int) -> bool:
    return (t["lost"] <= 1 and t["rerun_exit"] == 0 and t["rows_after"] == total_rows
            and t["rerun_calls"] == t["rerun_rows_added"] and t["integrity"] == "ok" and t["same_front"])


def build_toy(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests import toy_zoo

    return toy_zoo.build(directory)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.01, help="extra seconds per evaluation (TOY_DELAY)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp:
        work = Path(tmp)
        template = build_toy(work / "template")
        expected, startup_s, eval_s, total_rows = reference(template, work, args.delay, None)
        run_s = startup_s + eval_s
        trials = []
        for i in range(args.trials):
            in_startup = i % 5 == 4
            when = float(rng.uniform(0, startup_s if in_startup else eval_s))
            t = kill_trial(template, work / f"trial{i}", when, expected, args.delay, None, not in_startup)
            t["phase"] = "start-up" if in_startup else "evaluation"
            t["ok"] = trial_ok(t, total_rows)
            trials.append(t)
            print(f"trial {i + 1:2d}: killed {t['kill_after_s']:5.2f} s into the {t['phase']} with {t['rows_when_killed']:3d}/{total_rows} rows, "
                  f"lost {t['lost']}, rerun measured {t['rerun_calls']}, same front: {t['same_front']}", flush=True)
    mid = [t for t in trials if 0 < t["rows_when_killed"] < total_rows]
    summary = {
        "trials": len(trials), "ok": sum(t["ok"] for t in trials), "uninterrupted_run_s": run_s,
        "startup_s": startup_s, "evaluation_phase_s": eval_s,
        "rows_per_run": total_rows, "killed_mid_evaluation": len(mid),
        "killed_before_first_row": sum(t["rows_when_killed"] == 0 for t in trials),
        "killed_after_last_row": sum(t["rows_when_killed"] == total_rows for t in trials),
        "max_lost": max(t["lost"] for t in trials), "lost_total": sum(t["lost"] for t in trials),
        "same_front": sum(t["same_front"] for t in trials),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "trial_results": trials,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kill.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# kill -9 of `merge-explorer run` at random moments ({len(trials)} trials, toy experiment)", "",
        "| figure | value |", "|---|---|",
        f"| uninterrupted run | {run_s:.1f} s ({startup_s:.1f} s start-up, {eval_s:.1f} s evaluating and fitting), {total_rows} rows |",
        f"| kills during the evaluations / before the first row / after the last row | "
        f"{summary['killed_mid_evaluation']} / {summary['killed_before_first_row']} / {summary['killed_after_last_row']} |",
        f"| evaluations lost per kill (max) / in all | {summary['max_lost']} / {summary['lost_total']} |",
        f"| reruns that measured only what was missing | {sum(t['rerun_calls'] == t['rerun_rows_added'] for t in trials)} / {len(trials)} |",
        f"| reruns with the same front_coefficients (exactly) | {summary['same_front']} / {len(trials)} |",
        f"| stores passing PRAGMA integrity_check | {sum(t['integrity'] == 'ok' for t in trials)} / {len(trials)} |",
        "", f"Machine: {summary['machine']}.",
    ]
    (RESULTS / "kill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if summary["ok"] == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
