"""The same front from a fraction of the examples: subsampled evaluation against full-set MAP and TPE.

    python -m benchmarks.subsample                 # both 8-task testbeds (hidden, deep): minutes
    python -m benchmarks.subsample --zoo           # also the 8-task demo zoo (real CLIP evaluations)
    python -m benchmarks.subsample --quick         # the hidden testbed only, fewer settings
    python -m benchmarks.subsample --small --zoo   # the 300-image testbeds and the zoo, full and auto
                                                   # (to subsample_small.{json,md})
    python -m benchmarks.subsample --untuned       # the two testbeds no constant was tuned on, apart
    python -m benchmarks.subsample --large         # the same two on 9,200 images per task, apart
    python -m benchmarks.subsample --llm-only      # the LLM demo (4 skills, exact match), added to the table

The unit of cost is examples evaluated (one image or prompt through a merged model), not points.
Every arm runs the shipped loop (`explorer.experiment.loop.run_adaptive`, the default design at 8
tasks, 2P = 90 points) with `evaluation.examples` set to full, auto or a count; on the testbeds the
loop drives `TestbedRun`, the experiment interface over a testbed's per-example scores (the same
policy, `explorer.core.sampling.examples_for`, decides how many examples each point gets); on the
zoo it drives a real `Experiment` and its store, one per arm, emptied first (`--resume` keeps it: a
finished arm's stored picks and audit points would anchor a subsampled rerun). Then, counted in the cost:
- the 10 preferences' picks, measured on the full sets (their margin and coverage are judged there);
Not counted (an audit, as in the README's fidelity tables): 40 shown-front points measured on the
full sets for fidelity (median |predicted − measured|, worst task's median, ±2 std coverage).

Rivals at equal examples: (b) full-set MAP given as many points as the subsampled arm's examples buy
(MAP needs at least (T+1)(T+2)/2 = 45 at 8 tasks: when fewer are bought, it runs at 45 and its row
says so), (c) optuna's TPE on the same subsample (every trial on the auto design's count), its pick
per preference the best measured trial by the achievement function, measured on the full set.
On the demos both rivals run through real `Experiment`s as ours do (`demo_tpe_arm`).
Testbeds judge picks by their real margin (how much every task could gain at once, dense real
search: 0 = on the front); the zoo, without a truth, by the achievement on measured values.
Writes benchmarks/results/subsample.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.preferences import preferences  # noqa: E402
from benchmarks.rivals import pick_measured  # noqa: E402
from explorer.core.decision import achievement  # noqa: E402
from explorer.core.design import coefficient_key, default_budget, n_quadratic_terms  # noqa: E402
from explorer.core.pareto import thin  # noqa: E402
from explorer.core.result import fit_result  # noqa: E402
from explorer.core.sampling import corrected_means, example_order, examples_for, shared_variance  # noqa: E402
from explorer.core.surrogate import front_scale  # noqa: E402
from explorer.demo.testbeds import UNTUNED_KINDS, make_testbed  # noqa: E402
from explorer.experiment.loop import run_adaptive  # noqa: E402
from explorer.experiment.store import FIT_KINDS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FIDELITY_POINTS = 40


class TestbedRun:
    """The experiment interface `run_adaptive` drives (evaluate, complete, measured_examples, finish),
    over a testbed's per-example scores held in memory. Counts every example it scores."""

    def __init__(self, tb, examples, budget: int | None = None, seed: int = 0, split: str = "validation"):
        self.tb, self.tasks, self.split = tb, list(tb.tasks), split
        t = len(self.tasks)
        self.bounds, self.senses = np.tile([0.0, 1.0], (t, 1)), np.ones(t)
        self.spec = SimpleNamespace(budget=budget, seed=seed)
        self.examples_setting = examples
        self.n_total = tb.values(np.zeros((1, t)), split=split, per_example=True).shape[-1]
        self.orders = [example_order(self.n_total, f"testbed:{task}") for task in self.tasks]
        self.points: dict[str, dict] = {}
        self.told: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # coefficient key -> (mean, std) told
        self.examples = 0

    def check_examples(self) -> list[str]:
        return []

    def complete(self, c, kind: str = "design") -> bool:
        p = self.points.get(coefficient_key(c))
        return p is not None and p["n"] >= examples_for(self.examples_setting, self.n_total, kind)

    def evaluate(self, c, kind: str = "design") -> np.ndarray:
        c = np.asarray(c, dtype=float)
        p = self.points.setdefault(coefficient_key(c), {"c": c, "kind": kind, "n": 0, "scores": None})
        need = examples_for(self.examples_setting, self.n_total, kind)
        if p["n"] < need:
            p["scores"] = self.tb.values(c[None], split=self.split, per_example=True)[0].astype(float)  # (T, images)
            self.examples += (need - p["n"]) * len(self.tasks)
            p["n"] = need
        return np.array([p["scores"][i, self.orders[i][:p["n"]]].mean() for i in range(len(self.tasks))])

    def measured_examples(self, kinds=None):
        every = sorted(self.points.values(), key=lambda p: coefficient_key(p["c"]))
        M, noise = np.zeros((len(every), len(self.tasks))), np.zeros((len(every), len(self.tasks)))
        level = np.zeros(len(self.tasks))
        for i in range(len(self.tasks)):  # the engine's correction of the shared error (core.sampling)
            scores = [p["scores"][i, self.orders[i][:p["n"]]] for p in every]
            M[:, i], noise[:, i] = corrected_means(scores, self.n_total)
            level[i] = shared_variance(scores, self.n_total)
        keep = np.array([kinds is None or p["kind"] in kinds for p in every], dtype=bool)
        rows = [p for p, k in zip(every, keep) if k]
        M, noise = M[keep], noise[keep]
        C = np.array([p["c"] for p in rows])
        counts = np.array([[p["n"]] * len(self.tasks) for p in rows])
        return C, M, [p["kind"] for p in rows], {"examples": counts, "n_total": counts * 0 + self.n_total,
                                                  "noise_variance": noise, "shared_variance": level}

    def tell(self, C, mean, std) -> None:
        for c, m, sd in zip(C, mean, std):
            self.told.setdefault(coefficient_key(c), (np.asarray(m, dtype=float), np.asarray(sd, dtype=float)))

    def reference_points(self):
        t = len(self.tasks)
        return [np.zeros(t)] + [np.eye(t)[i] for i in range(t)]

    def result(self):
        C, M, kinds, how = self.measured_examples(FIT_KINDS)
        missing = (np.full(len(self.tasks), np.nan),) * 2
        told = np.array([self.told.get(coefficient_key(c), missing) if k == "adaptive" else missing
                         for c, k in zip(C, kinds)])  # (n, 2, T)
        scale = front_scale(M, told[:, 0], told[:, 1], how["noise_variance"])
        noise = how["noise_variance"] if np.any(how["noise_variance"] > 0) else None
        return fit_result(self.tasks, C, M, self.bounds, True, self.spec.seed, front_points=1000,
                          front_samples=np.array([k == "adaptive" for k in kinds]), noise_variance=noise,
                          shared_variance=None if noise is None else how["shared_variance"], front_scale=scale)

    def finish(self):
        result = self.result()
        lam, _ = result.best_task_arithmetic()
        self.evaluate(np.full(len(self.tasks), lam), "reference")
        return result


