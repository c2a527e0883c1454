"""`merge-explorer` command line: run, pick, export, verify (and demo, see zoo.py).

Errors are caught here, at the edge, and printed as one line with a non-zero exit status.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from explorer.core.polish import polish
from explorer.errors import ExplorerError, SpecError
from explorer.vouch import FAMILY_HELP, decision_at, decision_reason, plus_minus, surrogate_family

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def parse_assignments(text: str | None, option: str) -> dict[str, float] | None:
    """'a=2,b=1' -> {'a': 2.0, 'b': 1.0}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"{option}: expected task=value pairs separated by commas, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SpecError(f"{option}: value for task {name.strip()!r} is not a number: {value!r}") from None
    return out


def _check_tasks(values: dict | None, tasks: list[str], option: str) -> None:
    if values:
        import difflib

        for name in values:
            if name not in tasks:
                close = difflib.get_close_matches(name, tasks, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; tasks are {', '.join(tasks)}"
                raise SpecError(f"{option}: unknown task {name!r}{hint}")


def _fmt(v: float) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.4f}"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def summary(experiment, result) -> str:
    """Per task: base, expert, best plain task arithmetic, surrogate R²; then a few front points."""
    refs = result.extra.get("references", {})
    lam, ta_pred = result.best_task_arithmetic()
    ta = refs.get("task_arithmetic")
    ta_lam = refs.get("task_arithmetic_lambda", [lam])[0]
    rows = []
    for i, t in enumerate(result.tasks):
        rows.append([
            t, experiment.spec.tasks[t].metric,
            _fmt(refs["base"][i]) if "base" in refs else "—",
            _fmt(refs["experts"][i]) if "experts" in refs else "—",
            _fmt(ta[i]) if ta is not None else _fmt(ta_pred[i]),
            f"{result.surrogates[t].r2_cv_:.3f}",
            surrogate_family(result.surrogates[t]),
        ])
    n_trusted = int(np.sum(result.front_trusted))
    text = [f"experiment {experiment.spec.name!r}: {len(result.samples)} evaluated points, "
            f"{len(result.front_coefficients)} front points ({n_trusted} vouched for by the surrogates)",
            format_table(["task", "metric", "base", "expert", f"task arith. (λ={ta_lam:.2f})", "R² (LOO-CV)",
                          "surrogate"], rows),
            f"surrogate: {FAMILY_HELP}"]
    if experiment.examples_setting != "full":
        _, _, _, how = experiment.measured_examples()
        n, total = how["examples"], how["n_total"]
        sub = (n > 0) & (n < total)
        if np.any(sub):
            text.append(f"measured on subsamples: {int(n[sub].min()):,}–{int(n[sub].max()):,} examples per task and point "
                        f"(sets of {int(total[sub].min()):,}–{int(total[sub].max()):,}), base, experts and task arithmetic "
                        "included; the ± std includes their sampling noise and the part of it every point shares; `verify` "
                        "measures on every example")
    poor = [t for t in result.tasks if result.surrogates[t].r2_cv_ < 0.8]
    if poor:
        text.append(f"warning: surrogate fit is poor (R² < 0.8) for {', '.join(poor)}: trust the front less there")
    picks = [("balanced", None)] + [(f"favour {t}", {t: 4.0}) for t in result.tasks]
    front_rows, flags = [], []
    for label, w in picks[: 1 + min(len(result.tasks), 4)]:
        d = result.decide(weights=w)
        front_rows.append([label] + [f"{c:.3f}" for c in d.coefficients]
                          + [plus_minus(v, s) for v, s in zip(d.predicted, d.std)] + ["yes" if d.trusted else "NO"])
        reason = decision_reason(result, d)
        if reason:
            flags.append(f"{label}: {reason}")
    headers = (["front point"] + [f"c[{t}]" for t in result.tasks] + [f"pred {t} (± std)" for t in result.tasks]
               + ["vouched for"])
    text += ["", format_table(headers, front_rows), *flags]
    return "\n".join(text)


