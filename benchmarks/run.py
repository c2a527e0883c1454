"""The benchmark harness: front quality per evaluation, evaluation cost, surrogate cost, scaling in T.

    python -m benchmarks.run            # full run (analytic landscapes, toy and demo zoo when built)
    python -m benchmarks.run --quick    # a few minutes: fewer landscapes and task counts

Writes benchmarks/results/benchmark[-quick].md (the tables the README quotes) and .json (raw numbers).

Quality is always measured on *re-evaluated* fronts: the front's coefficients are evaluated for
real and their non-dominated set compared with the ground truth (IGD, IGD+ in accuracy units,
hypervolume ratio). Ground truth: the exact front of analytic landscapes (explorer.landscapes), and
a 21×21 grid of real evaluations for a pair of demo-zoo tasks. Re-evaluations are not counted as
evaluations; the count is what a strategy spends to produce its front.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.adaptive import explore_adaptive  # noqa: E402
from explorer.design import default_budget, n_quadratic_terms  # noqa: E402
from explorer.explore import explore, fit_result  # noqa: E402
from explorer.landscapes import make_landscape  # noqa: E402
from explorer.lowrank import LowRankQuadraticSurrogate, choose_method, lowrank_design, n_lowrank_terms  # noqa: E402
from explorer.nested import nested_picks  # noqa: E402
from explorer.pareto import compute_front, hypervolume, igd, igd_plus, non_dominated  # noqa: E402
from explorer.surrogate import QuadraticSurrogate  # noqa: E402

EQUAL_QUALITY_SLACK = 0.01   # "within 1 accuracy point of IGD"
MAP_MATCH_SLACK = 0.001      # adaptive "reaches" MAP's IGD within 0.1 accuracy point


# ----------------------------------------------------------------------------- quality
def quality(values: np.ndarray, truth: np.ndarray, hv_ok: bool = True) -> dict:
    """IGD, IGD+ and hypervolume ratio of measured accuracies (n, T) against the true front (m, T)."""
    V = values[non_dominated(-values)]
    out = {"igd": igd(-V, -truth), "igd_plus": igd_plus(-V, -truth), "front_size": int(len(V))}
    if hv_ok and truth.shape[1] <= 4:
        ref = -truth.min(axis=0) + 0.01 * np.ptp(truth, axis=0) + 1e-9
        out["hv_ratio"] = hypervolume(-V, ref) / hypervolume(-truth, ref)
    return out


def grid(levels: int, t: int) -> np.ndarray:
    axes = np.meshgrid(*[np.linspace(0, 1, levels)] * t, indexing="ij")
    return np.stack([a.ravel() for a in axes], axis=1)


def first_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    hits = [n for n, q in sorted(curve) if q <= target + 1e-12]
    return hits[0] if hits else None


# ----------------------------------------------------------------------------- A: front quality
def quality_problem(name: str, evaluate_many, tasks, truth: np.ndarray, grid_levels: list[int], map_factors: list[float],
                    seed: int = 0, front_points: int = 1000, hv_ok: bool = True) -> dict:
    """All strategies on one problem. `evaluate_many(C) -> (n, T)` real measurements."""
    t = len(tasks)
    p = n_quadratic_terms(t)
    evaluate = lambda c: dict(zip(tasks, evaluate_many(np.asarray(c)[None])[0]))  # noqa: E731
    rows = []
    for f in map_factors:
        budget = max(p + 1, int(round(f * p)))
        start = time.perf_counter()
        r = explore(evaluate, tasks, budget=budget, seed=seed, front_points=front_points)
        q = quality(evaluate_many(r.front_coefficients), truth, hv_ok)
        rows.append({"strategy": "MAP" + (" (default 2P)" if budget == default_budget(t) else ""), "evaluations": budget,
                     **q, "seconds": time.perf_counter() - start})
    trace = []

    def callback(C, Y):
        r = fit_result(tasks, C, Y, np.tile([0.0, 1.0], (t, 1)), seed=seed, front_points=front_points)
        trace.append((len(C), quality(evaluate_many(r.front_coefficients), truth, hv_ok)))

    start = time.perf_counter()
    r = explore_adaptive(evaluate, tasks, seed=seed, front_points=front_points, callback=callback)
    seconds = time.perf_counter() - start
    for n, q in trace[:-1]:
        rows.append({"strategy": "adaptive (round)", "evaluations": n, **q})
    rows.append({"strategy": "adaptive (stopped)", "evaluations": len(r.samples), **trace[-1][1], "seconds": seconds,
                 "rounds": r.extra["adaptive"]})
    for levels in grid_levels:
        C = grid(levels, t)
        rows.append({"strategy": f"brute force {levels}^{t}", "evaluations": len(C), **quality(evaluate_many(C), truth, hv_ok)})

    bf = [(r_["evaluations"], r_["igd"]) for r_ in rows if r_["strategy"].startswith("brute")]
    target = min(q for _, q in bf) + EQUAL_QUALITY_SLACK
    map_like = [(r_["evaluations"], r_["igd"]) for r_ in rows if r_["strategy"].startswith(("MAP", "adaptive"))]
    n_bf, n_map = first_reaching(bf, target), first_reaching(map_like, target)
    map_default = next(r_ for r_ in rows if r_["strategy"] == "MAP (default 2P)")
    ada_curve = [(r_["evaluations"], r_["igd"]) for r_ in rows if r_["strategy"].startswith("adaptive")]
    n_ada = first_reaching(ada_curve, map_default["igd"] + MAP_MATCH_SLACK)
    stopped = next(r_ for r_ in rows if r_["strategy"] == "adaptive (stopped)")
    return {
        "problem": name, "n_tasks": t, "rows": rows,
        "headline": {
            "target_igd": target, "bruteforce_evaluations": n_bf, "map_evaluations": n_map,
            "ratio_vs_bruteforce": (n_map / n_bf) if n_bf and n_map else None,
            "map_default_evaluations": map_default["evaluations"], "map_default_igd": map_default["igd"],
            "adaptive_evaluations_to_match_map": n_ada,
            "ratio_adaptive_vs_map": (n_ada / map_default["evaluations"]) if n_ada else None,
            "adaptive_stopped_evaluations": stopped["evaluations"], "adaptive_stopped_igd": stopped["igd"],
        },
    }


def analytic_quality(quick: bool) -> list[dict]:
    problems = [(2, "smooth"), (2, "sharp"), (3, "smooth"), (3, "sharp")] + ([] if quick else [(4, "smooth"), (4, "sharp")])
    levels = {2: [3, 4, 5, 6, 8, 11, 16, 21], 3: [3, 4, 5, 6, 8, 11], 4: [3, 4, 5, 6, 7]}
    out = []
    for t, kind in problems:
        land = make_landscape(t, kind)
        _, truth = land.true_front(1000)
        print(f"  quality: analytic {land.name}", flush=True)
        out.append(quality_problem(f"analytic {land.name}", land.values, land.tasks, truth, levels[t], [1.2, 1.5, 2.0, 3.0]))
    return out


# ----------------------------------------------------------------------------- demo zoo
def demo_zoo_available() -> Path | None:
    spec = ROOT / "examples" / "demo.yaml"
    manifest = ROOT / "cache" / "demo-zoo" / "manifest.json"
    return spec if spec.is_file() and manifest.is_file() else None


def _measure_tasks(exp, tasks_idx: list[int]):
    """evaluate_many over a subset of tasks (other coefficients 0), through the store (kind 'benchmark')."""
    names = [exp.tasks[i] for i in tasks_idx]
    t = len(exp.tasks)

    def evaluate_many(C: np.ndarray) -> np.ndarray:
        out = []
        for c in np.atleast_2d(C):
            full = np.zeros(t)
            full[tasks_idx] = c
            have = exp.stored(full)
            missing = [n for n in names if n not in have]
            if missing:
                for task, value, seconds in exp.engine.measure(full, missing):
                    exp.store.put(exp.key, exp.task_identities[task], task, full, value, seconds, "benchmark")
                    have[task] = value
            out.append([have[n] for n in names])
        return np.array(out)

    return evaluate_many, names


def demo_quality(spec: Path, quick: bool) -> list[dict]:
    from explorer.runner import Experiment

    exp = Experiment.from_file(spec, store_path=ROOT / "cache" / "benchmark-store.sqlite")
    evaluate_many, names = _measure_tasks(exp, [0, 1])
    print(f"  quality: demo zoo pair {names} (ground truth: 21x21 grid)", flush=True)
    truth_all = evaluate_many(grid(21, 2))
    truth = truth_all[non_dominated(-truth_all)]
    levels = [3, 4, 5, 6, 8, 11] if quick else [3, 4, 5, 6, 8, 11, 16]
    return [quality_problem(f"demo zoo {names[0]}+{names[1]}", evaluate_many, names, truth, levels,
                            [1.2, 2.0] if quick else [1.2, 1.5, 2.0, 3.0], front_points=30)]


# ----------------------------------------------------------------------------- B: evaluation cost
def evaluation_cost(spec: Path, label: str, n_points: int, images_per_point) -> dict:
    """Engine throughput (merge + evaluate + store, fresh points) vs plain inference of one fixed model."""
    from explorer.runner import Experiment

    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment.from_file(spec, store_path=Path(tmp) / "store.sqlite")
        t = len(exp.tasks)
        engine = exp.engine
        rng = np.random.default_rng(123)
        warm = rng.random(t)
        exp.evaluate(warm)  # warm caches (eval tensors, heads) as a real run would have after its first point
        points = rng.random((n_points, t))
        start = time.perf_counter()
        for c in points:
            exp.evaluate(c)
        engine_s = time.perf_counter() - start
        engine.merger.apply(warm)
        start = time.perf_counter()
        for _ in range(n_points):
            for task in exp.tasks:
                engine.evaluators[task](engine.model)
        plain_s = time.perf_counter() - start
        reps = 20
        start = time.perf_counter()
        for c in points[:reps]:
            engine.merger.apply(c)
        merge_s = (time.perf_counter() - start) / min(reps, n_points)
        flat = list(engine.merger.flat_vectors.values())
        nbytes = sum(v.numel() * v.element_size() for v in flat)
        start = time.perf_counter()
        for _ in range(reps):
            total = sum(float(v.sum()) for v in flat)  # noqa: F841 - reading every byte once
        read_s = (time.perf_counter() - start) / reps
    imgs = images_per_point * n_points
    return {"setup": label, "points": n_points, "images_per_point": images_per_point,
            "engine_images_per_s": imgs / engine_s, "plain_images_per_s": imgs / plain_s,
            "throughput_ratio": plain_s / engine_s, "merge_ms": merge_s * 1e3, "read_task_vectors_ms": read_s * 1e3,
            "task_vector_mb": nbytes / 1e6, "merge_vs_read": merge_s / read_s}


def toy_cost(quick: bool) -> dict:
    from tests import toy_zoo

    tmp = Path(tempfile.mkdtemp())
    spec = toy_zoo.build(tmp)
    _, y = toy_zoo._data("val")
    images = int(sum(int(torch.isin(y, torch.tensor(c)).sum()) for c in toy_zoo.GROUPS.values()))
    return evaluation_cost(spec, "toy MLP (digits, 3 tasks)", 20 if quick else 60, images)


def demo_cost(spec: Path, quick: bool) -> dict:
    from explorer import clip_suite
    from explorer.runner import Experiment

    exp = Experiment.from_file(spec, store_path=Path(tempfile.mkdtemp()) / "s.sqlite")
    images = 0
    for t in exp.tasks:
        params = dict(exp.spec.tasks[t].params)
        data = clip_suite.eval_data(exp.engine.model, dataset=params["dataset"], split=params.get("split", "validation"),
                                    subsample=params.get("subsample"), seed=params.get("seed", 0), spec_dir=str(exp.spec_dir),
                                    device=exp.engine.device)
        images += len(data.labels)
    return evaluation_cost(spec, "demo zoo (tiny open_clip, 4 tasks)", 3 if quick else 8, images)


# ----------------------------------------------------------------------------- C: surrogate and UI cost
def surrogate_cost(quick: bool) -> list[dict]:
    out = []
    for t in range(2, 9):
        land = make_landscape(t, "smooth")
        C = np.random.default_rng(t).random((default_budget(t), t))
        Y = land.values(C)
        reps = 3
        start = time.perf_counter()
        for _ in range(reps):
            surrogates = [QuadraticSurrogate().fit(C, Y[:, i]) for i in range(t)]
        fit_s = (time.perf_counter() - start) / reps / t
        start = time.perf_counter()
        compute_front(surrogates, np.tile([0.0, 1.0], (t, 1)), np.ones(t))
        front_s = time.perf_counter() - start
        out.append({"n_tasks": t, "samples": len(C), "fit_ms_per_task": fit_s * 1e3, "front_s": front_s})
    return out


# ----------------------------------------------------------------------------- D: scaling in T
def improvement_margin(land, c: np.ndarray) -> float:
    """Exact: the largest s such that some c' in the box beats c by ≥ s on every task (0 = Pareto-optimal)."""
    t = land.n_tasks
    v0 = land.values(c[None], noisy=False)[0]
    cons = {"type": "ineq", "fun": lambda z: land.values(z[None, :t], noisy=False)[0] - v0 - z[t]}
    res = minimize(lambda z: -z[t], np.append(c, 0.0), method="SLSQP", constraints=[cons],
                   bounds=[(0.0, 1.0)] * t + [(0.0, 1.0)], options={"maxiter": 300, "ftol": 1e-10})
    z = res.x
    ok = np.all(land.values(z[None, :t], noisy=False)[0] - v0 >= z[t] - 1e-7)
    return float(max(z[t], 0.0)) if ok else 0.0


