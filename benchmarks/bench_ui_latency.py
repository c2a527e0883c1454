"""UI latency: what a slider move costs without re-running any evaluation (surrogate only).

One update = decide (weights, minimums -> front point) + building every figure of the app's views
(the 2-D front as the app draws it, a Vega-Lite spec, and as the report draws it, a Plotly figure;
3-D front, parallel coordinates, radar, landscape, surrogate quality) + serialising them to JSON
(what streamlit sends to the browser; the app itself builds only the open tab's). Measured on the toy experiment (T=3, a really
trained MLP; the demo spec when --demo is given and its store is filled) and on a synthetic T=8
exploration with an analytic evaluator. Target: < 200 ms for T=8.

    python benchmarks/bench_ui_latency.py [--repeats 20] [--demo]

Prints a table and writes benchmarks/results/ui_latency.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer import figures as F  # noqa: E402
from explorer.app_state import choose  # noqa: E402
from explorer.front_vega import front_2d_spec  # noqa: E402

TARGET_MS = 200.0


def synthetic_t8(seed: int = 0):
    """An 8-task exploration with logistic accuracies and pairwise interference (no model)."""
    from explorer import explore

    tasks = ["sun397", "cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
    rng = np.random.default_rng(seed)
    K = rng.uniform(0.2, 1.0, (8, 8))
    np.fill_diagonal(K, 0.0)
    base = rng.uniform(-1.5, 0.0, 8)

    def evaluate(c):
        z = base + 4.0 * c - 1.2 * c**2 - 0.6 * (K @ c) + 0.15 * np.sin(3 * c.sum())
        return {t: float(1 / (1 + np.exp(-z[i]))) for i, t in enumerate(tasks)}

    result = explore(evaluate, tasks, seed=seed)
    refs = [F.Marker("base", "base", np.zeros(8), _metrics(evaluate, np.zeros(8), tasks))]
    for i, t in enumerate(tasks):
        c = np.eye(8)[i]
        refs.append(F.Marker(f"expert: {t}", "expert", c, _metrics(evaluate, c, tasks)))
    c = np.full(8, 0.3)
    refs.append(F.Marker("task arithmetic (λ=0.30)", "task_arithmetic", c, _metrics(evaluate, c, tasks)))
    return "synthetic T=8", result, refs, (result.samples, result.observed)


def _metrics(evaluate, c, tasks):
    m = evaluate(c)
    return np.array([m[t] for t in tasks])


def from_spec(spec: Path, name: str):
    from explorer.app_state import ExperimentHandle
    from explorer.experiment.experiment import Experiment

    handle = ExperimentHandle(Experiment.from_file(spec))
    C, M, kinds, _ = handle.snapshot()
    result = handle.fit()
    refs, verified = handle.markers(C, M, kinds)
    return name, result, refs + verified, (C, M)


def toy():
    from explorer.experiment.experiment import Experiment
    from tests.toy_zoo import build

    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    spec = build(tmp)
    Experiment.from_file(spec).run(progress=False)
    return from_spec(spec, "toy T=3")


def one_update(result, refs, evaluated, weights, minimums, quality=None) -> tuple[float, float, float]:
    """(decide ms, figures ms, json ms) for one slider move.

    `quality`: the surrogate-quality figure built once per fit (it does not depend on the choice;
    the app caches it per fit the same way); None rebuilds it too.
    """
    tasks = result.tasks
    t0 = time.perf_counter()
    decision = choose(result, weights, minimums)
    t1 = time.perf_counter()
    chosen = F.Chosen(decision.coefficients, decision.predicted)
    figs = F.all_views(result, chosen, [minimums.get(t, np.nan) for t in tasks], [r for r in refs if r.kind != "verified"],
                       [r for r in refs if r.kind == "verified"], pair=(0, 1),
                       triple=(0, 1, 2) if len(tasks) >= 3 else None, landscape_task=0, landscape_axes=(0, 1),
                       evaluated=evaluated, quality=quality)
    spec = front_2d_spec(result, (0, 1), chosen, [r for r in refs if r.kind != "verified"],
                         [r for r in refs if r.kind == "verified"], evaluated=evaluated)
    t2 = time.perf_counter()
    for fig in figs.values():
        fig.to_json()
    json.dumps(spec)
    t3 = time.perf_counter()
    return 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2)


def measure(name, result, refs, evaluated, repeats: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tasks = result.tasks
    one_update(result, refs, evaluated, None, {})  # warm-up (imports, plotly validators)
    t = time.perf_counter()
    quality = F.surrogate_quality(result, [r for r in refs if r.kind == "verified"])
    quality_ms = 1e3 * (time.perf_counter() - t)
    rows, full = [], []
    for _ in range(repeats):
        weights = {t: float(w) for t, w in zip(tasks, rng.uniform(0.1, 10.0, len(tasks)))}
        k = int(rng.integers(len(tasks)))
        minimums = {tasks[k]: float(np.quantile(result.front_predicted[:, k], rng.uniform(0.0, 0.8)))}
        rows.append(one_update(result, refs, evaluated, weights, minimums, quality))
        full.append(sum(one_update(result, refs, evaluated, weights, minimums)))
    a = np.array(rows)
    total = a.sum(axis=1)
    return {"experiment": name, "tasks": len(tasks), "front_points": int(len(result.front_coefficients)),
            "repeats": repeats, "decide_ms_median": float(np.median(a[:, 0])),
            "figures_ms_median": float(np.median(a[:, 1])), "json_ms_median": float(np.median(a[:, 2])),
            "total_ms_median": float(np.median(total)), "total_ms_p95": float(np.quantile(total, 0.95)),
            "quality_figure_ms_once_per_fit": quality_ms,
            "all_figures_rebuilt_ms_median": float(np.median(full)),
            "under_target": bool(np.quantile(total, 0.95) < TARGET_MS)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--demo", action="store_true", help="also measure examples/demo.yaml (its store must be filled)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ui_latency.json"))
    args = parser.parse_args(argv)
    cases = [toy(), synthetic_t8()]
    if args.demo:
        cases.insert(1, from_spec(ROOT / "examples" / "demo.yaml", "demo"))
    results = [measure(*case, repeats=args.repeats) for case in cases]
    header = (f"{'experiment':<16}{'T':>3}{'front':>7}{'decide':>9}{'figures':>10}{'json':>8}{'total':>9}{'p95':>8}"
              f"{'no cache':>10}")
    print(header + "   (ms, median of %d slider moves)" % args.repeats)
    for r in results:
        print(f"{r['experiment']:<16}{r['tasks']:>3}{r['front_points']:>7}{r['decide_ms_median']:>9.1f}"
              f"{r['figures_ms_median']:>10.1f}{r['json_ms_median']:>8.1f}{r['total_ms_median']:>9.1f}{r['total_ms_p95']:>8.1f}"
              f"{r['all_figures_rebuilt_ms_median']:>10.1f}")
    print("no cache: the surrogate-quality figure rebuilt too (the app builds it once per fit)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target_ms": TARGET_MS, "machine": {"platform": platform.platform(),
                                                                    "python": platform.python_version(),
                                                                    "cpus": __import__("os").cpu_count()},
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["under_target"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
