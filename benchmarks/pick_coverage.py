"""Why ±2 std covered fewer measured values at the picks than along the front: two explanations measured.

On each 8-task testbed (full-set MAP, the benchmark's 10 preferences, picks measured on the validation
split) this compares three stds at the picks:
1. the smooth part's std alone (`KrigingSurrogate.epistemic_std`): what the engine reported until
   FIT_VERSION 7. The calibration factor is fitted on left-out measurements, whose variance holds the
   nugget s² of the kriging covariance, but this std leaves s² out;
2. a selection-aware std: the pick is made again on B joint draws of the kriging posterior over the
   offered front points (the draw plays the estimate, the posterior mean the truth); the RMS of
   (draw − mean) at each draw's pick is the error the choice itself adds (the optimiser's curse);
3. the std of a new measurement, smooth part and nugget, calibrated on left-out measurements
   (FIT_VERSION 7–8);
4. that std rescaled per task so 95.4 % of the adaptive rounds' held-out front errors fall inside ±2 std
   (`surrogate.front_scale`): what `predict(return_std=True)` reports since FIT_VERSION 9.

It also asks whether another calibration target would put every testbed's picks in the 80–95 % band:
each task's std is rescaled to the factor that puts the nominal 95.4 % (P(|Z| < 2)) or 90 % of its
left-out measurements inside ±2 std, instead of `COVERAGE_TARGET`; or to the factor that puts 95.4 % of
the adaptive rounds' held-out errors inside (front points, each predicted with the std it was told
before it was measured: `AdaptiveSampler.history`'s "held_out_z"), pooled over tasks, or of the
left-out errors at the front points alone.

    python benchmarks/pick_coverage.py [--kinds deep hidden fashion-views fashion-relabel] [--draws 200]
                                       [--split validation | augmented | large]

Writes benchmarks/results/pick_coverage[_<split>].{md,json}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.preferences import preferences  # noqa: E402
from benchmarks.publish import publish  # noqa: E402
from benchmarks.subsample import TestbedRun, judge_front  # noqa: E402
from explorer.core.decision import decide  # noqa: E402
from explorer.core.kriging import KrigingSurrogate  # noqa: E402
from explorer.core.links import link_inverse  # noqa: E402
from explorer.core.surrogate import COVERAGE_TARGET, calibration_factor  # noqa: E402
from explorer.demo.testbeds import UNTUNED_KINDS, make_testbed  # noqa: E402
from explorer.experiment.loop import run_adaptive  # noqa: E402


def posterior_draws(s: KrigingSurrogate, X: np.ndarray, draws: int, rng) -> np.ndarray:
    """(draws, n) joint draws of the calibrated posterior of the latent metric at X (metric units)."""
    u, phi, _, k = s._cross(X)
    a2, b2, ell, _ = np.exp(s.params_)
    d2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(axis=2)
    cov = a2 * phi @ phi.T + b2 * np.exp(-0.5 * d2 / ell**2) - k @ s.kinv_ @ k.T
    cov = 0.5 * (cov + cov.T) * (s.z_scale_ * s.calibration_) ** 2
    w, V = np.linalg.eigh(cov)
    z = s.decision_function(X)
    return link_inverse(s.link_, z[None, :] + rng.standard_normal((draws, len(w))) @ (V * np.sqrt(np.clip(w, 0, None))).T)


def smooth_std(s, X: np.ndarray) -> np.ndarray:
    """The smooth part's std where the family tells it apart (kriging), else the reported std."""
    return s.epistemic_std(X) if hasattr(s, "epistemic_std") else s.predict(X, return_std=True)[1]


#: Calibration targets compared with `COVERAGE_TARGET` at the picks: the nominal ±2σ share, and lower.
OTHER_TARGETS = (0.954, 0.90)


def rescaled(result, target: float) -> np.ndarray:
    """(T,) per task: the std scale a calibration to `target` would give, relative to the fitted one."""
    out = []
    for i, t in enumerate(result.tasks):
        s = result.surrogates[t]
        raw = s.loo_z_std_ / s.calibration_
        out.append(calibration_factor(s.link_, result.observed[:, i], s.loo_z_, raw, target) / s.calibration_)
    return np.array(out)


