"""Front on the surrogates: our refined candidate set vs pymoo's NSGA-II, against brute force.

    python benchmarks/bench_front.py            # writes benchmarks/results/front.{md,json}

For each T the same fitted surrogates (quadratics fitted to an analytic landscape's MAP design) go
to both methods in the same process. Measured: wall time, hypervolume relative to the brute-force
front (T = 2: a 1001 × 1001 grid swept exactly; T ≥ 3: the union of both fronts and 300k random
box points, non-dominated), and the largest amount by which some point of a 300k random sample of
the box beats a front point in every task (0 = no front point is dominated).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.design import sample_design  # noqa: E402
from explorer.landscapes import make_landscape  # noqa: E402
from explorer.pareto import compute_front, hypervolume, non_dominated, surrogate_objectives  # noqa: E402
from explorer.surrogate import QuadraticSurrogate  # noqa: E402


def fitted_surrogates(t: int, seed: int = 0):
    land = make_landscape(t, "smooth", seed)
    design = sample_design((0.0, 1.0), t, seed=seed)
    values = land.values(design)
    return [QuadraticSurrogate().fit(design, values[:, i]) for i in range(t)]


def nsga2_front(objectives, t: int, pop: int = 200, gens: int = 200, seed: int = 0) -> np.ndarray:
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    class SurrogateProblem(Problem):
        def __init__(self):
            super().__init__(n_var=t, n_obj=t, xl=np.zeros(t), xu=np.ones(t))

        def _evaluate(self, X, out, *args, **kwargs):
            out["F"] = objectives(X)

    res = minimize(SurrogateProblem(), NSGA2(pop_size=pop), ("n_gen", gens), seed=seed, verbose=False)
    return np.atleast_2d(res.F)


def exact_front_2d(objectives, levels: int = 1001) -> np.ndarray:
    g = np.linspace(0, 1, levels)
    X = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)
    F = objectives(X)
    order = np.lexsort((F[:, 1], F[:, 0]))
    F = F[order]
    keep = F[:, 1] < np.minimum.accumulate(np.concatenate([[np.inf], F[:-1, 1]]))
    return F[keep]


def beating_margin(front_F: np.ndarray, sample_F: np.ndarray, limit: int = 300) -> float:
    idx = np.linspace(0, len(front_F) - 1, min(limit, len(front_F))).astype(int)
    return float(max(np.max(np.min(f - sample_F, axis=1)) for f in front_F[idx]))


def main() -> None:
    rows = []
    rng = np.random.default_rng(1)
    for t in range(2, 9):
        surrogates = fitted_surrogates(t)
        objectives, _ = surrogate_objectives(surrogates, np.ones(t))
        box = np.tile([0.0, 1.0], (t, 1))
        start = time.perf_counter()
        ours = compute_front(surrogates, box, seed=0).F
        ours_s = time.perf_counter() - start
        row = {"T": t, "ours_s": ours_s, "ours_points": len(ours)}
        if t <= 4:
            start = time.perf_counter()
            theirs = nsga2_front(objectives, t)
            row.update(nsga2_s=time.perf_counter() - start, nsga2_points=len(theirs))
            sample = objectives(rng.uniform(0, 1, (300_000, t)))
            if t == 2:
                truth = exact_front_2d(objectives)
            else:
                pool = np.vstack([ours, theirs, sample])
                truth = pool[non_dominated(pool)] if len(pool) < 40_000 else np.vstack([ours, theirs])
            ref = truth.max(axis=0) + 0.01
            hv_true = hypervolume(truth, ref)
            row.update(ours_hv_ratio=hypervolume(ours, ref) / hv_true, nsga2_hv_ratio=hypervolume(theirs, ref) / hv_true,
                       ours_margin=beating_margin(ours, sample), nsga2_margin=beating_margin(theirs, sample),
                       truth="exact 1001² grid" if t == 2 else "both fronts, non-dominated")
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "front.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Front on the surrogates: refined candidates vs NSGA-II (pop 200, 200 generations)", "",
             "| T | ours: time (s) | points | HV ratio | margin | NSGA-II: time (s) | points | HV ratio | margin |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r['T']}", f"{r['ours_s']:.2f}", f"{r['ours_points']}"]
        cells += [f"{r['ours_hv_ratio']:.4f}", f"{r['ours_margin']:.4f}"] if "ours_hv_ratio" in r else ["—", "—"]
        cells += ([f"{r['nsga2_s']:.2f}", f"{r['nsga2_points']}", f"{r['nsga2_hv_ratio']:.4f}", f"{r['nsga2_margin']:.4f}"]
                  if "nsga2_s" in r else ["—"] * 4)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "HV ratio: hypervolume over the brute-force front's (T = 2: exact grid sweep; T = 3, 4: the union of "
              "both fronts, so a ratio of 1 means 'nothing better was found by either'). Margin: how much some "
              "random box point beats a front point in every task (≤ 0 would mean never)."]
    (out / "front.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