def _experiment(args, read_only: bool = False):
    from explorer.experiment.experiment import Experiment  # imports torch: loaded after the options are checked

    return Experiment.from_file(args.spec, store_path=args.store, device=getattr(args, "device", None),
                                trust_pickle=getattr(args, "trust_pickle", False), read_only=read_only)


def _reads_only(args) -> bool:
    """pick, and export of the coefficients alone, only read the store (no --polish): opened read-only."""
    if getattr(args, "polish", None) is not None:
        return False
    return args.command == "pick" or (args.command == "export" and (args.no_checkpoint or args.out is None))


def cmd_run(args) -> int:
    exp = _experiment(args)
    from explorer.experiment.executors import make_executor  # imports torch and ray: loaded when a run starts

    options = {"address": args.ray_address, "num_workers": args.workers, "cluster_timeout_s": args.ray_timeout} if getattr(args, "executor", None) == "ray" else {}
    executor = make_executor(getattr(args, "executor", None), **options)
    extra = {"tol": args.tol} if getattr(args, "adaptive", False) and args.tol is not None else {}
    for line in [*exp.check_examples(), *examples_plan(exp)]:  # before anything is measured
        print(line, file=sys.stderr)
    result = exp.run(budget=args.budget, progress=not args.no_progress, executor=executor,
                     adaptive=True if getattr(args, "adaptive", False) else None, **extra)
    print(summary(exp, result))
    return 0


def examples_plan(exp) -> list[str]:
    """One line per task saying how many of its examples points are measured on (subsampled runs)."""
    if exp.examples_setting == "full":
        return []
    from explorer.core.sampling import examples_for

    lines = []
    for t in exp.tasks:
        if exp.subsampled(t):
            n = exp.n_examples(t)
            design, front = examples_for(exp.examples_setting, n, "design"), examples_for(exp.examples_setting, n, "adaptive")
            more = f", points on the front {front:,}" if front != design else ""
            lines.append(f"task {t!r}: design points on {design:,} of {n:,} examples{more}; "
                         "picks, verify and polish on all of them")
    return lines


def _decide(args):
    """Options checked before the store is opened; commands that only read open it read-only."""
    weights = parse_assignments(args.weights, "--weights")
    minimums = parse_assignments(args.min, "--min")
    if getattr(args, "polish", None) is not None and args.polish < 1:
        raise SpecError(f"--polish: the budget must be at least 1 evaluation, got {args.polish}")
    exp = _experiment(args, read_only=_reads_only(args))
    _check_tasks(weights, exp.tasks, "--weights")
    _check_tasks(minimums, exp.tasks, "--min")
    result = exp.result()
    try:
        decision = result.decide(weights, minimums)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return exp, result, decision, weights, minimums


def _print_decision(exp, result, decision) -> None:
    if not decision.feasible:
        missed = [f"{t} (short by {s:.4f})" for t, s in zip(exp.tasks, decision.shortfall) if s > 0]
        print(f"infeasible: no front point meets every minimum; closest feasible point misses {', '.join(missed)}")
    std = decision.std if decision.std is not None else np.full(len(exp.tasks), np.nan)
    rows = [[t, f"{c:.4f}", plus_minus(v, s)] for t, c, v, s in zip(exp.tasks, decision.coefficients, decision.predicted, std)]
    print(format_table(["task", "coefficient", "predicted (± std)"], rows))
    reason = decision_reason(result, decision)
    if reason:
        print(f"warning: {reason}: verify it (merge-explorer verify) or polish it (--polish N)")


