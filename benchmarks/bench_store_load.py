"""Load on one store: two app sessions verifying and one CLI run writing, at the same time.

    python -m benchmarks.bench_store_load                 # budget 120 design points, 2 sessions
    python -m benchmarks.bench_store_load --budget 40 --sessions 2

Real processes on the toy experiment (tests/toy_zoo.py, trained here in a few seconds): one
`merge-explorer run spec --budget N` writes the design, while each "app session" process opens the
experiment the way the app does (`app_state.Workspace().open(spec)`), verifies random points in the
box (`ExperimentHandle.verify`: a merge, three evaluations, three committed rows) and reads the
store back after each (`ExperimentHandle.snapshot`, what a page does on every rerun), until the run
has finished. Afterwards every value a session was told it measured must be in the store, with the
same value, every design point of the run must be there, and no process may have printed
`database is locked` (or anything else) on stderr.

Writes benchmarks/results/store_load.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SESSION = r"""
import json, sys, time
import numpy as np
from explorer.app_state import Workspace
from explorer.errors import ExplorerError

spec, stop_file, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = np.random.default_rng(seed)
handle = Workspace().open(spec)
records, verify_s, read_s, errors = [], [], [], []
import os
while not os.path.exists(stop_file) or len(records) < 3:
    c = rng.uniform(handle.experiment.bounds[:, 0], handle.experiment.bounds[:, 1])
    t0 = time.perf_counter()
    try:
        values = handle.verify(c)
    except ExplorerError as exc:
        errors.append(str(exc))
        continue
    verify_s.append(time.perf_counter() - t0)
    records.append([c.tolist(), values.tolist()])
    t0 = time.perf_counter()
    handle.snapshot()
    read_s.append(time.perf_counter() - t0)
json.dump({"records": records, "verify_s": verify_s, "read_s": read_s, "errors": errors}, open(out, "w"))
"""


def build_toy(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests import toy_zoo

    return toy_zoo.build(directory)


def load_trial(spec: Path, budget: int, sessions: int = 2, delay: float = 0.0, seed: int = 0) -> dict:
    """Run the writer and the sessions on `spec`'s store at once; check and return the figures."""
    work = spec.parent
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOY_DELAY=str(delay))
    stop = work / "run-finished"
    stop.unlink(missing_ok=True)
    script = work / "session.py"
    script.write_text(SESSION)
    started = time.perf_counter()
    readers = [subprocess.Popen([sys.executable, str(script), str(spec), str(stop), str(work / f"session{i}.json"),
                                 str(seed + i)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(sessions)]
    writer = subprocess.run([sys.executable, "-m", "explorer.cli", "run", str(spec), "--budget", str(budget),
                             "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    run_s = time.perf_counter() - started
    stop.touch()
    outputs = [r.communicate(timeout=600) for r in readers]
    wall_s = time.perf_counter() - started

    stderr = [writer.stderr] + [e for _, e in outputs]
    sys.path.insert(0, str(ROOT))
    from explorer.experiment.experiment import Experiment

    exp = Experiment.from_file(spec)
    lost, mismatched, verified = 0, 0, 0
    verify_s, read_s, session_errors = [], [], []
    for i, r in enumerate(readers):
        data = json.loads((work / f"session{i}.json").read_text()) if r.returncode == 0 else {"records": []}
        verify_s += data.get("verify_s", [])
        read_s += data.get("read_s", [])
        session_errors += data.get("errors", [])
        for c, values in data["records"]:
            verified += 1
            have = exp.stored(np.array(c))
            if len(have) < len(exp.tasks):
                lost += 1
            elif not np.allclose([have[t] for t in exp.tasks], values, rtol=0, atol=0):
                mismatched += 1
    design = list(exp.design(budget)) + exp.reference_points()
    missing_design = sum(len(exp.stored(c)) < len(exp.tasks) for c in design)
    with sqlite3.connect(exp.store.path) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute("SELECT kind, COUNT(*) FROM evaluations GROUP BY kind").fetchall()
    locked = sum("locked" in s for s in stderr)
    pct = lambda v, q: float(np.percentile(v, q)) if v else float("nan")  # noqa: E731
    return {
        "budget": budget, "sessions": sessions, "writer_exit": writer.returncode,
        "session_exits": [r.returncode for r in readers], "wall_s": wall_s, "run_s": run_s,
        "rows_by_kind": dict(rows), "verified_points": verified, "lost": lost, "mismatched": mismatched,
        "missing_design_points": missing_design, "integrity": integrity, "locked_messages": locked,
        "other_stderr": [s.strip().splitlines()[-1] for s in stderr if s.strip() and "locked" not in s][:3],
        "session_errors": session_errors[:3],
        "verify_ms": {"p50": 1e3 * pct(verify_s, 50), "p95": 1e3 * pct(verify_s, 95), "max": 1e3 * max(verify_s, default=float("nan"))},
        "read_ms": {"p50": 1e3 * pct(read_s, 50), "p95": 1e3 * pct(read_s, 95), "max": 1e3 * max(read_s, default=float("nan"))},
    }


def ok(result: dict) -> bool:
    return (result["writer_exit"] == 0 and all(e == 0 for e in result["session_exits"]) and result["lost"] == 0
            and result["mismatched"] == 0 and result["missing_design_points"] == 0 and result["integrity"] == "ok"
            and result["locked_messages"] == 0 and not result["session_errors"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.0, help="extra seconds per evaluation (TOY_DELAY)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-load-") as tmp:
        spec = build_toy(Path(tmp) / "toy")
        result = load_trial(spec, args.budget, args.sessions, args.delay)
    result.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs", python=platform.python_version(), ok=ok(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "store_load.json").write_text(json.dumps(result, indent=2))
    rows = result["rows_by_kind"]
    lines = [
        "# Store under load: 1 CLI run writing + %d app sessions verifying, one SQLite store" % args.sessions,
        "",
        "| figure | value |", "|---|---|",
        f"| design points written by the run (budget {args.budget} + references) | {rows.get('design', 0) + rows.get('reference', 0)} rows |",
        f"| points verified by the sessions meanwhile | {result['verified_points']} ({rows.get('verify', 0)} rows) |",
        f"| wall time (run / all) | {result['run_s']:.1f} s / {result['wall_s']:.1f} s |",
        f"| verify latency p50 / p95 / max | {result['verify_ms']['p50']:.0f} / {result['verify_ms']['p95']:.0f} / {result['verify_ms']['max']:.0f} ms |",
        f"| store read (page snapshot) p50 / p95 / max | {result['read_ms']['p50']:.0f} / {result['read_ms']['p95']:.0f} / {result['read_ms']['max']:.0f} ms |",
        f"| values lost / changed | {result['lost']} / {result['mismatched']} |",
        f"| design points missing after the run | {result['missing_design_points']} |",
        f"| `database is locked` seen by a user | {result['locked_messages']} |",
        f"| integrity check | {result['integrity']} |",
        f"| exit codes (run, sessions) | {result['writer_exit']}, {result['session_exits']} |",
        "", f"Machine: {result['machine']}.",
    ]
    (RESULTS / "store_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