def judge_front(result, measure, rows=None) -> dict:
    """Fidelity along the shown (vouched-for) front: FIDELITY_POINTS points measured on the full sets."""
    if rows is None:
        rows = np.flatnonzero(result.front_trusted) if np.any(result.front_trusted) else np.arange(len(result.front_predicted))
    pick = rows[thin(result.front_predicted[rows], min(FIDELITY_POINTS, len(rows)), 0)]
    measured = measure(result.front_coefficients[pick])
    err = np.abs(result.front_predicted[pick] - measured) * 100
    inside = np.abs(result.front_predicted[pick] - measured) <= 2 * result.front_std[pick] + 1e-12
    return {"median": float(np.median(err)), "worst_task": float(np.max(np.median(err, axis=0))),
            "coverage": float(np.mean(inside))}


def judge_picks(result, prefs, measure) -> dict:
    decisions = [result.decide(w) for w in prefs]
    C = np.array([d.coefficients for d in decisions])
    pred, std = np.array([d.predicted for d in decisions]), np.array([d.std for d in decisions])
    V = measure(C)
    inside = np.abs(pred - V) <= 2 * std + 1e-12
    return {"C": C, "V": V, "pick_coverage": float(np.mean(inside)),
            "pick_error": float(np.median(np.abs(pred - V)) * 100)}