def _polish(exp, result, decision, weights, minimums, budget: int, progress: bool):
    """Polish the pick through the store (kind "polish": resumable, never fitted), print measured vs
    predicted; returns (the polished point's decision, its measured metrics, a summary for exports)."""
    if budget < 1:
        raise SpecError(f"--polish: the budget must be at least 1 evaluation, got {budget}")
    fresh = []

    def evaluate(c):
        fresh.append(len(exp.stored(c)) < len(exp.tasks))
        return dict(zip(exp.tasks, exp.evaluate(c, "polish")))

    print(f"polishing the pick with at most {budget} real evaluations (stored: rerun to resume)", flush=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc="polish", unit="eval", dynamic_ncols=True)

    def step(done, total):
        if bar is not None:
            bar.update(done - bar.n)

    try:
        try:
            polished = polish(result, evaluate, weights, minimums, budget, step)
        except ValueError as exc:
            raise SpecError(f"--polish: {exc}") from None
    finally:
        if bar is not None:
            bar.close()
    c, measured = polished.best
    at = decision_at(result, c, minimums)
    start_measured = polished.measured[0]
    rows = []
    for i, t in enumerate(exp.tasks):
        rows.append([t, f"{decision.coefficients[i]:.4f}", plus_minus(decision.predicted[i], _std(decision)[i]),
                     _fmt(start_measured[i]), f"{c[i]:.4f}", plus_minus(at.predicted[i], at.std[i]),
                     _fmt(measured[i]), f"{measured[i] - start_measured[i]:+.4f}"])
    print(format_table(["task", "c (pick)", "predicted (pick)", "measured (pick)", "c (polished)",
                        "predicted (polished)", "measured (polished)", "gain"], rows))
    n, new = len(polished.coefficients), int(sum(fresh))
    if polished.best_index == 0:
        print(f"polish: {n} evaluations ({new} new); no measured point beat the pick itself, which is kept")
    else:
        print(f"polish: {n} evaluations ({new} new); achievement (measured, lower is better) "
              f"{polished.scores[0]:.4f} -> {polished.scores[polished.best_index]:.4f}")
    floors = np.array([(minimums or {}).get(t, np.nan) for t in exp.tasks], dtype=float)
    miss = np.where(np.isfinite(floors), np.maximum((floors - measured) * exp.senses, 0.0), 0.0)
    at.feasible, at.shortfall = bool(np.all(miss <= 1e-12)), miss  # the polished point is judged as measured
    if not at.feasible:
        missed = [f"{t} (short by {s:.4f})" for t, s in zip(exp.tasks, miss) if s > 0]
        print(f"infeasible: the polished point, measured, misses {', '.join(missed)}")
    summary = {
        "budget": budget, "evaluations": n,
        "start": {"coefficients": {t: float(v) for t, v in zip(exp.tasks, decision.coefficients)},
                  "predicted": {t: float(v) for t, v in zip(exp.tasks, decision.predicted)},
                  "measured": {t: float(v) for t, v in zip(exp.tasks, start_measured)}},
        "achievement_start": float(polished.scores[0]),
        "achievement_polished": float(polished.scores[polished.best_index]),
        "how": "trust-region search around the surrogate pick, judged on measured values by the pick's "
               "achievement function; the best measured point is exported (never worse than the pick)",
    }
    return at, measured, summary


def _std(decision) -> np.ndarray:
    return decision.std if decision.std is not None else np.full(len(decision.coefficients), np.nan)


def cmd_pick(args) -> int:
    exp, result, decision, weights, minimums = _decide(args)
    _print_decision(exp, result, decision)
    if args.polish is not None:
        at, _, _ = _polish(exp, result, decision, weights, minimums, args.polish, not args.no_progress)
        return 0 if at.feasible else 1
    return 0 if decision.feasible else 1


