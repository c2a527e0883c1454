"""Front on the surrogates: our refined candidate set vs pymoo's NSGA-II, against the exact front.

    python benchmarks/bench_front.py            # writes benchmarks/results/front.{md,json}

The surrogates are MAP quadratics (logit link) whose front is known in closed form, so the truth
owes nothing to either method: task i's surrogate is σ(Lᵢ − dᵢ(c)/wᵢ) with dᵢ(c) = (c − pᵢ)ᵀMᵢ(c − pᵢ),
the distances of the analytic landscape of the same T (`explorer.demo.landscapes`). σ is increasing,
so the Pareto set is the landscape's, {c*(w) = (Σ wₖMₖ)⁻¹ Σ wₖMₖpₖ : w in the simplex}, inside the
box by construction; the exact front is the surrogates' values there, for 20 000 weight vectors
(T = 2: 20 001 evenly spaced). Each surrogate is fitted on the MAP design and then given exactly
these coefficients (checked to 1e-9 against σ(Lᵢ − dᵢ/wᵢ)).

Measured, both methods on the same surrogates in the same process: wall time, hypervolume over the
exact front's (T ≤ 4; a ratio a hair above 1 is the exact front's sampling), and the margin: the
most some exact front point beats a front point by in every task (0 = on the front; it can be a
hair below 0 between sampled exact points), and the share of front points beaten by more than
0.1 accuracy point in every task.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.core.design import sample_design  # noqa: E402
from explorer.core.pareto import compute_front, hypervolume, non_dominated, surrogate_objectives  # noqa: E402
from explorer.core.surrogate import QuadraticSurrogate, quadratic_features  # noqa: E402
from explorer.demo.landscapes import make_landscape, simplex_weights  # noqa: E402

TRUTH_WEIGHTS = 20_000
HV_MAX_T = 4
BEATEN = 0.001  # a front point beaten by more than 0.1 accuracy point in every task counts as off the front


def exact_coefficients(M: np.ndarray, p: np.ndarray, level: float, width: float) -> np.ndarray:
    """Coefficients, in `quadratic_features` order, of z(c) = level − (c − p)ᵀM(c − p) / width."""
    t = len(p)
    iu, ju = np.triu_indices(t, k=1)
    return np.concatenate([[level - p @ M @ p / width], 2 * M @ p / width, -np.diag(M) / width, -2 * M[iu, ju] / width])


def known_surrogates(t: int, seed: int = 0):
    """(surrogates, landscape): MAP quadratics with the exact front of the landscape's distances."""
    land = make_landscape(t, "smooth", seed)
    levels = np.log(land.peaks / (1 - land.peaks))
    design = sample_design((0.0, 1.0), t, seed=seed)

    def truth(C, i):
        return 1 / (1 + np.exp(-(levels[i] - land.distances(C)[:, i] / land.widths[i])))

    surrogates = []
    for i in range(t):
        s = QuadraticSurrogate(link="logit").fit(design, truth(design, i))
        s.coef_ = exact_coefficients(land.metrics[i], land.centers[i], levels[i], land.widths[i])
        s._set_quadratic_form()
        check = np.random.default_rng(i).random((256, t))
        assert np.max(np.abs(s.predict(check) - truth(check, i))) < 1e-9, "surrogate does not match its exact form"
        assert np.max(np.abs(quadratic_features(check) @ s.coef_ - s.decision_function(check))) < 1e-12
        surrogates.append(s)
    return surrogates, land


def exact_front(objectives, land, n: int = TRUTH_WEIGHTS) -> np.ndarray:
    W = simplex_weights(land.n_tasks, n + 1 if land.n_tasks == 2 else n, seed=1)
    F = objectives(land.pareto_set(W))
    return F[non_dominated(F)]


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


def margins_to_truth(front_F: np.ndarray, truth_F: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Per front point, the most some exact point beats it by in every objective (minimised)."""
    out = [np.min(front_F[s:s + chunk, None, :] - truth_F[None, :, :], axis=2).max(axis=1)
           for s in range(0, len(front_F), chunk)]
    return np.concatenate(out)


def margin_to_truth(front_F: np.ndarray, truth_F: np.ndarray) -> float:
    """Largest, over front points, of the most some exact point beats it by in every objective."""
    return float(margins_to_truth(front_F, truth_F).max())


def main() -> None:
    rows = []
    for t in range(2, 9):
        surrogates, land = known_surrogates(t)
        objectives, _ = surrogate_objectives(surrogates, np.ones(t))
        box = np.tile([0.0, 1.0], (t, 1))
        truth = exact_front(objectives, land)
        start = time.perf_counter()
        ours = compute_front(surrogates, box, seed=0).F
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = nsga2_front(objectives, t)
        nsga2_s = time.perf_counter() - start
        row = {"T": t, "truth_points": len(truth), "ours_s": ours_s, "ours_points": len(ours), "nsga2_s": nsga2_s,
               "nsga2_points": len(theirs)}
        for name, F in (("ours", ours), ("nsga2", theirs)):
            m = margins_to_truth(F, truth)
            row.update({f"{name}_margin": float(m.max()), f"{name}_beaten": float(np.mean(m > BEATEN))})
        if t <= HV_MAX_T:
            ref = truth.max(axis=0) + 0.01
            hv_true = hypervolume(truth, ref)
            row.update(ours_hv_ratio=hypervolume(ours, ref) / hv_true, nsga2_hv_ratio=hypervolume(theirs, ref) / hv_true)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "front.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Front on the surrogates: refined candidates vs NSGA-II (pop 200, 200 generations), exact truth", "",
             "Produced by `python benchmarks/bench_front.py`. Surrogates with a closed-form front (see the script's "
             "docstring); the truth is that front, sampled at 20 000 weight vectors, independent of both methods.", "",
             "| T | ours: time (s) | points | HV ratio | margin (points) | off the front | NSGA-II: time (s) | points | HV ratio | "
             "margin (points) | off the front |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        hv = lambda k: f"{r[k]:.4f}" if k in r else "—"  # noqa: E731
        lines.append(f"| {r['T']} | {r['ours_s']:.2f} | {r['ours_points']} | {hv('ours_hv_ratio')} | {100 * r['ours_margin']:.3f} | "
                     f"{100 * r['ours_beaten']:.1f} % | {r['nsga2_s']:.2f} | {r['nsga2_points']} | {hv('nsga2_hv_ratio')} | "
                     f"{100 * r['nsga2_margin']:.3f} | {100 * r['nsga2_beaten']:.1f} % |")
    lines += ["", "HV ratio: hypervolume over the exact front's (T ≤ 4). Margin: over the front's points, the most some "
              "exact front point beats one by in every task, in accuracy points (0 = on the front). Off the front: the "
              "share of front points beaten by more than 0.1 point in every task."]
    (out / "front.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