def _picks_from_surrogates(surrogates, t: int, preferences, seed: int = 0) -> np.ndarray:
    from explorer.decision import decide

    front = compute_front(surrogates, np.tile([0.0, 1.0], (t, 1)), np.ones(t), n_candidates=1024, max_points=300, seed=seed)
    tasks = [f"t{i}" for i in range(t)]
    return np.array([decide(front.X, -front.F, np.ones(t), tasks, weights=w).coefficients for w in preferences])


def scaling(quick: bool) -> list[dict]:
    sizes = [2, 4, 8, 12] if quick else [2, 4, 6, 8, 12, 16, 20]
    out = []
    for t in sizes:
        land = make_landscape(t, "smooth")
        rng = np.random.default_rng(t)
        prefs = [np.ones(t)] + list(rng.dirichlet(np.ones(t), 4))
        print(f"  scaling: T={t} (rule picks {choose_method(t)})", flush=True)

        def record(method, n_eval, picks, seconds):
            vals = land.values(picks, noisy=False)
            margins = [improvement_margin(land, c) for c in picks]
            out.append({"n_tasks": t, "method": method, "evaluations": int(n_eval), "mean_margin": float(np.mean(margins)),
                        "max_margin": float(np.max(margins)), "mean_accuracy": float(vals.mean()), "seconds": seconds,
                        "rule": choose_method(t)})

        if t <= (12 if quick else 16):
            start = time.perf_counter()
            C = np.random.default_rng(0).random((1, t))
            from explorer.design import sample_design

            C = sample_design((0.0, 1.0), t, None, 0)
            Y = land.values(C)
            sur = [QuadraticSurrogate().fit(C, Y[:, i]) for i in range(t)]
            record("full quadratic (MAP)", len(C), _picks_from_surrogates(sur, t, prefs), time.perf_counter() - start)
        start = time.perf_counter()
        C = lowrank_design((0.0, 1.0), t, 2 * n_lowrank_terms(t), 0)
        Y = land.values(C)
        sur = [LowRankQuadraticSurrogate(cv_folds=2).fit(C, Y[:, i]) for i in range(t)]
        record("low-rank quadratic (r=2)", len(C), _picks_from_surrogates(sur, t, prefs), time.perf_counter() - start)
        start = time.perf_counter()
        results, n_eval = nested_picks(land, land.tasks, prefs)
        record("nested", n_eval, np.array([r.coefficients for r in results]), time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------- report
def _f(x, digits=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown(res: dict, scaling_only: bool = False) -> str:
    lines = [f"# merge-explorer benchmark{' (quick)' if res['quick'] else ''}", "",
             f"Machine: {res['machine']}. Total time {res['seconds']:.0f} s. No GPU in this run.", ""]
    if scaling_only:
        return "\n".join(lines + _scaling_lines(res["scaling"])) + "\n"
    h = res["headlines"]
    lines += ["## Headline ratios", "",
              f"- **Evaluations vs brute force at equal quality** (IGD within 1 accuracy point of the best brute-force grid): "
              f"median ratio {_f(h['ratio_vs_bruteforce_median'], 3)} (per problem: {h['ratio_vs_bruteforce']}).",
              f"- **Adaptive vs plain MAP** (evaluations adaptive needs to reach MAP-2P's IGD within 0.1 point, over 2P): "
              f"median {_f(h['ratio_adaptive_vs_map_median'], 3)} (per problem: {h['ratio_adaptive_vs_map']}); "
              f"with its own stopping rule adaptive spent {h['adaptive_stopped']} evaluations vs {h['map_default']}.",
              f"- **Engine throughput vs plain inference** (images/s, same data, same process): {h['throughput']}.", ""]
    lines += ["## Front quality per evaluation", "",
              "Re-evaluated fronts vs ground truth (IGD, IGD+ in accuracy units; HV ratio to the true front's hypervolume).", ""]
    for prob in res["quality"]:
        hl = prob["headline"]
        lines += [f"### {prob['problem']}", "",
                  "| strategy | evaluations | IGD | IGD+ | HV ratio | front points |", "|---|---:|---:|---:|---:|---:|"]
        for r in prob["rows"]:
            lines.append(f"| {r['strategy']} | {r['evaluations']} | {_f(r['igd'])} | {_f(r['igd_plus'])} | {_f(r.get('hv_ratio'), 3)} | {r['front_size']} |")
        lines += ["", f"Target IGD {_f(hl['target_igd'])}: brute force needs {hl['bruteforce_evaluations']}, MAP/adaptive "
                  f"{hl['map_evaluations']} (ratio {_f(hl['ratio_vs_bruteforce'], 3)}). Adaptive matches MAP-2P "
                  f"(IGD {_f(hl['map_default_igd'])}, {hl['map_default_evaluations']} evals) after "
                  f"{hl['adaptive_evaluations_to_match_map']} evals; its stopping rule stopped at {hl['adaptive_stopped_evaluations']} "
                  f"(IGD {_f(hl['adaptive_stopped_igd'])}).", ""]
    if res.get("demo_note"):
        lines += [f"> {res['demo_note']}", ""]
    lines += ["## Evaluation cost", "", "| setup | images/point | engine img/s | plain img/s | engine/plain | merge ms | read τ ms | τ MB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res["cost"]:
        lines.append(f"| {c['setup']} | {c['images_per_point']} | {c['engine_images_per_s']:.0f} | {c['plain_images_per_s']:.0f} | "
                     f"{c['throughput_ratio']:.3f} | {c['merge_ms']:.3f} | {c['read_task_vectors_ms']:.3f} | {c['task_vector_mb']:.2f} |")
    lines += ["", "## Surrogate and UI cost (2P samples, analytic landscape)", "", "| T | samples | fit ms/task (incl. LOO-CV) | front s |", "|---:|---:|---:|---:|"]
    for s in res["surrogate"]:
        lines.append(f"| {s['n_tasks']} | {s['samples']} | {s['fit_ms_per_task']:.1f} | {s['front_s']:.2f} |")
    lines += [""] + _scaling_lines(res["scaling"])
    return "\n".join(lines) + "\n"


def _scaling_lines(rows: list[dict]) -> list[str]:
    lines = ["## Scaling with the number of tasks (analytic 'smooth' landscapes, 5 preferences)", "",
              "Quality of the merged model picked for each preference: its exact *improvement margin* (the most every task "
              "could gain at once by moving to the true front; 0 = Pareto-optimal), in accuracy units.", "",
              "| T | rule picks | method | evaluations | mean margin | max margin | mean accuracy | seconds |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for s in rows:
        lines.append(f"| {s['n_tasks']} | {s['rule']} | {s['method']} | {s['evaluations']} | {s['mean_margin']:.4f} | {s['max_margin']:.4f} | "
                     f"{s['mean_accuracy']:.4f} | {s['seconds']:.1f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer problems and task counts (a few minutes)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--skip-demo", action="store_true", help="skip the demo-zoo parts even when the zoo is built")
    ap.add_argument("--scaling-only", action="store_true", help="only the scaling table, T = 2..20 (scaling.md/json)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    started = time.perf_counter()
    if args.scaling_only:
        rows = scaling(quick=False)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
        text = markdown({"quick": False, "machine": f"{platform.machine()}, torch {torch.__version__}",
                         "seconds": time.perf_counter() - started, "scaling": rows}, scaling_only=True)
        (out / "scaling.md").write_text(text)
        print(text)
        return 0
    res = {"quick": args.quick, "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
           f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}"}
    print("front quality (analytic)", flush=True)
    res["quality"] = analytic_quality(args.quick)
    spec = None if args.skip_demo else demo_zoo_available()
    print("evaluation cost", flush=True)
    res["cost"] = [toy_cost(args.quick)]
    if spec:
        res["quality"] += demo_quality(spec, args.quick)
        res["cost"].append(demo_cost(spec, args.quick))
    else:
        res["demo_note"] = ("Demo zoo not built (cache/demo-zoo/manifest.json missing): its rows are skipped. Build it with "
                            "`merge-explorer demo` or `python -c 'from explorer.zoo import ensure_zoo; ensure_zoo()'`, then rerun.")
    print("surrogate cost", flush=True)
    res["surrogate"] = surrogate_cost(args.quick)
    print("scaling", flush=True)
    res["scaling"] = scaling(args.quick)
    ratios = [p["headline"]["ratio_vs_bruteforce"] for p in res["quality"]]
    ada = [p["headline"]["ratio_adaptive_vs_map"] for p in res["quality"]]
    res["headlines"] = {
        "ratio_vs_bruteforce": {p["problem"]: _f(p["headline"]["ratio_vs_bruteforce"], 3) for p in res["quality"]},
        "ratio_vs_bruteforce_median": float(np.median([r for r in ratios if r is not None])) if any(r is not None for r in ratios) else None,
        "ratio_adaptive_vs_map": {p["problem"]: _f(p["headline"]["ratio_adaptive_vs_map"], 3) for p in res["quality"]},
        "ratio_adaptive_vs_map_median": float(np.median([r if r is not None else np.inf for r in ada])) if ada else None,
        "adaptive_stopped": sum(p["headline"]["adaptive_stopped_evaluations"] for p in res["quality"]),
        "map_default": sum(p["headline"]["map_default_evaluations"] for p in res["quality"]),
        "throughput": "; ".join(f"{c['setup']}: {c['throughput_ratio']:.3f}" for c in res["cost"]),
    }
    res["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "benchmark-quick" if args.quick else "benchmark"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n")
    text = markdown(res)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