def cmd_export(args) -> int:
    from explorer.export import export  # imports torch: loaded after the options are checked

    if args.out is None and args.html is None:
        raise SpecError("export: nothing to write: give --out DIR, --html FILE, or both")
    if args.html is not None and args.out is None and args.polish is not None:
        raise SpecError("--polish: needs --out DIR (the polished point is exported there)")
    exp, result, decision, weights, minimums = _decide(args)
    if args.html is not None:
        _write_html(args.html, exp, result, weights, minimums)
        if args.out is None:
            return 0
    _print_decision(exp, result, decision)
    polished = None
    if args.polish is not None:
        decision, _, polished = _polish(exp, result, decision, weights, minimums, args.polish, not args.no_progress)
    c = decision.coefficients
    if args.no_checkpoint and polished is None:  # the coefficients alone: read what the store has
        measured, test_split = exp.stored_metrics(c), exp.held_out(c)
    else:  # validation (stored as a check, never fitted) and the held-out test split where a task has one
        measured, test_split = exp.evaluate(c, kind="verify"), exp.held_out(c, measure=True)
    paths = export(exp, result, decision, args.out, weights, minimums, checkpoint=not args.no_checkpoint,
                   measured=measured, test_split=test_split, polish=polished)
    _print_export_metrics(paths["coefficients"])
    for p in paths.values():
        print(f"wrote {p}")
    return 0


def _write_html(path: str, exp, result, weights, minimums) -> None:
    """The offline explorer (explorer/html_explorer.py): one file, the sliders' choice made in the page."""
    from explorer.html_explorer import write_explorer_html  # imports plotly: only when a file is written

    written, data = write_explorer_html(path, exp, result, weights, minimums)
    for note in data["notes"]:
        print(f"note: {note}")
    print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MB, {len(data['front']['index'])} front points, "
          f"plotly.js embedded; opens offline in any browser)")


def _print_export_metrics(path: Path) -> None:
    """Measured (validation) and held-out test-split metrics of the exported point, as written."""
    import json

    doc = json.loads(Path(path).read_text())
    rows = []
    for t in doc["tasks"]:
        test = doc["test_split"]["metrics"].get(t)
        rows.append([t, plus_minus(doc["predicted"][t], doc["predicted_std"][t]), _fmt((doc["measured"] or {}).get(t)),
                     _fmt(test) if test is not None else doc["test_split"]["notes"].get(t, "—")])
    print(format_table(["task", "predicted (± std)", "measured (validation)", "test split (held out)"], rows))
    print(f"note: {doc['note']}")
    if doc.get("not_vouched_for"):
        print(f"warning: exported point {doc['not_vouched_for']}")


def cmd_verify(args) -> int:
    exp, _, decision, _, _ = _decide(args)
    measured = exp.evaluate(decision.coefficients, kind="verify")
    rows = [[t, f"{c:.4f}", plus_minus(p, s), _fmt(m), f"{m - p:+.4f}", "yes" if abs(m - p) <= 2 * s else "no"]
            for t, c, p, s, m in zip(exp.tasks, decision.coefficients, decision.predicted, _std(decision), measured)]
    print(format_table(["task", "coefficient", "predicted (± std)", "measured", "error", "within ±2 std"], rows))
    return 0


def cmd_demo(args) -> int:
    from explorer.demo.zoo import DEFAULT_DIRS, ensure_zoo  # imports torch and open_clip: only for the demo

    root = Path(__file__).resolve().parent.parent  # the specs' paths are relative to examples/, not to the cwd
    if args.kind == "llm":  # a tiny Llama and one expert per string skill (explorer/llm_zoo.py)
        from explorer.demo.llm_zoo import DEFAULT_DIR as LLM_DIR  # imports torch and transformers: only for this demo
        from explorer.demo.llm_zoo import ensure_llm_zoo

        ensure_llm_zoo(root / LLM_DIR, progress=not args.no_progress)
        args.spec = str(root / "examples" / "demo_llm.yaml") if args.spec is None else args.spec
        return cmd_run(args)
    if args.kind == "llm-lora":  # the same base and skills, one LoRA adapter per skill (explorer/demo/llm_lora_zoo.py)
        from explorer.demo.llm_lora_zoo import ensure_lora_experts  # imports torch, transformers and peft
        from explorer.demo.llm_zoo import DEFAULT_DIR as LLM_DIR
        from explorer.demo.llm_zoo import ensure_llm_zoo

        ensure_llm_zoo(root / LLM_DIR, progress=not args.no_progress)
        ensure_lora_experts(root / LLM_DIR, progress=not args.no_progress)
        args.spec = str(root / "examples" / "demo_llm_lora.yaml") if args.spec is None else args.spec
        return cmd_run(args)
    ensure_zoo(root / DEFAULT_DIRS[args.tasks], progress=not args.no_progress, n_tasks=args.tasks)
    name = "demo.yaml" if args.tasks == 4 else f"demo{args.tasks}.yaml"
    args.spec = str(root / "examples" / name) if args.spec is None else args.spec
    return cmd_run(args)


