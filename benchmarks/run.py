"""The benchmark: real evaluations spent against the quality of the merge chosen, and front fidelity.

    python -m benchmarks.run                 # analytic T = 2, 4, 8 (3 seeds), both testbeds, both demo zoos
    python -m benchmarks.run --quick         # analytic T = 2, 4, 8 (one seed) and the hidden-layer testbed
    python -m benchmarks.run --scaling-only  # picks vs T = 2..20 per method (benchmarks/scaling.py)
    python -m benchmarks.run --only testbed  # just the problems whose name contains a word

Writes benchmarks/results/benchmark[-quick].md and .json and prints the tables. Each finished
problem is kept under cache/benchmark/, so an interrupted run resumes (`--fresh` starts over).

What is compared, on each problem, for the same 10 preferences (fixed seeded weight vectors):
- ours: the product's default (`explorer.core.explore.default_design`): `explore_adaptive(tol=0)` from
  5 tasks on, `explore` (space-filling design, surrogate family chosen per task) below, 2P
  evaluations either way; its surrogate picks among the trusted front (`result.decide`), then
  `result.polish` (≤ 12 evaluations each);
- plain MAP: `explore`'s design with quadratic surrogates (`family="quadratic"`) and their front over
  the whole box, its picks among all of that front;
- random search, a brute-force grid, optuna's NSGA-II and TPE (benchmarks/rivals.py), whose pick
  is the best of their *measured* points by the same achievement function.

Every evaluation a method makes counts (distinct points): ours at N₁ = its design plus measuring
its 10 picks, at N₂ = N₁ plus the polish. Every other method gets N₁ and N₂ (MAP: a design of
N − 10 plus measuring its picks). Quality of a pick: its real margin, the most every task could
gain at once over it (0 = nothing beats it in every task), against the truth where it is known,
else against every point any method measured. Front fidelity: ≥ 40 points of the shown front
(ours: the trusted rows; MAP: all rows) measured for real by the benchmark, not by the methods.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import problems as P  # noqa: E402
from benchmarks.preferences import N_PREFERENCES, preferences  # noqa: E402
from benchmarks.rivals import RIVALS, pick_measured  # noqa: E402
from explorer.core.adaptive import explore_adaptive  # noqa: E402
from explorer.core.decision import achievement, decide  # noqa: E402
from explorer.core.design import default_budget, n_quadratic_terms, sample_design  # noqa: E402
from explorer.core.explore import default_design, explore  # noqa: E402
from explorer.core.pareto import compute_front, non_dominated, thin  # noqa: E402
from explorer.core.result import fit_surrogates  # noqa: E402

#: Bump when what a problem's cached result means changes (methods, counting, metrics).
VERSION = "3"
#: The engine code a result depends on: a cached problem is reused only while these are unchanged.
#: Paths under explorer/.
ENGINE_FILES = ("core/adaptive.py", "core/explore.py", "core/result.py", "core/polish.py", "core/decision.py",
                "core/model_selection.py", "core/kriging.py", "core/surrogate.py", "core/links.py", "core/metrics.py",
                "core/pareto.py", "core/design.py", "demo/landscapes.py", "demo/testbeds.py")
POLISH_BUDGET = 12
FIDELITY_POINTS = 40
CACHE = ROOT / "cache" / "benchmark"
METHODS = ["ours", "plain MAP", "random", "grid", "NSGA-II", "TPE"]


# ----------------------------------------------------------------------------- measurements


def fidelity(problem: P.Problem, result, rows: np.ndarray, seed: int) -> dict:
    """|predicted − measured| over ≥ 40 points of the given front rows, measured for real (audit)."""
    if len(rows) == 0:
        return {"n": 0}
    chosen = rows[thin(result.front_predicted[rows], FIDELITY_POINTS, seed)]
    pred, std = result.front_predicted[chosen], result.front_std[chosen]
    meas = problem.measure(result.front_coefficients[chosen])
    err = np.abs(pred - meas)
    per_task = np.median(err, axis=0)
    return {"n": int(len(chosen)), "shown_rows": int(len(rows)), "front_rows": int(len(result.front_coefficients)),
            "median": float(np.median(err)), "p90": float(np.percentile(err, 90)), "max": float(err.max()),
            "worst_task_median": float(per_task.max()), "worst_task": problem.tasks[int(per_task.argmax())],
            "per_task_median": per_task.tolist(), "bias": float(np.mean(pred - meas)),
            "coverage_2std": float(np.mean(err <= 2 * std)) if np.all(np.isfinite(std)) else None}


def pick_error(pred: np.ndarray, meas: np.ndarray, std: np.ndarray | None = None) -> dict:
    err = np.abs(pred - meas)
    out = {"median": float(np.median(err)), "max": float(err.max())}
    if std is not None and np.all(np.isfinite(std)):
        out["coverage_2std"] = float(np.mean(err <= 2 * std))
    return out


def run_ours(problem: P.Problem, prefs: np.ndarray, seed: int) -> dict:
    counter = P.Counter(problem)
    start = time.perf_counter()
    if default_design(problem.n_tasks) == "adaptive":
        result = explore_adaptive(counter.one, problem.tasks, seed=seed, tol=0.0, front_points=1000)
    else:
        result = explore(counter.one, problem.tasks, seed=seed, front_points=1000)
    fit_s = time.perf_counter() - start
    n_fit = counter.n
    decisions = [result.decide(w) for w in prefs]
    C1 = np.array([d.coefficients for d in decisions])
    pred = np.array([d.predicted for d in decisions])
    std = np.array([d.std for d in decisions])
    V1 = counter.many(C1)
    n1 = counter.n
    start = time.perf_counter()
    polished = [result.polish(counter.one, w, budget=POLISH_BUDGET) for w in prefs]
    polish_s = time.perf_counter() - start
    trusted = np.flatnonzero(result.front_trusted)
    return {"result": result, "n_fit": n_fit, "fit_s": fit_s, "polish_s": polish_s,
            "budgets": {"N1": (n1, C1, V1), "N2": (counter.n, np.array([c for c, _ in polished]),
                                                   np.array([m for _, m in polished]))},
            "pick_error": pick_error(pred, V1, std), "picks_trusted": int(sum(d.trusted for d in decisions)),
            "fidelity": fidelity(problem, result, trusted, seed),
            "fidelity_all": fidelity(problem, result, np.arange(len(result.front_coefficients)), seed),
            "rounds": len(result.extra.get("adaptive", [])), "design": default_design(problem.n_tasks)}


def run_map(problem: P.Problem, prefs: np.ndarray, seed: int, total: int, with_fidelity: bool) -> dict:
    """Plain MAP spending `total` evaluations: a design of total − 10, then measuring its 10 picks.

    MAP as published: quadratic surrogates fitted to the space-filling design (explorer.core.explore's
    design and `family="quadratic"`) and their front over the whole box, every row of it shown.
    """
    counter = P.Counter(problem)
    t = problem.n_tasks
    design = max(n_quadratic_terms(t) + 1, total - len(prefs))
    start = time.perf_counter()
    box = np.tile([0.0, 1.0], (t, 1))
    senses = np.ones(t)
    C = sample_design(box, t, design, seed)
    fitted = fit_surrogates(problem.tasks, C, counter.many(C), box, senses, family="quadratic")
    surrogates = [fitted[task] for task in problem.tasks]
    front = compute_front(surrogates, box, senses, max_points=1000, seed=seed)
    X, pred = front.X, -front.F
    std = np.column_stack([s.predict(X, return_std=True)[1] for s in surrogates])
    seconds = time.perf_counter() - start
    ds = [decide(X, pred, senses, problem.tasks, w) for w in prefs]
    picks = np.array([d.coefficients for d in ds])
    idx = [d.index for d in ds]
    V = counter.many(picks)
    out = {"design": design, "n": counter.n, "seconds": seconds, "C": picks, "V": V,
           "pick_error": pick_error(pred[idx], V, std[idx])}
    if with_fidelity:
        shown = SimpleNamespace(front_coefficients=X, front_predicted=pred, front_std=std)
        out["fidelity"] = fidelity(problem, shown, np.arange(len(X)), seed)
    return out


def run_problem(problem: P.Problem, seed: int, log) -> dict:
    t = problem.n_tasks
    prefs = preferences(t, seed=seed)
    started = time.perf_counter()
    log(f"  ours ({default_design(t)} design, 2P = {default_budget(t)})")
    ours = run_ours(problem, prefs, seed)
    n1, n2 = ours["budgets"]["N1"][0], ours["budgets"]["N2"][0]
    log(f"    {ours['n_fit']} design + picks = N1 {n1}; + polish = N2 {n2}; fit {ours['fit_s']:.0f} s, "
        f"polish {ours['polish_s']:.0f} s; front fidelity {ours['fidelity'].get('median', float('nan')):.4f}")
    picks = {"ours": ours["budgets"]}
    seconds = {"ours": ours["fit_s"] + ours["polish_s"]}
    log("  plain MAP")
    maps = {}
    for label, n in (("N1", n1), ("N2", n2)):
        maps[label] = run_map(problem, prefs, seed, n, with_fidelity=label == "N1")
    picks["plain MAP"] = {k: (m["n"], m["C"], m["V"]) for k, m in maps.items()}
    seconds["plain MAP"] = sum(m["seconds"] for m in maps.values())
    measured = {}
    for name, (search, prefix) in RIVALS.items():
        log(f"  {name}")
        start = time.perf_counter()
        if prefix:
            counter = P.Counter(problem)
            search(counter, n2, seed)
            C, V = counter.measured()
            measured[name] = {"N1": (C[:n1], V[:n1]), "N2": (C, V)}
        else:
            measured[name] = {}
            for label, n in (("N1", n1), ("N2", n2)):
                counter = P.Counter(problem)
                search(counter, n, seed)
                measured[name][label] = counter.measured()
        seconds[name] = time.perf_counter() - start
    # the reference that scales every rival's achievement function: the truth, else all measured
    if problem.truth is not None:
        reference = problem.truth
    else:
        pool = np.vstack([v for _, v in problem.pool])
        reference = pool[non_dominated(-pool)]
    for name, budgets in measured.items():
        picks[name] = {}
        for label, (C, V) in budgets.items():
            idx = [pick_measured(V, w, reference) for w in prefs]
            picks[name][label] = (len(C), C[idx], V[idx])
    log("  margins")
    rows = {}
    for name in METHODS:
        rows[name] = {}
        for label, (n, C, V) in picks[name].items():
            margin = problem.margin(C, V)
            ach = np.array([achievement(v[None], w, reference)[0] for v, w in zip(V, prefs)])
            rows[name][label] = {"evaluations": int(n), "mean_margin": float(margin.mean()), "max_margin": float(margin.max()),
                                 "margins": margin.tolist(), "mean_achievement": float(ach.mean()),
                                 "mean_accuracy": float(V.mean()), "coefficients": C.tolist(), "measured": V.tolist()}
    return {"problem": problem.name, "family": problem.family, "n_tasks": t, "P": n_quadratic_terms(t), "seed": seed,
            "truth": problem.note, "preferences": prefs.tolist(), "rows": rows, "seconds": seconds,
            "ours": {k: ours[k] for k in ("n_fit", "fit_s", "polish_s", "pick_error", "picks_trusted", "fidelity", "fidelity_all",
                                          "rounds", "design")}
                    | {"front_rows": int(len(ours["result"].front_trusted)), "trusted_rows": int(ours["result"].front_trusted.sum())},
            "plain MAP": {"design": maps["N1"]["design"], "pick_error": maps["N1"]["pick_error"],
                          "fidelity": maps["N1"]["fidelity"]},
            "wall_s": time.perf_counter() - started}


# ----------------------------------------------------------------------------- which problems


def problem_list(quick: bool) -> list[tuple[str, int, callable]]:
    """(name, seed, factory) in run order: cheap first."""
    seeds = [0] if quick else [0, 1, 2]
    out = []
    for t in (2, 4, 8):
        for kind in ("smooth", "sharp"):
            for s in seeds:
                out.append((f"analytic {kind} T={t} s{s}", s, lambda t=t, kind=kind, s=s: P.analytic(t, kind, s)))
    for kind in ("hidden",) if quick else ("hidden", "deep"):
        out.append((f"testbed {kind} T=8", 0, lambda kind=kind: P.testbed(kind)))
    if not quick:
        for zoo in ("demo-zoo", "demo-zoo-8"):
            out.append((f"{zoo}", 0, lambda zoo=zoo: P.zoo(zoo)))
    return out


def engine_hash() -> str:
    """Hash of the engine files as this process loaded them (computed once, at the first call)."""
    global _ENGINE_HASH
    if _ENGINE_HASH is None:
        h = hashlib.sha256(VERSION.encode())
        for name in ENGINE_FILES:
            h.update((ROOT / "explorer" / name).read_bytes())
        _ENGINE_HASH = h.hexdigest()[:10]
    return _ENGINE_HASH


_ENGINE_HASH: str | None = None


def slug(name: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{name}-run{seed}").strip("-") + f"-{engine_hash()}.json"


def git_commit() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        files = [f"explorer/{name}" for name in ENGINE_FILES]
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *files], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + (" + uncommitted engine changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def matches(word: str, name: str) -> bool:
    """`--only` words match inside a problem's name; a word ending in "$" must be the whole name."""
    return name == word[:-1] if word.endswith("$") else word in name