def run_arm(tb, setting, budget, prefs, split: str, measure, truth: bool) -> dict:
    """One run of ours on a testbed: points, examples spent (the run's and the picks' full-set
    verifications), the picks' real margin (with a dense truth) and coverage, the shown front's fidelity."""
    t = tb.n_tasks
    run = TestbedRun(tb, setting, budget, split=split)
    start = time.perf_counter()
    result = run_adaptive(run, budget, progress=False)
    points = len(run.points)
    picks = judge_picks(result, prefs, lambda C: np.array([run.evaluate(c, "verify") for c in C]))
    spent = run.examples  # the run's and the picks' (measured on the full sets, through the run)
    before = judge_front(result, measure)
    result = run.result()  # the front after the picks' full-set scores corrected the subsamples' level
    margin = tb.real_margin(picks["C"]) * 100 if truth else np.full(len(prefs), np.nan)
    return {"setting": str(setting), "points": points, "examples": int(spent),
            "share": spent / ((default_budget(t) + len(prefs)) * run.n_total * t),
            "margin_mean": float(margin.mean()), "margin_max": float(margin.max()),
            "pick_coverage": picks["pick_coverage"], "pick_error": picks["pick_error"], "V": picks["V"].tolist(),
            **judge_front(result, measure), "before_picks": before,
            "families": "".join(getattr(s, "family_", "?")[0] for s in result.surrogates.values()),
            "front_scale": [float(getattr(s, "front_scale_", 1.0)) for s in result.surrogates.values()],
            "seconds": round(time.perf_counter() - start, 1)}