def rounds_scale(result, target: float = 0.954) -> tuple[np.ndarray, float, float]:
    """From the adaptive rounds' held-out z-scores: the std scale putting `target` of them inside
    ±2 std, per task (T,) and pooled, and the share inside ±2 std as reported."""
    z = np.abs(np.vstack([np.atleast_2d(h["held_out_z"]) for h in result.extra["adaptive"] if h["held_out_z"]]))
    return np.quantile(z, target, axis=0) / 2, float(np.quantile(z, target) / 2), float(np.mean(z <= 2))


def front_loo_scale(result, run, target: float = 0.954) -> np.ndarray:
    """(T,) per task: the std scale putting `target` of the adaptive (front) points' left-out
    measurements inside ±2 std, relative to the fitted one."""
    C_front = {tuple(np.round(c, 9)) for c in run.measured_examples(("adaptive",))[0]}
    rows = np.array([tuple(np.round(c, 9)) in C_front for c in result.samples])
    out = []
    for i, t in enumerate(result.tasks):
        s = result.surrogates[t]
        raw = s.loo_z_std_ / s.calibration_
        out.append(calibration_factor(s.link_, result.observed[rows, i], s.loo_z_[rows], raw[rows], target) / s.calibration_)
    return np.array(out)


def one_testbed(kind: str, draws: int, seed: int = 0, split: str = "validation") -> dict:
    tb = make_testbed(kind, 8)
    run = TestbedRun(tb, "full", None, split=split)
    result = run_adaptive(run, None, progress=False)

    def measure(C):
        return tb.values(np.atleast_2d(C), split=split)

    rows = np.flatnonzero(result.front_trusted) if np.any(result.front_trusted) else np.arange(len(result.front_coefficients))
    X, mu = result.front_coefficients[rows], result.front_predicted[rows]
    kriging = all(isinstance(s, KrigingSurrogate) for s in result.surrogates.values())
    rng = np.random.default_rng(seed)
    P = np.stack([posterior_draws(result.surrogates[t], X, draws, rng) for t in result.tasks], axis=2) if kriging else None
    covered = {"smooth std (before)": [], "selection-aware std": [], "reported std (with nugget)": [],
               "and front rounds": []}
    # alternatives, each a factor on the left-out-calibrated std (what FIT_VERSION 7-8 reported)
    scales = {f"target {g:.1%}": rescaled(result, g) for g in OTHER_TARGETS}
    _, pooled, rounds_inside = rounds_scale(result)
    scales["front rounds, pooled"] = np.full(len(result.tasks), pooled)
    scales["front points' left-out, per task"] = front_loo_scale(result, run)
    shipped = np.array([getattr(result.surrogates[t], "front_scale_", 1.0) for t in result.tasks])
    at_target = {k: [] for k in scales}
    bias, error = [], []
    for w in preferences(tb.n_tasks):
        d = result.decide(w)
        measured = measure(d.coefficients)[0]
        err = np.abs(d.predicted - measured)
        error.append((d.predicted - measured) * result.senses)
        before = np.column_stack([smooth_std(result.surrogates[t], d.coefficients[None, :]) for t in result.tasks])[0]
        covered["smooth std (before)"].append(err <= 2 * before + 1e-12)
        left_out = d.std / shipped  # full sets: no shared part, so the front factor divides out exactly
        covered["reported std (with nugget)"].append(err <= 2 * left_out + 1e-12)
        covered["and front rounds"].append(err <= 2 * d.std + 1e-12)
        for k, r in scales.items():
            at_target[k].append(err <= 2 * left_out * r + 1e-12)
        if P is not None:
            e = np.array([P[b, k] - mu[k] for b in range(draws)
                          for k in [decide(X, P[b], result.senses, result.tasks, w, None,
                                           scale_front=result.front_predicted).index]]) * result.senses
            bias.append(e.mean(axis=0))
            covered["selection-aware std"].append(err <= 2 * np.maximum(before, np.sqrt(np.mean(e**2, axis=0))) + 1e-12)
    narrow = dataclasses.replace(result, front_std=np.column_stack(
        [smooth_std(result.surrogates[t], result.front_coefficients) for t in result.tasks]))
    wide = dataclasses.replace(result, front_std=result.front_std / shipped)
    return {"testbed": kind + ("" if split == "validation" else f", {split}") + (" (untuned)" if kind in UNTUNED_KINDS else ""),
            "surrogates": sorted({type(s).__name__ for s in result.surrogates.values()}),
            "picks_coverage": {k: (float(np.mean(v)) if v else None) for k, v in covered.items()},
            "picks_coverage_by_target": {f"target {COVERAGE_TARGET:.1%}": float(np.mean(covered["reported std (with nugget)"])),
                                         **{k: float(np.mean(v)) for k, v in at_target.items()},
                                         "front rounds, per task (shipped)": float(np.mean(covered["and front rounds"]))},
            "front_scale": shipped.tolist(),
            "rounds_inside_2std": rounds_inside,
            "picks_mean_error_pts": float(np.mean(error) * 100),
            "selection_bias_pts": float(np.mean(bias) * 100) if bias else None,
            "front_coverage": {"smooth std (before)": judge_front(narrow, measure)["coverage"],
                               "reported std (with nugget)": judge_front(wide, measure)["coverage"],
                               "and front rounds": judge_front(result, measure)["coverage"]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["deep", "hidden", *UNTUNED_KINDS])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--split", default="validation", help="validation, augmented or large")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.out = args.out or ("pick_coverage" + ("" if args.split == "validation" else f"_{args.split}"))
    out = []
    for kind in args.kinds:
        out.append(one_testbed(kind, args.draws, split=args.split))
        print(json.dumps(out[-1]), flush=True)
    pct = lambda v: "—" if v is None else f"{v:.0%}"  # noqa: E731
    lines = ["| testbed | picks ±2 std coverage: smooth part's std (to FIT_VERSION 6) / selection-aware / with the "
             "nugget (7–8) / and each task's front rounds (9, shipped) | selection bias at the picks (pts, + = "
             "optimistic) | picks' mean error (pts) | front coverage: 6 / 7–8 / 9 | front factor per task |",
             "|---|---:|---:|---:|---:|---|"]
    for r in out:
        c, f = r["picks_coverage"], r["front_coverage"]
        sb = "—" if r["selection_bias_pts"] is None else f"{r['selection_bias_pts']:+.2f}"
        lines.append(f"| {r['testbed']} | {pct(c['smooth std (before)'])} / {pct(c['selection-aware std'])} / "
                     f"{pct(c['reported std (with nugget)'])} / {pct(c['and front rounds'])} | {sb} | "
                     f"{r['picks_mean_error_pts']:+.2f} | {pct(f['smooth std (before)'])} / "
                     f"{pct(f['reported std (with nugget)'])} / {pct(f['and front rounds'])} | "
                     + " ".join(f"{x:.2f}" for x in r["front_scale"]) + " |")
    targets = list(out[0]["picks_coverage_by_target"])
    lines += ["", "Picks' ±2 std coverage with each task's std calibrated otherwise: to a share of its left-out "
              "measurements (FIT_VERSION 7–8's target first), to 95.4 % of the adaptive rounds' held-out errors "
              "pooled over tasks, to 95.4 % of the left-out errors at the front points only, or (last, shipped) "
              "per task to 95.4 % of the rounds' held-out errors; and the share of those held-out errors inside "
              "±2 std of the left-out calibration alone:", "",
              "| testbed | " + " | ".join(targets) + " | rounds' held-out errors inside ±2 std |",
              "|---|" + "---:|" * (len(targets) + 1)]
    for r in out:
        lines.append(f"| {r['testbed']} | " + " | ".join(pct(r["picks_coverage_by_target"][k]) for k in targets)
                     + f" | {pct(r['rounds_inside_2std'])} |")
    publish(args.out, out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