def run_all(quick: bool, only: list[str], fresh: bool, log) -> tuple[list[dict], list[str]]:
    results, notes = [], []
    engine_hash()  # fixed now: edits to the engine during a long run must not relabel its results
    CACHE.mkdir(parents=True, exist_ok=True)
    todo = [p for p in problem_list(quick) if not only or any(matches(w, p[0]) for w in only)]
    for i, (name, seed, factory) in enumerate(todo, 1):
        path = CACHE / slug(name, seed)
        if path.exists() and not fresh:
            log(f"[{i}/{len(todo)}] {name}: done before ({path.relative_to(ROOT)})")
            results.append(json.loads(path.read_text()))
            continue
        if name.startswith("demo-zoo") and not P.zoo_built(name):
            notes.append(f"{name}: not built (cache/{name}/manifest.json missing), skipped; build it with "
                         f"`merge-explorer demo{' --tasks 8' if name.endswith('8') else ''}` and rerun.")
            log(f"[{i}/{len(todo)}] {name}: not built, skipped")
            continue
        log(f"[{i}/{len(todo)}] {name}")
        res = run_problem(factory(), seed, log)
        res["engine"] = {"hash": engine_hash(), "commit": git_commit()}
        path.write_text(json.dumps(res, default=_json) + "\n")
        results.append(res)
    return results, notes


