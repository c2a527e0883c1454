"""How few examples per point can reach the 2-point bar at all: the floor a subsample sets.

A point measured on the first n of a task's N examples differs from its full-set accuracy by that
prefix's error. Part of it is shared by every merge (an easy prefix lifts them all), part is not
(examples that flip between merges). No number of points removes the second part, because every point
sees the same n examples: a surrogate fitted to them learns the prefix's landscape, not the set's.
This benchmark gives each surrogate the best case and measures what is left, per task, along the
shown front of full-set MAP (the same FIDELITY_POINTS audit points `benchmarks.subsample` judges):

- **prefix alone:** each audit point's own prefix mean, shifted by the oracle's per-task offset (the
  mean full − prefix gap over all points: the part every merge shares, removed exactly), against its
  full-set value. No surrogate, no other point: what the prefix itself tells about the set;
- **dense fit:** the shipped surrogate fitted to the run's points plus `--dense` more around the front
  (five times the points), every one measured on the prefix and shifted by that offset, each told its
  unshared variance (the gaps' spread, as `explorer.core.sampling.corrected_means` estimates it). The
  same fit on full-set values is the `full` row: what is left there is the landscape, not the prefix.

Both are floors for the engine, which estimates the offset from a few longer points instead of knowing
it and has 90 points, not 489. What it costs: at 8 tasks with the default 90 points, 10 picks measured
on the full sets, one fifth of full-set MAP's examples leaves n = N/9 per design point.

    python -m benchmarks.subsample_floor [--kinds hidden deep ...] [--split large] [--builds 0 1]

Writes benchmarks/results/subsample_floor[_<split>].{md,json}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fidelity_limits import audit_rows, dense_fit_error, dense_points  # noqa: E402
from benchmarks.publish import publish  # noqa: E402
from benchmarks.subsample import FIDELITY_POINTS, TestbedRun  # noqa: E402
from explorer.core.sampling import example_order  # noqa: E402
from explorer.demo.testbeds import UNTUNED_KINDS, make_testbed  # noqa: E402
from explorer.experiment.loop import run_adaptive  # noqa: E402

#: per-point shares of a task's examples to measure at (N/9: one fifth of full-set MAP's examples at 8 tasks)
SHARES = (1 / 9, 1 / 5, 2 / 5, 4 / 5)


def prefix_means(scores: np.ndarray, orders: list[np.ndarray], n: int) -> np.ndarray:
    """(points, T) means over each task's first n examples of its order; scores (points, T, N) bool."""
    return np.column_stack([scores[:, i, order[:n]].mean(axis=1) for i, order in enumerate(orders)])


def one_testbed(kind: str, split: str, dense: int, build: int, shares, log) -> dict:
    tb = make_testbed(kind, 8, seed=build)
    result = run_adaptive(TestbedRun(tb, "full", None, split=split), None, progress=False)
    rows, audit = audit_rows(result)
    C_audit = result.front_coefficients[audit]
    C_dense = dense_points(result, rows, dense, np.random.default_rng(build))
    S_audit = tb.values(C_audit, split=split, per_example=True)
    S_dense = tb.values(C_dense, split=split, per_example=True)
    n_total = S_dense.shape[-1]
    orders = [example_order(n_total, f"testbed:{task}") for task in result.tasks]  # the engine's (TestbedRun)
    V_audit, V_dense = S_audit.mean(axis=2), S_dense.mean(axis=2)
    out = {"testbed": f"{kind} s{build}" + ("" if split == "validation" else f", {split}")
           + (" (untuned)" if kind in UNTUNED_KINDS or build else ""), "digest": tb.weights_digest,
           "tasks": list(result.tasks), "n_total": int(n_total), "points": int(len(result.samples)),
           "dense_points": int(len(C_dense)), "rows": []}
    full = dense_fit_error(result, C_dense, V_dense, C_audit, V_audit)
    out["rows"].append({"n": int(n_total), "prefix": [0.0] * len(result.tasks), "dense": full.tolist()})
    log(f"{out['testbed']}: full {np.median(full):.2f} / {full.max():.2f}")
    for share in shares:
        n = max(2, int(round(share * n_total)))
        P_dense, P_audit = prefix_means(S_dense, orders, n), prefix_means(S_audit, orders, n)
        gap = V_dense - P_dense  # what the prefix misses, per point and task
        offset = gap.mean(axis=0)  # the shared part, known exactly (oracle)
        unshared = np.broadcast_to(gap.var(axis=0, ddof=1), gap.shape)
        prefix = np.median(np.abs(P_audit + offset - V_audit), axis=0) * 100
        fitted = dense_fit_error(result, C_dense, P_dense + offset, C_audit, V_audit, unshared)
        out["rows"].append({"n": n, "prefix": prefix.tolist(), "dense": fitted.tolist(),
                            "unshared_std": (np.sqrt(unshared[0]) * 100).tolist(),
                            "shared_std": (np.abs(offset) * 100).tolist()})
        log(f"{out['testbed']}: n={n} prefix {np.median(prefix):.2f} / {prefix.max():.2f}, "
            f"dense {np.median(fitted):.2f} / {fitted.max():.2f}")
    return out


def markdown(problems: list[dict], dense: int) -> list[str]:
    lines = [f"Along the shown front of full-set MAP ({FIDELITY_POINTS} audit points), per task median |predicted − "
             "full-set value| (pts): median over tasks / worst task. Prefix alone: the audit point's own prefix mean "
             f"plus the oracle's shared offset. Dense fit: the shipped family on the run's points plus {dense} around "
             "the front, all on the prefix, offset removed, told their unshared variance. Unshared: std over points "
             "of the full − prefix gap, the part no offset removes (median over tasks). n = N/9 is what one fifth of "
             "full-set MAP's examples leaves each of 90 design points at 8 tasks once the 10 picks are measured on "
             "the full sets.", "",
             "| testbed | examples per point (share) | prefix alone | dense fit | unshared std (pts) |",
             "|---|---|---:|---:|---:|"]
    for p in problems:
        for r in p["rows"]:
            share = r["n"] / p["n_total"]
            pre, den = np.array(r["prefix"]), np.array(r["dense"])
            uns = f"{np.median(r['unshared_std']):.2f}" if "unshared_std" in r else "0"
            pre_s = "—" if share >= 1 else f"{np.median(pre):.2f} / {pre.max():.2f}"
            lines.append(f"| {p['testbed']} | {r['n']:,} of {p['n_total']:,} ({share:.2f}) | {pre_s} | "
                         f"{np.median(den):.2f} / {den.max():.2f} | {uns} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["hidden", "deep", *UNTUNED_KINDS])
    ap.add_argument("--split", default="validation")
    ap.add_argument("--dense", type=int, default=400)
    ap.add_argument("--builds", type=int, nargs="+", default=[0], help="the testbeds' build seeds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    name = args.out or ("subsample_floor" + ("" if args.split == "validation" else f"_{args.split}"))
    problems = []
    for build in args.builds:
        for kind in args.kinds:
            problems.append(one_testbed(kind, args.split, args.dense, build, SHARES, lambda m: print(m, flush=True)))
    publish(name, problems, markdown(problems, args.dense))
    return 0


if __name__ == "__main__":
    sys.exit(main())