def cmd_compare(args) -> int:
    from explorer.experiment.compare import compare  # imports torch: loaded after the options are checked
    from explorer.experiment.executors import make_executor  # imports torch and ray

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    options = {"address": args.ray_address, "num_workers": args.workers, "cluster_timeout_s": args.ray_timeout} if args.executor == "ray" else {}
    cmp = compare(args.spec, methods, store_path=args.store, budget=args.budget, progress=not args.no_progress,
                  executor=make_executor(args.executor, **options), n_preferences=args.preferences,
                  device=args.device)
    print(comparison_table(cmp))
    return 0


def comparison_table(cmp) -> str:
    """Per method: evaluations, best equal-weight merge measured, the front's reach and fit per task;
    per preference: each method's measured pick (achievement, lower is better) and the best."""
    tasks, rows = cmp.tasks, []
    for run in cmp.runs:
        eq = run.best_equal
        rows.append([run.method, str(run.evaluations),
                     "—" if eq is None else f"{np.mean(eq[1]):.4f} (λ={eq[0]:.2f})",
                     *[_fmt(v) for v in run.reach()], f"{np.min(run.fit_r2()):.2f} / {np.mean(run.fit_r2()):.2f}"])
    text = [f"{len(cmp.runs)} methods, {len(tasks)} tasks, {cmp.evaluations} real evaluations in all "
            f"(the base measured once and shared; {len(cmp.weights)} picks measured per method)"]
    if "base" in cmp.references:
        text.append("base: " + ", ".join(f"{t} {_fmt(v)}" for t, v in zip(tasks, cmp.references["base"])))
    if "experts" in cmp.references:
        text.append("experts: " + ", ".join(f"{t} {_fmt(v)}" for t, v in zip(tasks, cmp.references["experts"])))
    text.append(format_table(["method", "evals", "best equal-weight (mean, measured)",
                              *[f"reach {t}" for t in tasks], "R² min / mean"], rows))
    pref_rows = []
    winners = cmp.winners()
    for i, w in enumerate(cmp.weights):
        label = "equal" if i == 0 else ",".join(f"{t}={x:.2f}" for t, x in zip(tasks, w))
        pref_rows.append([label, *[f"{cmp.scores[i, j]:.3f}" for j in range(len(cmp.runs))], winners[i]])
    text += ["", "measured picks per preference (achievement: 0 = every weighted task at the best any method "
             "measured; lower is better)",
             format_table(["preference", *[r.method for r in cmp.runs], "best"], pref_rows)]
    wins = {r.method: winners.count(r.method) for r in cmp.runs}
    text.append("best pick: " + ", ".join(f"{m} {n}/{len(winners)}" for m, n in wins.items()))
    return "\n".join(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="merge-explorer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, spec_required=True):
        if spec_required:
            p.add_argument("spec", help="experiment spec (YAML)")
        p.add_argument("--store", help="evaluation store (default: the spec's `store`, else cache/store.sqlite)")
        p.add_argument("--device", help="cpu, cuda, mps (default: the spec's `device`, auto)")
        p.add_argument("--trust-pickle", action="store_true",
                       help="load pickled whole-module checkpoints (runs their code: only for files you trust)")

    def run_options(p):
        p.add_argument("--adaptive", action="store_true",
                       help="smaller design, then rounds of points on the predicted front (the default from 4 tasks on; budget = most evaluations)")
        p.add_argument("--tol", type=float, help="--adaptive: stop when a round's held-out RMS error is below this (default 0.005)")
        p.add_argument("--executor", choices=["inprocess", "ray"], default="inprocess",
                       help="where evaluations run: this process (default) or a Ray cluster (pip install 'merge-explorer[ray]')")
        p.add_argument("--workers", type=int, help="--executor ray: number of workers (default one per GPU, else per CPU)")
        p.add_argument("--ray-address", help="--executor ray: cluster address (default: local Ray)")
        p.add_argument("--ray-timeout", type=float, default=60.0,
                       help="--executor ray: seconds to wait for a head node that stops answering, or for a worker "
                            "the cluster has no room to start, before stopping with what is stored (default 60)")

    def prefs(p):
        p.add_argument("--weights", help="importance per task, e.g. a=2,b=1")
        p.add_argument("--min", help="per-task bound on the predicted metric, e.g. b=0.80 (a ceiling for losses)")

    p = sub.add_parser("run", help="evaluate the design (resumable), fit surrogates, print the front")
    common(p)
    p.add_argument("--budget", type=int, help="number of design points (default 2·(T+1)(T+2)/2)")
    p.add_argument("--no-progress", action="store_true")
    run_options(p)
    p.set_defaults(func=cmd_run)

    def polish_options(p):
        p.add_argument("--polish", type=int, metavar="N",
                       help="improve the pick with at most N real evaluations (stored, resumable) and use the best measured point")
        p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("pick", help="choose a front point from preferences")
    common(p)
    prefs(p)
    polish_options(p)
    p.set_defaults(func=cmd_pick)

    p = sub.add_parser("export", help="write coefficients.json (with measured and test-split metrics), mergekit.yaml, "
                                      "merged.safetensors; --html FILE: the explorer as one offline HTML file")
    common(p)
    prefs(p)
    polish_options(p)
    p.add_argument("--out", help="output directory (coefficients.json, mergekit.yaml, the merged checkpoint)")
    p.add_argument("--html", metavar="FILE",
                   help="also (or only) write the explorer as one offline HTML file: sliders, front, chosen merge; "
                        "opens in any browser with no server or network (--weights/--min set its starting choice)")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="skip the merged checkpoint (merged.safetensors or merged/) and mergekit-inputs/ (the "
                        "preprocessed experts an exact TIES/DARE mergekit.yaml needs: without them it is not exact)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="run MAP for several merge methods on the same store and compare their fronts")
    common(p)
    p.add_argument("--methods", required=True,
                   help="comma-separated merge methods, e.g. task_arithmetic,ties,tsv,cart,consensus")
    p.add_argument("--budget", type=int, help="evaluations per method (default 2·(T+1)(T+2)/2)")
    p.add_argument("--preferences", type=int, default=10, help="preferences whose picks are measured per method (default 10)")
    p.add_argument("--no-progress", action="store_true")
    run_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("verify", help="evaluate the real merged model at the chosen point and store it")
    common(p)
    prefs(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="build the offline demo zoo if missing, then run its spec")
    common(p, spec_required=False)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tasks", type=int, choices=[4, 8], default=4,
                   help="4: cache/demo-zoo + examples/demo.yaml (default); 8: cache/demo-zoo-8 + examples/demo8.yaml")
    p.add_argument("--kind", choices=["clip", "llm", "llm-lora"], default="clip",
                   help="clip: the CLIP zoo (default); llm: cache/llm-zoo (tiny Llama, 4 skills) + examples/demo_llm.yaml; "
                        "llm-lora: the same base with one LoRA adapter per skill (cache/llm-zoo/lora) + "
                        "examples/demo_llm_lora.yaml")
    p.add_argument("--budget", type=int)
    p.add_argument("--no-progress", action="store_true")
    run_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ExplorerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished evaluations are stored; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
