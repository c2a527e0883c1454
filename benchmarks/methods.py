"""Fronts within merge methods, side by side: per method its best equal-weight merge, its picks for
10 preferences (measured), the fidelity of its shown front and the evaluations it spent.

    python -m benchmarks.methods                  # both 8-task testbeds (hidden, deep), all linear methods
    python -m benchmarks.methods --zoo            # also the 8-task demo zoo, from `merge-explorer compare`'s store
    python -m benchmarks.methods --quick          # 4 tasks, fewer front points (a minute)
    python -m benchmarks.methods --llm --keep     # add the LLM demo's rows to the last run's
    python -m benchmarks.methods --untuned --keep # add the two landscapes no constant was tuned on

Every method runs the same engine (`explore`, the default design: adaptive at 8 tasks, 2P = 90
evaluations) on the testbed whose experts are that method's θ₀ + τᵢ′ (`Testbed.merged_by`), so each
measurement is that method's real merge. Counted evaluations: the run's and the 10 picks' (front
points re-measured for fidelity are counted apart, as the README's fidelity tables do). The best
equal-weight merge is measured on a dense λ grid (101 points, the truth, not counted: what a user
of one coefficient could reach at best). Picks are compared across methods by the preference's
achievement function on measured values, on one scale for all methods (lower is better). Iso-C is
not linear in c, so it has no testbed here; the zoo row has it.
Writes benchmarks/results/methods.{json,md}.
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

from explorer import explore  # noqa: E402
from explorer.core.decision import achievement, preference_set  # noqa: E402
from explorer.core.pareto import thin  # noqa: E402
from explorer.demo.testbeds import make_testbed  # noqa: E402
from explorer.merging.methods.registry import get_method, merge_parameters  # noqa: E402

LINEAR = ("task_arithmetic", "ties", "tsv", "cart", "consensus", "lines")
RESULTS = ROOT / "benchmarks" / "results"


def fidelity(result, tb, n: int = 40) -> dict:
    """Median |pred − meas| (points) along the shown front, the worst task's median, ±2 std coverage."""
    rows = np.flatnonzero(result.front_trusted) if np.any(result.front_trusted) else np.arange(len(result.front_predicted))
    pick = rows[thin(result.front_predicted[rows], min(n, len(rows)), 0)]
    measured = tb.values(result.front_coefficients[pick])
    err = np.abs(result.front_predicted[pick] - measured) * 100
    inside = np.abs(result.front_predicted[pick] - measured) <= 2 * result.front_std[pick] + 1e-12
    return {"points": int(len(pick)), "median": float(np.median(err)), "worst_task": float(np.max(np.median(err, axis=0))),
            "coverage": float(np.mean(inside)), "measured": measured}


def run_problem(kind: str, n_tasks: int, methods, front_points: int) -> dict:
    base_tb = make_testbed(kind, n_tasks)
    weights = preference_set(n_tasks, 10, 0)
    lam = np.linspace(0.0, 1.0, 101)
    out = {"problem": f"testbed {kind} T = {n_tasks}", "methods": {}}
    every = []
    for method in methods:
        params = merge_parameters({"method": "task_arithmetic" if method == "lines" else method,
                                   **({"lines": {}} if method == "lines" else {})})
        tb = base_tb.merged_by(params)
        start = time.perf_counter()
        result = explore(tb, tb.tasks, bounds=(0.0, 1.0), seed=0, front_points=front_points)
        spent = tb.n_calls
        picks = np.array([result.pick(weights=w)[0] for w in weights])
        measured = tb.values(picks)
        grid = tb.values(np.repeat(lam[:, None], n_tasks, axis=1))
        best = int(np.argmax(grid.mean(axis=1)))
        fid = fidelity(result, tb)
        every += [measured, grid, fid.pop("measured")]
        out["methods"][method] = {
            "title": get_method(params["method"]).title + (" + LiNeS" if method == "lines" else ""),
            "evaluations": int(spent + len(picks)), "seconds": round(time.perf_counter() - start, 1),
            "best_equal": {"lambda": float(lam[best]), "mean": float(grid[best].mean()), "per_task": grid[best].tolist()},
            "picks": picks.tolist(), "measured": measured.tolist(),
            "r2_min": float(min(s.r2_cv_ for s in result.surrogates.values())), **fid,
        }
        print(f"{kind} {method}: {spent} + 10 evaluations, best equal-weight {grid[best].mean():.3f} (λ={lam[best]:.2f}), "
              f"fidelity median {fid['median']:.2f} worst task {fid['worst_task']:.2f} coverage {fid['coverage']:.0%}",
              flush=True)
    judge(out, weights, np.vstack(every))
    return out


def judge(out: dict, weights: np.ndarray, every: np.ndarray) -> None:
    """Each preference's achievement on measured values, one scale for every method; lower is better."""
    names = list(out["methods"])
    scores = np.array([[achievement(np.asarray(out["methods"][m]["measured"][i])[None], w, every)[0] for m in names]
                       for i, w in enumerate(weights)])
    for j, m in enumerate(names):
        out["methods"][m]["achievement"] = float(scores[:, j].mean())
        out["methods"][m]["wins"] = int(np.sum(np.argmin(scores, axis=1) == j))


