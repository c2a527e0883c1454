"""A demo zoo's shown front, measured for real: the product's default run, then front points re-evaluated.

    python -m benchmarks.zoo_fidelity                      # the 8-task zoo (cache/demo-zoo-8)
    python -m benchmarks.zoo_fidelity --zoo demo-zoo --points 40

What a user gets from `merge-explorer run` (default design: adaptive from 4 tasks on, within 2P
evaluations in all), then `--points` rows of the front the app shows as vouched for (seeded
choice) merged and measured on every task's validation split. Every evaluation goes through the
benchmark store (cache/benchmark-store.sqlite, kind "benchmark" for the audit), so an interrupted
run resumes. Writes benchmarks/results/zoo_fidelity-<zoo>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.problems import BENCH_STORE, ZOOS, zoo_built  # noqa: E402


def measure_front(experiment, result, points: int, seed: int = 0) -> dict:
    """|predicted − measured| and ±2 std coverage over `points` vouched-for front rows."""
    rows = np.flatnonzero(result.front_trusted)
    chosen = np.sort(np.random.default_rng(seed).choice(rows, min(points, len(rows)), replace=False))
    C = result.front_coefficients[chosen]
    measured = np.array([experiment.evaluate(c, "benchmark") for c in C])
    err = np.abs(result.front_predicted[chosen] - measured)
    per_task = np.median(err, axis=0)
    worst = int(np.argmax(per_task))
    return {"points": len(chosen), "shown_rows": int(len(rows)), "front_rows": int(len(result.front_coefficients)),
            "median": float(np.median(err)), "p90": float(np.quantile(err, 0.9)),
            "per_task_median": dict(zip(result.tasks, map(float, per_task))), "worst_task": result.tasks[worst],
            "coverage": float(np.mean(err <= 2 * result.front_std[chosen])),
            "coefficients": C.tolist(), "predicted": result.front_predicted[chosen].tolist(), "measured": measured.tolist()}


def report(name: str, run: dict, fid: dict) -> str:
    pts = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = [f"# Shown front of {name}, measured for real", "",
             f"Produced by `python -m benchmarks.zoo_fidelity --zoo {name}`. Default run: {run['evaluations']} "
             f"evaluations ({run['design']} design, {run['seconds']:.0f} s), then {fid['points']} of the "
             f"{fid['shown_rows']} vouched-for front rows (of {fid['front_rows']}) re-evaluated.", "",
             "| task | median \\|predicted − measured\\| (accuracy points) |", "|---|---:|"]
    lines += [f"| {t} | {pts(v)} |" for t, v in fid["per_task_median"].items()]
    lines += ["", f"Over all tasks: median {pts(fid['median'])}, p90 {pts(fid['p90'])}, worst task "
              f"{fid['worst_task']} {pts(fid['per_task_median'][fid['worst_task']])}; ±2 std coverage "
              f"{100 * fid['coverage']:.0f} %.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="demo-zoo-8", choices=sorted(ZOOS))
    ap.add_argument("--points", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if not zoo_built(args.zoo):
        print(f"error: cache/{args.zoo} is not built; run `merge-explorer demo --tasks "
              f"{8 if args.zoo.endswith('8') else 4}` first", file=sys.stderr)
        return 2
    import torch

    from explorer.core.explore import default_design
    from explorer.experiment.experiment import Experiment
    from explorer.experiment.store import FIT_KINDS

    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: two threads wait on each other (8x slower)

    experiment = Experiment.from_file(ZOOS[args.zoo], store_path=BENCH_STORE)
    start = time.perf_counter()
    result = experiment.run(progress=True)
    seconds = time.perf_counter() - start
    run = {"evaluations": int(len(experiment.measured(FIT_KINDS + ("reference",))[0])),
           "design": default_design(len(experiment.tasks)), "seconds": seconds}
    fid = measure_front(experiment, result, args.points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"zoo_fidelity-{args.zoo}.json").write_text(json.dumps({"zoo": args.zoo, "run": run, "fidelity": fid}, indent=1))
    text = report(args.zoo, run, fid)
    (out / f"zoo_fidelity-{args.zoo}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
