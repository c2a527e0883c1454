"""What limits the shown front's fidelity: the family the rule chose, too few points, or the landscape?

A merge's accuracy on a few hundred examples is a step function of its coefficients: each example
flips between right and wrong somewhere, so two nearly equal merges can differ by a few examples, and
no smooth surrogate predicts those steps. On the points the benchmark's fidelity audit uses
(FIDELITY_POINTS of the shown front of full-set MAP, as `benchmarks.subsample.judge_front` picks
them), per task, median |predicted − measured| of:

1. the shipped fit (the run's own surrogates, ~90 points, the family per task by the rule in
   `explorer.core.model_selection`);
2. each family on every task, fitted to the same points (is the rule's choice what costs?);
3. a dense fit: the shipped family fitted to the run's points plus `--dense` more measured around the
   shown front (five times the points, where the audit is): what is left is not too few points;
4. nearby merges: each audit point measured again a small step away (`--step`, in coefficient units);
   median |difference| / √2 is the part of one measurement that merges that close do not share.

    python -m benchmarks.fidelity_limits [--kinds fashion-relabel deep ...] [--split validation] [--dense 400] [--build 0]

Writes benchmarks/results/fidelity_limits[_<split>].{md,json}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.publish import publish  # noqa: E402
from benchmarks.subsample import FIDELITY_POINTS, TestbedRun  # noqa: E402
from explorer.core.model_selection import make_surrogate  # noqa: E402
from explorer.core.pareto import thin  # noqa: E402
from explorer.demo.testbeds import UNTUNED_KINDS, make_testbed  # noqa: E402
from explorer.experiment.loop import run_adaptive  # noqa: E402


def audit_rows(result) -> tuple[np.ndarray, np.ndarray]:
    """(the shown front's rows, the FIDELITY_POINTS of them the audit measures), as
    `benchmarks.subsample.judge_front` picks them."""
    rows = np.flatnonzero(result.front_trusted) if np.any(result.front_trusted) else np.arange(len(result.front_predicted))
    return rows, rows[thin(result.front_predicted[rows], min(FIDELITY_POINTS, len(rows)), 0)]


def dense_points(result, rows: np.ndarray, dense: int, rng) -> np.ndarray:
    """The run's points plus `dense` more scattered around its front's `rows` (std 0.05 box widths)."""
    lo, hi = result.bounds[:, 0], result.bounds[:, 1]
    around = result.front_coefficients[rng.choice(rows, dense)] + rng.normal(0, 0.05, (dense, len(lo))) * (hi - lo)
    return np.vstack([result.samples, np.clip(around, lo, hi)])


def dense_fit_error(result, C_dense, V_dense, C_audit, V_audit, noise=None) -> np.ndarray:
    """Per task, median |predicted − measured| (pts) at the audit points of the run's family per task
    fitted to the dense points' values (`noise`: their known variances, (n, T))."""
    errs = []
    for i, t in enumerate(result.tasks):
        family = getattr(result.surrogates[t], "family_", "kriging")
        s = make_surrogate(family, bool(result.senses[i] > 0), result.bounds, "auto").fit(
            C_dense, V_dense[:, i], noise_variance=None if noise is None else noise[:, i])
        errs.append(float(np.median(np.abs(s.predict(C_audit) - V_audit[:, i])) * 100))
    return np.array(errs)


def one_testbed(kind: str, split: str, dense: int, step: float, seed: int = 0, build: int = 0) -> dict:
    tb = make_testbed(kind, 8, seed=build)
    result = run_adaptive(TestbedRun(tb, "full", None, split=split), None, progress=False)

    def measure(C):
        return tb.values(np.atleast_2d(C), split=split)

    rows, audit = audit_rows(result)
    C_audit = result.front_coefficients[audit]
    V_audit = measure(C_audit)
    shipped = np.median(np.abs(result.front_predicted[audit] - V_audit), axis=0) * 100

    rng = np.random.default_rng(seed)
    lo, hi = result.bounds[:, 0], result.bounds[:, 1]
    width = hi - lo
    C_dense = dense_points(result, rows, dense, rng)
    V_dense = np.vstack([result.observed, measure(C_dense[len(result.samples):])])
    families = {}
    for family in ("quadratic", "kriging"):
        families[family] = [np.median(np.abs(make_surrogate(family, bool(result.senses[i] > 0), result.bounds, "auto")
                                             .fit(result.samples, result.observed[:, i]).predict(C_audit) - V_audit[:, i])) * 100
                            for i in range(len(result.tasks))]
    dense_err = dense_fit_error(result, C_dense, V_dense, C_audit, V_audit)

    u = rng.normal(size=C_audit.shape)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    near = np.clip(C_audit + step * u * width, lo, hi)
    nearby = np.median(np.abs(measure(near) - V_audit), axis=0) / np.sqrt(2) * 100
    return {"testbed": kind + ("" if build == 0 else f" s{build}") + ("" if split == "validation" else f", {split}")
            + (" (untuned)" if kind in UNTUNED_KINDS or build else ""), "digest": tb.weights_digest,
            "tasks": list(result.tasks), "points": int(len(result.samples)), "dense_points": int(len(C_dense)),
            "chosen": [getattr(result.surrogates[t], "family_", "?") for t in result.tasks],
            "shipped": shipped.tolist(), "quadratic": families["quadratic"], "kriging": families["kriging"],
            "dense": [float(x) for x in dense_err], "nearby": nearby.tolist(), "step": step}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["deep", "hidden", *UNTUNED_KINDS])
    ap.add_argument("--split", default="validation")
    ap.add_argument("--dense", type=int, default=400)
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--build", type=int, default=0, help="the testbeds' build seed (landscape_seeds.py's --seeds)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.out = args.out or ("fidelity_limits" + ("" if args.split == "validation" else f"_{args.split}"))
    out = []
    for kind in args.kinds:
        out.append(one_testbed(kind, args.split, args.dense, args.step, build=args.build))
        print(out[-1], flush=True)
    lines = [f"Per task, median |predicted − measured| (pts) at the {FIDELITY_POINTS} audited shown-front points: the "
             "shipped fit (family per task by the rule: q = quadratic, k = kriging); each family on every task, same "
             "points; the shipped family fitted to five times the points around the front; half the spread between "
             f"each audit point and one {args.step:g} away (what nearby merges do not share).", "",
             "| testbed | fit | median over tasks | worst task | per task |", "|---|---|---:|---:|---|"]
    for r in out:
        chosen = "".join(f[0] for f in r["chosen"])
        for label, key in [(f"shipped ({r['points']} points; {chosen})", "shipped"),
                           ("quadratic on every task", "quadratic"), ("kriging on every task", "kriging"),
                           (f"dense ({r['dense_points']} points)", "dense"),
                           (f"nearby merges (step {r['step']:g})", "nearby")]:
            v = np.array(r[key])
            lines.append(f"| {r['testbed']} | {label} | {np.median(v):.2f} | {v.max():.2f} | "
                         + " ".join(f"{x:.2f}" for x in v) + " |")
    publish(args.out, out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
