"""Cost of the engine: evaluation throughput vs plain inference, merge time, surrogate fit and front time.

    python benchmarks/bench_cost.py [--quick]     # writes benchmarks/results/cost.{md,json}

Throughput: merge + evaluate + store for fresh points against evaluating one fixed model on the
same data in the same process (toy MLP zoo, and the 4-task demo zoo when built). Surrogate cost:
MAP's quadratic per task (leave-one-out included) and the front, on 2P samples of an analytic
landscape.
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
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.core.design import default_budget  # noqa: E402
from explorer.core.pareto import compute_front  # noqa: E402
from explorer.core.surrogate import QuadraticSurrogate  # noqa: E402
from explorer.demo.landscapes import make_landscape  # noqa: E402


def evaluation_cost(spec: Path, label: str, n_points: int, images_per_point) -> dict:
    """Engine throughput (merge + evaluate + store, fresh points) vs plain inference of one fixed model."""
    from explorer.experiment.experiment import Experiment

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
    from explorer.experiment.experiment import Experiment
    from explorer.suites import clip as clip_suite

    exp = Experiment.from_file(spec, store_path=Path(tempfile.mkdtemp()) / "s.sqlite")
    images = 0
    for t in exp.tasks:
        params = dict(exp.spec.tasks[t].params)
        data = clip_suite.eval_data(exp.engine.model, dataset=params["dataset"], split=params.get("split", "validation"),
                                    subsample=params.get("subsample"), seed=params.get("seed", 0), spec_dir=str(exp.spec_dir),
                                    device=exp.engine.device)
        images += len(data.labels)
    return evaluation_cost(spec, "demo zoo (tiny open_clip, 4 tasks)", 3 if quick else 8, images)


# ----------------------------------------------------------------------------- surrogate and front cost
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


def demo_spec() -> Path | None:
    spec, manifest = ROOT / "examples" / "demo.yaml", ROOT / "cache" / "demo-zoo" / "manifest.json"
    return spec if spec.is_file() and manifest.is_file() else None


def markdown(res: dict) -> str:
    lines = ["# Engine cost", "", f"Machine: {res['machine']}. Produced by `python benchmarks/bench_cost.py`.", "",
             "## Evaluation cost", "",
             "| setup | images/point | engine img/s | plain img/s | engine/plain | merge ms | read τ ms | τ MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res["cost"]:
        lines.append(f"| {c['setup']} | {c['images_per_point']} | {c['engine_images_per_s']:.0f} | {c['plain_images_per_s']:.0f} | "
                     f"{c['throughput_ratio']:.3f} | {c['merge_ms']:.3f} | {c['read_task_vectors_ms']:.3f} | {c['task_vector_mb']:.2f} |")
    lines += ["", "## Surrogate and front cost (2P samples, analytic landscape)", "",
              "| T | samples | fit ms/task (incl. LOO-CV) | front s |", "|---:|---:|---:|---:|"]
    for s in res["surrogate"]:
        lines.append(f"| {s['n_tasks']} | {s['samples']} | {s['fit_ms_per_task']:.1f} | {s['front_s']:.2f} |")
    if res.get("note"):
        lines += ["", f"> {res['note']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    res = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
           f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}"}
    res["cost"] = [toy_cost(args.quick)]
    spec = demo_spec()
    if spec:
        res["cost"].append(demo_cost(spec, args.quick))
    else:
        res["note"] = "Demo zoo not built (cache/demo-zoo/manifest.json missing): build it with `merge-explorer demo`."
    res["surrogate"] = surrogate_cost(args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    (out / "cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