def _json(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


# ----------------------------------------------------------------------------- report


def _pts(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def summary(results: list[dict]) -> dict:
    """Per T and family, mean over problems of each method's mean margin at N₁ and N₂; where ours loses."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        key = "analytic" if r["family"] == "analytic" else r["problem"]
        groups.setdefault(f"{key} T={r['n_tasks']}" if r["family"] == "analytic" else key, []).append(r)
    table = []
    for key, rs in groups.items():
        row = {"setting": key, "problems": len(rs), "n_tasks": rs[0]["n_tasks"]}
        for label in ("N1", "N2"):
            row[label] = {m: float(np.mean([r["rows"][m][label]["mean_margin"] for r in rs])) for m in METHODS}
            row[f"{label}_evaluations"] = {m: float(np.mean([r["rows"][m][label]["evaluations"] for r in rs])) for m in METHODS}
        table.append(row)
    losses = []
    for r in results:
        for label in ("N1", "N2"):
            ours = r["rows"]["ours"][label]["mean_margin"]
            better = [(m, r["rows"][m][label]["mean_margin"]) for m in METHODS[1:]
                      if r["rows"][m][label]["mean_margin"] < ours - 0.001]
            if better:
                losses.append({"problem": r["problem"], "budget": label, "ours": ours, "better": better})
    return {"table": table, "losses": losses}


def markdown(res: dict) -> str:
    lines = [f"# merge-explorer benchmark{' (quick)' if res['quick'] else ''}", "",
             f"Machine: {res['machine']}. Engine {res['engine']['commit']} (engine hash {res['engine']['hash']}). "
             f"Wall time {res['seconds']:.0f} s in this run, {sum(r.get('wall_s', 0) for r in res['results']):.0f} s over the "
             "problems' own runs (problems finished before with the same engine are reused "
             "from cache/benchmark/). Produced by `python -m benchmarks.run" + (" --quick" if res["quick"] else "") + "`.", "",
             "Each method spends real evaluations (distinct points, all counted) and then picks one merge for each of "
             f"{N_PREFERENCES} fixed preferences (equal weights and 9 seeded Dirichlet weight vectors). The quality of a "
             "pick is its **real margin**: the most every task could gain at once over the pick's measured accuracies "
             "(accuracy points; 0 = nothing known beats it in every task). **N₁** = ours' design + measuring its 10 "
             f"surrogate picks; **N₂** = N₁ + polishing each pick (≤ {POLISH_BUDGET} evaluations each). Every other method "
             "gets N₁ and N₂ evaluations. Rivals pick the best *measured* point by the achievement function scaled by "
             "the true front (zoos: by everything measured), which ours does not get.", ""]
    s = res["summary"]
    for label, title in (("N1", "N₁ (ours: surrogate picks)"), ("N2", "N₂ (ours: polished picks)")):
        lines += [f"## Mean real margin of the picks at {title}, accuracy points (lower is better)", "",
                  "| setting | problems | evaluations | " + " | ".join(METHODS) + " |",
                  "|---|---:|---:|" + "---:|" * len(METHODS)]
        for row in s["table"]:
            ev = row[f"{label}_evaluations"]["ours"]
            best = min(row[label].values())
            cells = [(f"**{_pts(row[label][m])}**" if row[label][m] <= best + 1e-12 else _pts(row[label][m])) for m in METHODS]
            lines.append(f"| {row['setting']} | {row['problems']} | {ev:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Where ours loses", ""]
    if s["losses"]:
        lines += ["Problems where some method's mean margin beats ours by more than 0.1 point:", "",
                  "| problem | budget | ours | better |", "|---|---|---:|---|"]
        for loss in s["losses"]:
            lines.append(f"| {loss['problem']} | {loss['budget']} | {_pts(loss['ours'])} | "
                         + ", ".join(f"{m} {_pts(v)}" for m, v in sorted(loss["better"], key=lambda x: x[1])) + " |")
    else:
        lines.append("Nowhere by more than 0.1 point.")
    lines += ["", "## Front fidelity: the shown front measured for real", "",
              "Ours: points of the trusted front (what the app shows as vouched for), and of its whole front (the rest is drawn "
              "as unvouched); plain MAP: points of its whole front. "
              "|predicted − measured| in accuracy points over every task of every point; coverage: share within ±2 std.", "",
              "| problem | method | points (of shown/front rows) | median | p90 | worst task's median | coverage ±2σ | "
              "picks: median \\|pred − meas\\| | picks coverage |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        for m, key in (("ours (trusted front)", "fidelity"), ("ours (whole front)", "fidelity_all"), ("plain MAP", "fidelity")):
            owner = "plain MAP" if m == "plain MAP" else "ours"
            f, pe = r[owner][key], r[owner]["pick_error"]
            if f.get("n", 0) == 0:
                lines.append(f"| {r['problem']} | {m} | 0 (no trusted rows) | — | — | — | — | {_pts(pe['median'])} | — |")
                continue
            cov = "—" if f["coverage_2std"] is None else f"{100 * f['coverage_2std']:.0f} %"
            pcov = "—" if pe.get("coverage_2std") is None else f"{100 * pe['coverage_2std']:.0f} %"
            lines.append(f"| {r['problem']} | {m} | {f['n']} ({f['shown_rows']}/{f['front_rows']}) | {_pts(f['median'])} | "
                         f"{_pts(f['p90'])} | {_pts(f['worst_task_median'])} ({f['worst_task']}) | {cov} | {_pts(pe['median'])} | {pcov} |")
    lines += ["", "## Per problem", ""]
    for r in res["results"]:
        o = r["ours"]
        lines += [f"### {r['problem']} ({r['truth']})", "",
                  f"Ours: {o['n_fit']} evaluations ({o['design']} design, {o['rounds']} adaptive rounds), {o['trusted_rows']} of "
                  f"{o['front_rows']} front rows trusted, {o['picks_trusted']}/10 picks trusted; fit {o['fit_s']:.0f} s, "
                  f"polish {o['polish_s']:.0f} s. Plain MAP design at N₁: {r['plain MAP']['design']}.", "",
                  "| method | N₁ evals | mean margin | max margin | mean achievement | N₂ evals | mean margin | max margin | "
                  "mean achievement | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in METHODS:
            a, b = r["rows"][m]["N1"], r["rows"][m]["N2"]
            lines.append(f"| {m} | {a['evaluations']} | {_pts(a['mean_margin'])} | {_pts(a['max_margin'])} | "
                         f"{a['mean_achievement']:.3f} | {b['evaluations']} | {_pts(b['mean_margin'])} | {_pts(b['max_margin'])} | "
                         f"{b['mean_achievement']:.3f} | {r['seconds'][m]:.0f} |")
        lines.append("")
    polish = [r for r in res["results"] if r["family"] == "testbed"]
    if polish:
        lines += ["## Polish on the testbeds", ""]
        for r in polish:
            a, b = r["rows"]["ours"]["N1"], r["rows"]["ours"]["N2"]
            lines.append(f"- {r['problem']}: mean real margin {_pts(a['mean_margin'])} → {_pts(b['mean_margin'])} points "
                         f"(max {_pts(b['max_margin'])}) with {b['evaluations'] - a['evaluations']} extra evaluations for "
                         f"{N_PREFERENCES} preferences (target: mean ≤ 0.50 with ≤ {POLISH_BUDGET} each).")
        lines.append("")
    for note in res["notes"]:
        lines.append(f"> {note}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="analytic T = 2, 4, 8 (one seed) and the hidden-layer testbed")
    ap.add_argument("--scaling-only", action="store_true", help="only picks vs T = 2..20 per method (scaling.md/json)")
    ap.add_argument("--only", nargs="*", default=[], help="run only problems whose name contains one of these words (end a word with $ for the exact name)")
    ap.add_argument("--fresh", action="store_true", help="recompute problems finished before")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.scaling_only:
        from benchmarks import scaling

        return scaling.main(out, quick=args.quick)
    import torch

    started = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results, notes = run_all(args.quick, args.only, args.fresh, log)
    res = {"quick": args.quick, "version": VERSION, "engine": {"hash": engine_hash(), "commit": git_commit()},
           "machine": f"{platform.machine()}, torch {torch.__version__}, no GPU used (all CPU)",
           "seconds": time.perf_counter() - started, "notes": notes, "results": results, "summary": summary(results)}
    stem = "benchmark-quick" if args.quick else "benchmark"
    if args.only:
        stem += "-partial"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=_json) + "\n")
    text = markdown(res)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
