"""Which method for how many tasks: pick quality against real evaluations, T = 2..20 (analytic, exact truth).

    python -m benchmarks.run --scaling-only [--quick]     # writes benchmarks/results/scaling.{md,json}

On the analytic "smooth" landscape of each T, for the benchmark's 10 preferences: ours with
either design (`explore_adaptive` and `explore`, surrogate family chosen per task, 2P evaluations;
T ≤ 8, the fit gets slow beyond), plain MAP (full quadratic, 2P design), the diagonal-plus-low-rank quadratic (explorer.core.lowrank) and Nested MAP
(explorer.core.nested, which spends evaluations per preference). Evaluations count every distinct
point, the picks included. Quality: the exact real margin of each pick (problems.exact_margin).
`explorer.core.lowrank.choose_method` follows this table.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks import problems as P
from benchmarks.preferences import preferences
from explorer.core.adaptive import explore_adaptive
from explorer.core.decision import decide
from explorer.core.design import sample_design
from explorer.core.explore import default_design, explore
from explorer.core.lowrank import LowRankQuadraticSurrogate, choose_method, lowrank_design, n_lowrank_terms
from explorer.core.nested import nested_picks
from explorer.core.pareto import compute_front
from explorer.core.surrogate import QuadraticSurrogate

OURS_MAX_T = 8


def _surrogate_picks(surrogates, t: int, prefs, seed: int = 0) -> np.ndarray:
    front = compute_front(surrogates, np.tile([0.0, 1.0], (t, 1)), np.ones(t), n_candidates=1024, max_points=300, seed=seed)
    tasks = [f"t{i}" for i in range(t)]
    return np.array([decide(front.X, -front.F, np.ones(t), tasks, weights=w).coefficients for w in prefs])


def run(quick: bool, log=print) -> list[dict]:
    sizes = [2, 4, 8, 12] if quick else [2, 4, 6, 8, 12, 16, 20]
    rows = []
    for t in sizes:
        problem = P.analytic(t, "smooth", 0)
        prefs = preferences(t)
        log(f"  scaling: T={t} (choose_method: {choose_method(t)})")

        def record(method, counter, picks, seconds):
            V = counter.many(picks)
            margins = problem.margin(picks, V)
            rows.append({"n_tasks": t, "method": method, "evaluations": counter.n, "mean_margin": float(margins.mean()),
                         "max_margin": float(margins.max()), "mean_accuracy": float(V.mean()), "seconds": seconds,
                         "rule": choose_method(t)})

        if t <= OURS_MAX_T:
            for design in ("adaptive", "space_filling"):
                counter, start = P.Counter(problem), time.perf_counter()
                if design == "adaptive":
                    r = explore_adaptive(counter.one, problem.tasks, tol=0.0)
                else:
                    r = explore(counter.one, problem.tasks, design="space_filling")  # "auto" is adaptive from T = 4
                label = f"ours, {design.replace('_', '-')} design" + (" (default)" if default_design(t) == design else "")
                record(label, counter, np.array([r.decide(w).coefficients for w in prefs]), time.perf_counter() - start)
        if t <= (12 if quick else 16):
            counter, start = P.Counter(problem), time.perf_counter()
            C = sample_design((0.0, 1.0), t, None, 0)
            Y = counter.many(C)
            sur = [QuadraticSurrogate().fit(C, Y[:, i]) for i in range(t)]
            record("plain MAP (full quadratic)", counter, _surrogate_picks(sur, t, prefs), time.perf_counter() - start)
        counter, start = P.Counter(problem), time.perf_counter()
        C = lowrank_design((0.0, 1.0), t, 2 * n_lowrank_terms(t), 0)
        Y = counter.many(C)
        sur = [LowRankQuadraticSurrogate(cv_folds=2).fit(C, Y[:, i]) for i in range(t)]
        record("low-rank quadratic (r=2)", counter, _surrogate_picks(sur, t, prefs), time.perf_counter() - start)
        counter, start = P.Counter(problem), time.perf_counter()
        results, _ = nested_picks(counter.one, problem.tasks, prefs)
        record("nested", counter, np.array([r.coefficients for r in results]), time.perf_counter() - start)
    return rows


def markdown(rows: list[dict], seconds: float) -> str:
    import torch

    lines = ["# Which method for how many tasks", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}. Wall time {seconds:.0f} s. "
             "Produced by `python -m benchmarks.run --scaling-only`.", "",
             "Analytic 'smooth' landscape per T, the benchmark's 10 preferences. Margin: the exact most every task could "
             "gain at once over the pick (accuracy points; 0 = Pareto-optimal). Evaluations: every distinct point, the "
             "picks included (Nested MAP spends them per preference).", "",
             "| T | choose_method | method | evaluations | mean margin | max margin | mean accuracy | seconds |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for s in rows:
        lines.append(f"| {s['n_tasks']} | {s['rule']} | {s['method']} | {s['evaluations']} | {100 * s['mean_margin']:.2f} | "
                     f"{100 * s['max_margin']:.2f} | {100 * s['mean_accuracy']:.1f} | {s['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(out: Path, quick: bool = False) -> int:
    started = time.perf_counter()
    rows = run(quick, log=lambda m: print(m, flush=True))
    (out / "scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
    text = markdown(rows, time.perf_counter() - started)
    (out / "scaling.md").write_text(text)
    print(text)
    return 0
