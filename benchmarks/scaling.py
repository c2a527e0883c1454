"""Which method for how many tasks: pick quality against real evaluations, T = 2..20 (analytic, exact truth).

    python -m benchmarks.run --scaling-only [--quick]     # writes benchmarks/results/scaling.{md,json}
    python -m benchmarks.scaling --ladder-only [--sizes 10 12] [--cells DIR]
        # reruns the T > 8 ladder, keeps the T ≤ 8 rows of scaling.json; with --cells each finished
        # (T, B) is kept in DIR, so a rerun resumes and two workers on different sizes share the work

On the analytic "smooth" landscape of each T, for the benchmark's 10 preferences. Evaluations
count every distinct point, the picks included. Quality: the exact real margin of each pick
(problems.exact_margin).

- T ≤ 8, each method at its own natural budget: ours with either design (`explore_adaptive` and
  `explore`, surrogate family chosen per task, 2P evaluations), plain MAP (full quadratic, 2P
  design), the diagonal-plus-low-rank quadratic (explorer.core.lowrank, 2·(1 + 4T)) and Nested
  MAP (explorer.core.nested, default 2-D designs; it spends evaluations per preference).
- T = 10, 12, 16, 20, at equal evaluations: every method gets the same budget B from a ladder
  (`LADDER`) and spends at most B. Full quadratic and low-rank: a design of B − 10 points, then
  their 10 picks measured (ours' adaptive fit is not run above T = 8: it gets slow, so "full"
  is plain MAP's full quadratic here); Nested MAP: `nested_picks(budget=B)`, the largest 2-D
  designs that fit. A method that cannot run within B (too few points for its surrogate, or
  nested's smallest designs for 10 preferences) gets no row.
`explorer.core.lowrank.choose_method` follows the equal-evaluation table.
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
from explorer.core.design import n_quadratic_terms, sample_design
from explorer.core.explore import default_design, explore
from explorer.core.lowrank import (
    LowRankQuadraticSurrogate,
    choose_method,
    lowrank_design,
    n_lowrank_terms,
)
from explorer.core.nested import nested_evaluations, nested_picks, pair_budget_for
from explorer.core.pareto import compute_front
from explorer.core.surrogate import QuadraticSurrogate

OURS_MAX_T = 8
#: Task counts and common budgets of the equal-evaluation comparison (quick: one row of it).
LADDER_SIZES, LADDER = [10, 12, 16, 20], [100, 300, 600]
QUICK_LADDER_SIZES, QUICK_LADDER = [12], [100, 300]


def _surrogate_picks(surrogates, t: int, prefs, seed: int = 0) -> np.ndarray:
    front = compute_front(surrogates, np.tile([0.0, 1.0], (t, 1)), np.ones(t), n_candidates=1024, max_points=300, seed=seed)
    tasks = [f"t{i}" for i in range(t)]
    return np.array([decide(front.X, -front.F, np.ones(t), tasks, weights=w).coefficients for w in prefs])


def _recorder(rows: list, problem, t: int, budget: int | None):
    def record(method, counter, picks, seconds, **extra):
        V = counter.many(picks)
        margins = problem.margin(picks, V)
        rows.append({"n_tasks": t, "budget": budget, "method": method, "evaluations": counter.n,
                     "mean_margin": float(margins.mean()), "max_margin": float(margins.max()),
                     "mean_accuracy": float(V.mean()), "seconds": seconds,
                     "rule": choose_method(t) if budget is None else choose_method(t, budget)} | extra)
    return record


def run_natural(t: int, rows: list, log=print) -> None:
    """T ≤ 8: each method at its own default budget."""
    problem = P.analytic(t, "smooth", 0)
    prefs = preferences(t)
    log(f"  scaling: T={t} (choose_method: {choose_method(t)})")
    record = _recorder(rows, problem, t, None)
    for design in ("adaptive", "space_filling"):
        counter, start = P.Counter(problem), time.perf_counter()
        if design == "adaptive":
            r = explore_adaptive(counter.one, problem.tasks, tol=0.0)
        else:
            r = explore(counter.one, problem.tasks, design="space_filling")  # "auto" is adaptive from T = 4
        label = f"ours, {design.replace('_', '-')} design" + (" (default)" if default_design(t) == design else "")
        record(label, counter, np.array([r.decide(w).coefficients for w in prefs]), time.perf_counter() - start)
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


def run_equal(t: int, budget: int, rows: list, log=print) -> None:
    """Every method that can run within `budget` distinct evaluations, the 10 picks included."""
    problem = P.analytic(t, "smooth", 0)
    prefs = preferences(t)
    k = len(prefs)
    log(f"  scaling: T={t} B={budget} (choose_method: {choose_method(t, budget)})")
    record = _recorder(rows, problem, t, budget)
    design = budget - k
    if design >= n_quadratic_terms(t) + 1:
        counter, start = P.Counter(problem), time.perf_counter()
        C = sample_design((0.0, 1.0), t, design, 0)
        Y = counter.many(C)
        sur = [QuadraticSurrogate().fit(C, Y[:, i]) for i in range(t)]
        record("full quadratic (plain MAP)", counter, _surrogate_picks(sur, t, prefs), time.perf_counter() - start,
               design=design)
    if design >= n_lowrank_terms(t) + 1:
        counter, start = P.Counter(problem), time.perf_counter()
        C = lowrank_design((0.0, 1.0), t, design, 0)
        Y = counter.many(C)
        sur = [LowRankQuadraticSurrogate(cv_folds=2).fit(C, Y[:, i]) for i in range(t)]
        record("low-rank quadratic (r=2)", counter, _surrogate_picks(sur, t, prefs), time.perf_counter() - start,
               design=design)
    if budget >= nested_evaluations(t, k, 6):
        counter, start = P.Counter(problem), time.perf_counter()
        results, _ = nested_picks(counter.one, problem.tasks, prefs, budget=budget)
        record("nested", counter, np.array([r.coefficients for r in results]), time.perf_counter() - start,
               pair_budget=pair_budget_for(t, k, budget))
    assert all(r["evaluations"] <= budget for r in rows if r.get("budget") == budget and r["n_tasks"] == t)


def run(quick: bool, log=print) -> list[dict]:
    rows: list[dict] = []
    for t in ([2, 4, 8] if quick else [2, 4, 6, 8]):
        run_natural(t, rows, log)
    return rows


def markdown(rows: list[dict], seconds: float) -> str:
    import torch

    lines = ["# Which method for how many tasks", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}. Wall time {seconds:.0f} s. "
             "Produced by `python -m benchmarks.run --scaling-only`; the equal-evaluation rows alone by "
             "`python -m benchmarks.scaling --ladder-only` (which keeps the T ≤ 8 rows of scaling.json; "
             "`--cells DIR --sizes ...` splits the ladder over workers).", "",
             "Analytic 'smooth' landscape per T, the benchmark's 10 preferences. Margin: the exact most every task could "
             "gain at once over the pick (accuracy points; 0 = Pareto-optimal). Evaluations: every distinct point, the "
             "picks included (Nested MAP spends them per preference).", "",
             "| T | choose_method | method | evaluations | mean margin | max margin | mean accuracy | seconds |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for s in rows:
        if s.get("budget") is None:
            lines.append(f"| {s['n_tasks']} | {choose_method(s['n_tasks'])} | {s['method']} | {s['evaluations']} | {100 * s['mean_margin']:.2f} | "
                         f"{100 * s['max_margin']:.2f} | {100 * s['mean_accuracy']:.1f} | {s['seconds']:.0f} |")
    lines += ["", "## At equal evaluations, T > 8", "",
              ("Every method gets the same budget B and spends at most B (evaluations column: what it spent). Full "
               "quadratic and low-rank: a design of B − 10 points plus the 10 picks; nested: the largest 2-D designs "
               "(`pair_budget`) within B. No row: the method cannot run within B."), "",
              "| T | budget | choose_method | method | evaluations | mean margin | max margin | mean accuracy | seconds |",
              "|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for s in rows:
        if s.get("budget") is not None:
            name = s["method"] + (f" (pair_budget {s['pair_budget']})" if "pair_budget" in s else "")
            lines.append(f"| {s['n_tasks']} | {s['budget']} | {choose_method(s['n_tasks'], s['budget'])} | {name} | {s['evaluations']} | "
                         f"{100 * s['mean_margin']:.2f} | {100 * s['max_margin']:.2f} | {100 * s['mean_accuracy']:.1f} | "
                         f"{s['seconds']:.0f} |")
    cells = sorted({(s["n_tasks"], s["budget"]) for s in rows if s.get("budget") is not None})
    if cells:
        lines += ["", "Mean margin (points) per budget; the best in bold, — where a method cannot run:", "",
                  ("| T | budget | full quadratic | low-rank | nested | choose_method |"), "|---:|---:|---:|---:|---:|---|"]
        for t, b in cells:
            got = {s["method"].split(" ")[0]: s for s in rows if s["n_tasks"] == t and s.get("budget") == b}
            best = min(s["mean_margin"] for s in got.values())
            cell = [(f"**{100 * got[m]['mean_margin']:.2f}**" if got[m]["mean_margin"] == best else
                     f"{100 * got[m]['mean_margin']:.2f}") if m in got else "—" for m in ("full", "low-rank", "nested")]
            lines.append(f"| {t} | {b} | {' | '.join(cell)} | {choose_method(t, b)} |")
    return "\n".join(lines) + "\n"


def ladder(out: Path, sizes, budgets, cells: Path | None, log=print) -> list[dict]:
    """The equal-evaluation rows; with `cells`, each (T, B) is saved there as it finishes and reused on a rerun."""
    rows: list[dict] = []
    for t in sizes:
        for budget in budgets:
            path = None if cells is None else cells / f"T{t}-B{budget}.json"
            if path is not None and path.is_file():
                rows += json.loads(path.read_text())
                continue
            cell: list[dict] = []
            run_equal(t, budget, cell, log)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(cell, indent=1) + "\n")
            rows += cell
    if cells is not None:  # cells another process finished (a second worker on other sizes)
        done = {(r["n_tasks"], r["budget"]) for r in rows}
        for path in sorted(cells.glob("T*-B*.json")):
            extra = json.loads(path.read_text())
            if extra and (extra[0]["n_tasks"], extra[0]["budget"]) not in done:
                rows += extra
    return sorted(rows, key=lambda r: (r["n_tasks"], r["budget"]))


def main(out: Path, quick: bool = False, ladder_only: bool = False, sizes=None, cells: Path | None = None,
         budgets=None) -> int:
    started = time.perf_counter()

    def log(m: str) -> None:
        print(m, flush=True)

    sizes = sizes or (QUICK_LADDER_SIZES if quick else LADDER_SIZES)
    budgets = budgets or (QUICK_LADDER if quick else LADDER)
    if ladder_only:
        rows = [r for r in json.loads((out / "scaling.json").read_text()) if r.get("budget") is None and r["n_tasks"] <= OURS_MAX_T]
    else:
        rows = [r for r in run(quick, log=log) if r.get("budget") is None]
    rows += ladder(out, sizes, budgets, cells, log)
    (out / "scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
    text = markdown(rows, time.perf_counter() - started)
    (out / "scaling.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T = 2, 4, 8 and the T = 12 ladder at 100 and 300")
    ap.add_argument("--ladder-only", action="store_true", help="rerun only the T > 8 ladder; keep the T ≤ 8 rows")
    ap.add_argument("--sizes", type=int, nargs="+", help="task counts of the ladder (default 10 12 16 20)")
    ap.add_argument("--budgets", type=int, nargs="+", help="budgets of the ladder (default 100 300 600)")
    ap.add_argument("--cells", type=Path, help="folder for finished (T, B) cells: a rerun resumes, workers share it")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    raise SystemExit(main(args.out, args.quick, args.ladder_only, args.sizes, args.cells, args.budgets))