def testbed_arms(kind: str, settings, log, split: str = "validation", done: dict | None = None, save=None,
                 equal_map: bool = True) -> dict:
    """One testbed: its validation split (300 images per task; picks judged by their real margin) or the
    "augmented" split (3,000 per task) or, on the Fashion-MNIST testbeds, the "large" one (9,200 distinct
    images per task); without a dense truth there, picks are judged by the achievement on
    measured values, one scale for every arm, as on the zoo."""
    tb = make_testbed(kind, 8)
    t = tb.n_tasks
    prefs = preferences(t)
    n_total = tb.values(np.zeros((1, t)), split=split, per_example=True).shape[-1]
    full_point = n_total * t
    name = f"testbed {kind} T = 8" + ("" if split == "validation" else f", {split} ({n_total:,} images per task)")
    out = done or {"problem": name, "examples_per_task": n_total, "arms": {}}
    truth = split == "validation"

    def measure(C):
        return tb.values(np.atleast_2d(C), split=split)

    def ours(setting, budget=None, label=None):
        label = label or f"ours, examples: {setting}"
        if label in out["arms"]:  # measured by an interrupted run
            return out["arms"][label]
        arm = out["arms"][label] = run_arm(tb, setting, budget, prefs, split, measure, truth)
        log(f"{name} {label}: { {k: v for k, v in arm.items() if k != 'V'} }")
        if save:
            save(out)
        return arm

    full = ours("full")
    for setting in settings:
        if isinstance(setting, tuple):  # (examples, points): another split of the same examples
            arm = ours(setting[0], setting[1], label=f"ours, examples: {setting[0]}, {setting[1]} points")
            continue
        arm = ours(setting)
        if setting == "auto":
            # (b) full-set MAP at equal examples: as many full points as the subsampled run's examples buy
            points = int(arm["examples"] // full_point) - len(prefs)
            budget = max(points, n_quadratic_terms(t))
            if equal_map:
                b = ours("full", budget=budget, label=f"full-set MAP at equal examples ({budget} points"
                                                      f"{'' if budget == points else f'; {points} would not fit a quadratic'})")
                b["bought_points"] = points
            # (c) TPE on the same subsample, same examples
            if "TPE, same subsample, equal examples" not in out["arms"]:
                out["arms"]["TPE, same subsample, equal examples"] = tpe_arm(tb, arm["examples"], prefs, measure,
                                                                             n_total, log, split, truth)
                if save:
                    save(out)
    out["full_examples"] = full["examples"]
    if not truth:
        score_by_achievement(out, prefs)
    if save:
        save(out)
    # the report leaves out the picks' values; the partial file keeps them, so a rerun that adds an arm
    # scores every arm again on one scale
    return {**out, "arms": {k: {f: v for f, v in arm.items() if f != "V"} for k, arm in out["arms"].items()}}


def score_by_achievement(out: dict, prefs) -> None:
    """Each arm's mean achievement of its measured picks, on one scale for every arm (lower is better)."""
    allv = np.vstack([np.asarray(a["V"]) for a in out["arms"].values()])
    for arm in out["arms"].values():
        arm["achievement"] = float(np.mean([achievement(np.asarray(arm["V"])[i][None], w, allv)[0]
                                            for i, w in enumerate(prefs)]))


def tpe_picks(measure, lo, hi, trials: int, prefs) -> np.ndarray:
    """(c)'s search, shared by the testbeds and the demos: optuna's TPE (seed 0) maximising every task's
    value `measure(c)` over `trials` trials in the box [lo, hi]; per preference, the best measured trial
    by the achievement function on those values (picks, (len(prefs), T))."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = len(lo)
    study = optuna.create_study(directions=["maximize"] * t, sampler=optuna.samplers.TPESampler(seed=0))
    C, V = [], []

    def objective(trial):
        c = np.array([trial.suggest_float(f"c{i}", float(lo[i]), float(hi[i])) for i in range(t)])
        v = [float(x) for x in measure(c)]
        C.append(c)
        V.append(v)
        return v

    study.optimize(objective, n_trials=trials)
    C, V = np.array(C), np.array(V)
    return np.array([C[pick_measured(V, w, V)] for w in prefs])


def tpe_arm(tb, examples: int, prefs, measure, n_total: int, log, split: str = "validation", truth: bool = True) -> dict:
    t = tb.n_tasks
    n = examples_for("auto", n_total, "design")
    orders = [example_order(n_total, f"testbed:{task}") for task in tb.tasks]
    trials = max(1, int((examples - len(prefs) * n_total * t) // (n * t)))

    def on_subsample(c):
        scores = tb.values(c[None], split=split, per_example=True)[0]
        return [scores[i, orders[i][:n]].mean() for i in range(t)]

    start = time.perf_counter()
    picks = tpe_picks(on_subsample, np.zeros(t), np.ones(t), trials, prefs)
    margin = tb.real_margin(picks) * 100 if truth else np.full(len(prefs), np.nan)
    arm = {"setting": f"TPE, {n} examples per trial", "points": trials, "examples": int(trials * n * t + len(prefs) * n_total * t),
           "margin_mean": float(margin.mean()), "margin_max": float(margin.max()), "V": measure(picks).tolist(),
           "seconds": round(time.perf_counter() - start, 1)}
    log(f"TPE: { {k: v for k, v in arm.items() if k != 'V'} }")
    return arm


def demo_tpe_arm(exp, examples: int, prefs, log) -> dict:
    """(c) on a demo: `tpe_picks` through a real Experiment set to `examples: auto`, every trial measured
    as a design point (the auto design's prefix of each task), as many trials as `examples` buy once the
    picks are paid for; the picks are then measured on the full sets."""
    if np.any(exp.senses < 0):
        raise SystemExit("the TPE rival assumes every metric is maximised")
    full_point = sum(exp.n_examples(task) for task in exp.tasks)
    per_trial = sum(examples_for("auto", exp.n_examples(task), "design") for task in exp.tasks)
    trials = max(1, int((examples - len(prefs) * full_point) // per_trial))
    start = time.perf_counter()
    picks = tpe_picks(lambda c: exp.evaluate(c, "design"), exp.bounds[:, 0], exp.bounds[:, 1], trials, prefs)
    measured = np.array([exp.evaluate(c, "verify") for c in picks])
    arm = {"setting": "TPE, auto's design examples per trial", "points": trials,
           "examples": int(trials * per_trial + len(prefs) * full_point), "V": measured.tolist(),
           "seconds": round(time.perf_counter() - start, 1)}
    log(f"TPE: { {k: v for k, v in arm.items() if k != 'V'} }")
    exp.release()
    return arm


def zoo_arms(spec: Path, store: Path, settings, log, name: str = "8-task demo zoo", resume: bool = False) -> dict:
    """A demo (the 8-task zoo, the LLM demo) through real `Experiment`s (the shipped path), one store per arm.

    Each arm starts from an empty store unless `resume`: a finished arm's store holds its picks and
    audit points, measured on the full sets, and a subsampled run uses every such point as an anchor
    for its subsamples (`Experiment.measured_examples`), so rerunning over it is not the same run.
    """
    import yaml

    from explorer.experiment.experiment import Experiment

    doc = yaml.safe_load(spec.read_text())
    out = {"problem": name, "arms": {}}

    def absolute(params: dict) -> dict:  # data files named relative to the demo's spec
        return {k: str((spec.parent / v).resolve()) if isinstance(v, str) and (spec.parent / v).is_file() else v
                for k, v in params.items()}

    prefs = preferences(len(doc["tasks"]))

    def experiment(setting, budget=None, tag=None):
        """A fresh (unless `resume`) Experiment of the demo with `evaluation.examples: setting`."""
        tag = tag or str(setting)
        path = store.parent / f"{spec.stem}-subsample-{tag}.yaml"
        d = dict(doc)
        d["evaluation"] = {"examples": setting}
        if budget is not None:
            d["budget"] = int(budget)
        # one store per arm: the evaluation setting is not part of the experiment's key (values on the
        # full set are the same whatever the setting), so a shared store would serve one arm the other's
        d["store"] = str(store.parent / (f"subsample-{tag}.sqlite" if spec.stem == "demo8" else
                                         f"{spec.stem}-subsample-{tag}.sqlite"))
        d["model"] = {**doc["model"], **{k: str((spec.parent / v).resolve()) for k, v in doc["model"].items()
                                         if k in ("base", "config_dir")}}
        d["tasks"] = {t: {**ts, "checkpoint": str((spec.parent / ts["checkpoint"]).resolve()),
                          "params": absolute(ts.get("params") or {})} for t, ts in doc["tasks"].items()}
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        if not resume:
            for old in Path(d["store"]).parent.glob(Path(d["store"]).name + "*"):  # the file, its -wal and -shm
                old.unlink()
        return Experiment.from_file(path)

    def ours(setting, budget=None, label=None, tag=None):
        exp = experiment(setting, budget, tag)
        start = time.perf_counter()
        result = exp.run(budget=budget, progress=False)
        n = {t: exp.n_examples(t) for t in exp.tasks}
        full_point = sum(n.values())
        C, _, kinds, how = exp.measured_examples()
        run = [i for i, k in enumerate(kinds) if k in ("design", "adaptive", "reference")]  # not verified points
        run_examples = int(sum(how["examples"][i, j] if how["examples"][i, j] else n[t]
                               for i in run for j, t in enumerate(exp.tasks)))

        def measure(X):
            return np.array([exp.evaluate(c, "verify") for c in np.atleast_2d(X)])

        picks = judge_picks(result, prefs, measure)
        # first the front after the picks' full-set scores corrected the subsamples (what a user sees
        # once the picks are verified), then the front before: audit points are stored as verified
        # points, and would otherwise correct the front they judge
        fid = judge_front(exp.result(), measure)
        before = judge_front(result, measure)
        spent = run_examples + len(prefs) * full_point  # the picks are measured on the full sets
        arm = {"setting": str(setting), "points": len(run), "examples": spent,
               "share": None, **{k: picks[k] for k in ("pick_coverage", "pick_error")}, **fid,
               "before_picks": before, "seconds": round(time.perf_counter() - start, 1), "V": picks["V"].tolist()}
        out["arms"][label or f"ours, examples: {setting}"] = arm
        log(f"{name} {label or setting}: { {k: v for k, v in arm.items() if k != 'V'} }")
        exp.release()
        return arm, full_point

    _, full_point = ours("full")
    for setting in settings:
        arm, _ = ours(setting)
        if setting != "auto":
            continue
        # (b) full-set MAP at equal examples: as many full points as the subsampled run's examples buy
        points = int(arm["examples"] // full_point) - len(prefs)
        budget = max(points, n_quadratic_terms(len(doc["tasks"])))
        b, _ = ours("full", budget, tag="full-equal",
                    label=f"full-set MAP at equal examples ({budget} points"
                          f"{'' if budget == points else f'; {points} would not fit a quadratic'})")
        b["bought_points"] = points
        # (c) TPE on the same subsample (the auto design's examples per trial), same examples
        out["arms"]["TPE, same subsample, equal examples"] = demo_tpe_arm(experiment("auto", tag="tpe"), arm["examples"],
                                                                          prefs, log)
    allv = np.vstack([np.asarray(a["V"]) for a in out["arms"].values()])
    full = out["arms"]["ours, examples: full"]
    for name, arm in out["arms"].items():
        arm["share"] = arm["examples"] / full["examples"]
        arm["achievement"] = float(np.mean([achievement(np.asarray(arm["V"])[i][None], w, allv)[0]
                                            for i, w in enumerate(prefs)]))
    return out


def markdown(problems: list[dict]) -> str:
    lines = ["| problem | arm | points | examples (share of full) | picks: mean / max real margin (pts) | "
             "picks: ±2 std coverage | shown front: median / worst task \\|pred − meas\\| (pts), coverage |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in problems:
        full = p["arms"]["ours, examples: full"]["examples"]
        for name, a in p["arms"].items():
            margin = (f"{a['margin_mean']:.2f} / {a['margin_max']:.2f}" if np.isfinite(a.get("margin_mean", np.nan))
                      else f"achievement {a['achievement']:.3f}" if "achievement" in a else "—")
            cov = f"{a['pick_coverage']:.0%}" if "pick_coverage" in a else "—"
            fid = f"{a['median']:.2f} / {a['worst_task']:.2f}, {a['coverage']:.0%}" if "median" in a else "—"
            b = a.get("before_picks")
            if b and a["setting"] != "full":
                fid += f" (before the picks: {b['median']:.2f} / {b['worst_task']:.2f}, {b['coverage']:.0%})"
            lines.append(f"| {p['problem']} | {name} | {a['points']} | {a['examples']:,} ({a['examples'] / full:.2f}) | "
                         f"{margin} | {cov} | {fid} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", action="store_true", help="also the 8-task demo zoo (real CLIP evaluations)")
    ap.add_argument("--zoo-only", action="store_true", help="only the zoo; keep the testbeds' rows of the last run")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--small", action="store_true",
                    help="only the 300-image testbeds (deep, hidden; full and auto) and, with --zoo, the zoo: minutes")
    ap.add_argument("--llm-only", action="store_true",
                    help="only the LLM demo (examples/demo_llm.yaml); keep the other rows of the last run")
    ap.add_argument("--untuned", action="store_true",
                    help="only the testbeds no constant was tuned on (explorer.demo.testbeds.UNTUNED_KINDS), "
                         "reported apart: results/subsample_untuned.{md,json}")
    ap.add_argument("--large", action="store_true",
                    help="only the untuned testbeds on Fashion-MNIST's 'large' split (9,200 images per task), "
                         "reported apart: results/subsample_large.{md,json}")
    ap.add_argument("--resume", action="store_true",
                    help="the demos' arms continue from their stores (an interrupted run) instead of starting empty")
    ap.add_argument("--out", default=str(RESULTS / "subsample"))
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="only write the report of these runs' results together")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.small and out == RESULTS / "subsample":  # a part of the table: never over the whole one
        out = RESULTS / "subsample_small"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.combine:
        problems = [p for f in args.combine for p in json.loads(Path(f).read_text())]
        out.with_suffix(".json").write_text(json.dumps(problems, indent=1))
        out.with_suffix(".md").write_text(markdown(problems) + "\n")
        print(markdown(problems))
        return 0

    def log(msg):
        print(msg, flush=True)

    problems = []
    if args.untuned or args.large:
        out = out.with_name(out.name + ("_large" if args.large else "_untuned"))
        partial = out.with_suffix(".partial.json")
        saved = json.loads(partial.read_text()) if partial.exists() else []

        def save_untuned(problem):
            saved[:] = [p for p in saved if p["problem"] != problem["problem"]] + [problem]
            partial.write_text(json.dumps(saved, indent=1))

        # on 9,200 images auto measures 1,101 per design point: fixed counts below it show where it breaks
        # (500, 180): twice the points on half the examples, at the cost of the 1,000-example arm
        split, settings, equal = (("large", ["auto", 1000, 500, (500, 180)], True) if args.large
                                  else ("validation", ["auto"], False))
        for kind in UNTUNED_KINDS:
            label = f"testbed {kind} T = 8" + ("" if split == "validation" else f", {split}")
            done = next((p for p in saved if p["problem"] == label or p["problem"].startswith(label + " (")), None)
            problems.append(testbed_arms(kind, settings, log, split, done, save_untuned, equal))
    elif args.llm_only:
        problems = [p for p in json.loads(out.with_suffix(".json").read_text()) if p["problem"] != "LLM demo"] \
            if out.with_suffix(".json").exists() else []
        store = ROOT / "cache" / "bench-subsample" / "store.sqlite"
        store.parent.mkdir(parents=True, exist_ok=True)
        problems.append(zoo_arms(ROOT / "examples" / "demo_llm.yaml", store, ["auto"], log, name="LLM demo",
                                 resume=args.resume))
    elif args.zoo_only and out.with_suffix(".json").exists():
        problems = [p for p in json.loads(out.with_suffix(".json").read_text()) if p["problem"].startswith("testbed")]
    elif not args.zoo_only:
        # most informative first; every arm is saved as it finishes, and a rerun skips finished arms
        plan = [("hidden", "augmented", ["auto", 300, 600, 1000], True), ("deep", "validation", ["auto"], True),
                ("hidden", "validation", ["auto", 60], True), ("deep", "augmented", ["auto"], True)]
        if args.quick:
            plan = plan[:1]
        if args.small:
            plan = [("deep", "validation", ["auto"], False), ("hidden", "validation", ["auto"], False)]
        partial = out.with_suffix(".partial.json")
        saved = json.loads(partial.read_text()) if partial.exists() else []

        def save(problem):
            others = [p for p in saved if p["problem"] != problem["problem"]]
            saved[:] = others + [problem]
            partial.write_text(json.dumps(saved, indent=1))

        for kind, split, settings, equal in plan:
            label = f"testbed {kind} T = 8" + ("" if split == "validation" else f", {split}")
            done = next((p for p in saved if p["problem"].startswith(label) and
                         (split != "validation" or "," not in p["problem"])), None)
            problems.append(testbed_arms(kind, settings, log, split, done, save, equal))
    if args.zoo or args.zoo_only:
        store = ROOT / "cache" / "bench-subsample" / "store.sqlite"
        store.parent.mkdir(parents=True, exist_ok=True)
        problems.append(zoo_arms(ROOT / "examples" / "demo8.yaml", store, ["auto"], log, resume=args.resume))
    out.with_suffix(".json").write_text(json.dumps(problems, indent=1))
    out.with_suffix(".md").write_text(markdown(problems) + "\n")
    print(markdown(problems))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