def zoo_problem(store: Path, spec: Path, methods, fidelity_points: int = 20, name: str = "8-task demo zoo") -> dict:
    """A demo (the 8-task zoo, the LLM demo) from `merge-explorer compare`'s store (nothing new is measured
    if it ran), plus each method's shown front re-measured at `fidelity_points` points (stored as checks)."""
    from explorer.experiment.compare import compare

    cmp = compare(spec, methods, store_path=store, progress=False)
    out = {"problem": name, "methods": {}}
    for j, run in enumerate(cmp.runs):
        exp, result = run.experiment, run.result
        rows = np.flatnonzero(result.front_trusted) if np.any(result.front_trusted) else np.arange(len(result.front_predicted))
        pick = rows[thin(result.front_predicted[rows], min(fidelity_points, len(rows)), 0)]
        measured = np.array([exp.evaluate(c, kind="verify") for c in result.front_coefficients[pick]])
        exp.release()
        err = np.abs(result.front_predicted[pick] - measured) * 100
        inside = np.abs(result.front_predicted[pick] - measured) <= 2 * result.front_std[pick] + 1e-12
        C, _, kinds = exp.measured()
        eq = run.best_equal
        out["methods"][run.method] = {
            "title": get_method(run.method).title,
            # the store holds the whole run (whichever process measured it): the design and its picks
            "evaluations": int(sum(k in ("design", "adaptive", "reference") for k in kinds)) + len(cmp.picks[run.method]),
            "best_equal": None if eq is None else {"lambda": eq[0], "mean": float(np.mean(eq[1])), "per_task": eq[1].tolist()},
            "achievement": float(cmp.scores[:, j].mean()), "wins": int(sum(w == run.method for w in cmp.winners())),
            "r2_min": float(np.min(run.fit_r2())), "reach": run.reach().tolist(), "points": int(len(pick)),
            "median": float(np.median(err)), "worst_task": float(np.max(np.median(err, axis=0))),
            "coverage": float(np.mean(inside)),
        }
        print(f"{name} {run.method}: fidelity median {np.median(err):.2f} coverage {np.mean(inside):.0%}", flush=True)
    return out


def markdown(problems: list[dict]) -> str:
    lines = ["| problem | method | evaluations | best equal-weight mean (λ) | picks: mean achievement ↓ (wins of 10) | "
             "shown front: median \\|pred − meas\\| / worst task / ±2 std coverage | min LOO R² |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in problems:
        for m, r in p["methods"].items():
            eq = r["best_equal"]
            fid = (f"{r['median']:.2f} / {r['worst_task']:.2f} / {r['coverage']:.0%}" if "median" in r else "—")
            equal = "—" if eq is None else f"{100 * eq['mean']:.1f} ({eq['lambda']:.2f})"
            lines.append(f"| {p['problem']} | {r['title']} | {r['evaluations']} | {equal} | "
                         f"{r['achievement']:.3f} ({r['wins']}) | {fid} | {r['r2_min']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 tasks, 300 front points")
    ap.add_argument("--zoo", action="store_true", help="add the 8-task demo zoo (runs `compare` on its store)")
    ap.add_argument("--zoo-store", default=str(ROOT / "cache" / "compare8.sqlite"))
    ap.add_argument("--zoo-only", action="store_true", help="keep the testbeds' rows of the last run (--out .json)")
    ap.add_argument("--llm", action="store_true", help="add the LLM demo (4 skills, tiny Llama; `compare` on its store)")
    ap.add_argument("--llm-store", default=str(ROOT / "cache" / "compare-llm.sqlite"))
    ap.add_argument("--untuned", action="store_true", help="add the 8-task landscapes no constant was tuned on "
                    "(fashion-relabel, fashion-views)")
    ap.add_argument("--keep", action="store_true", help="keep every problem of the last run (--out .json) but those rerun")
    ap.add_argument("--methods", default=",".join(LINEAR))
    ap.add_argument("--out", default=str(RESULTS / "methods"))
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    n_tasks, front_points = (4, 300) if args.quick else (8, 1000)
    out = Path(args.out)
    if args.keep:
        problems = json.loads(out.with_suffix(".json").read_text())
    elif args.zoo_only:
        problems = [p for p in json.loads(out.with_suffix(".json").read_text()) if p["problem"].startswith("testbed")]
    else:
        problems = [run_problem(kind, n_tasks, [m for m in methods if m != "iso_c"], front_points)
                    for kind in ("hidden", "deep")]
    if args.untuned:
        from explorer.demo.testbeds import UNTUNED_KINDS

        done = {f"testbed {kind} T = {n_tasks}" for kind in UNTUNED_KINDS}
        problems = [p for p in problems if p["problem"] not in done]
        problems += [run_problem(kind, n_tasks, [m for m in methods if m != "iso_c"], front_points)
                     for kind in UNTUNED_KINDS]
    every = ["task_arithmetic", "ties", "tsv", "cart", "consensus", "iso_c"]
    if args.zoo or args.zoo_only:
        problems = [p for p in problems if p["problem"] != "8-task demo zoo"]
        problems.append(zoo_problem(Path(args.zoo_store), ROOT / "examples" / "demo8.yaml", every))
    if args.llm:  # ensure the demo's checkpoints exist: `merge-explorer demo --kind llm` builds them
        problems = [p for p in problems if p["problem"] != "LLM demo (4 skills)"]
        problems.append(zoo_problem(Path(args.llm_store), ROOT / "examples" / "demo_llm.yaml", every,
                                    name="LLM demo (4 skills)"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(problems, indent=1) + "\n")
    table = markdown(problems)
    out.with_suffix(".md").write_text("# Fronts within merge methods (`python -m benchmarks.methods`)\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
