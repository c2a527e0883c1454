"""Adaptive sampling: spend evaluations where the predicted front is least certain.

MAP spends its whole budget on a space-filling design, but only the region around the Pareto front
matters to the user, and a surrogate fitted to the whole box is least reliable exactly there (the
front is where predictions are optimistic). Here a smaller space-filling design comes first, spread
over merge strengths (`design.strength_stratified_design`: in 8 dimensions a uniform design has
almost no weak merges, where many-task fronts often lie); then, in rounds,

1. one surrogate per task is fitted to everything measured so far (kriging by default, see
   explorer.core.model_selection) and their front is computed;
2. front points are scored by their largest predictive std over tasks, relative to the std the
   surrogates must reach to vouch for a point (`explorer.core.result.trust_thresholds`);
3. a batch is picked greedily, each pick damping the scores around it (and around every measured
   point), so a batch spreads along the front instead of piling up;
4. the batch is measured; before refitting, its error under the previous surrogates is the
   held-out error on the front: when its RMS falls below `tol` (metric units), sampling stops.

The points placed on the front are marked ("adaptive"); what the rounds told about them before they
were measured calibrates the final fit's std (`surrogate.front_scale`). Runs of a spec
go through the store in explorer.experiment.loop. Unlike MAP's
reference Bayesian mode, every measurement is kept, acquisition is a deterministic argmax, and
regions with no samples have the largest std, so they are explored rather than ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from explorer.core.design import default_budget, n_quadratic_terms, normalize_bounds, strength_stratified_design
from explorer.core.metrics import check_metrics, task_senses
from explorer.core.pareto import compute_front
from explorer.core.result import ExploreResult, fit_result, fit_surrogates, trust_thresholds
from explorer.core.surrogate import front_scale
from explorer.errors import SpecError


def default_initial(n_tasks: int) -> int:
    """Size of the space-filling start: the quadratic's P terms plus a fifth more (≥ 1)."""
    p = n_quadratic_terms(n_tasks)
    return p + max(1, p // 5)


def default_batch(n_tasks: int) -> int:
    """Points per round: about a fifth of the quadratic's terms (≥ 1)."""
    return max(1, round(n_quadratic_terms(n_tasks) / 5))


@dataclass
class AdaptiveSampler:
    """Chooses the next batch from what has been measured (stateless between calls but for `history`).

    bounds: (T, 2) box. senses: +1 per maximised metric, -1 per minimised one.
    tol: stop when the RMS held-out error of a round's points (metric units) is below it.
    """

    bounds: np.ndarray
    senses: np.ndarray
    budget: int
    initial: int
    batch: int
    tol: float = 0.005
    n_bootstrap: int = 24
    n_candidates: int = 1024
    seed: int = 0
    link: str = "auto"
    family: str = "auto"
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bounds = normalize_bounds(self.bounds, len(self.senses))
        self.senses = np.asarray(self.senses, dtype=float)
        t = len(self.senses)
        need = n_quadratic_terms(t)
        if self.initial < need:
            raise SpecError(f"adaptive sampling needs an initial design of at least {need} points for {t} tasks, got {self.initial}")
        if self.budget < self.initial:
            raise SpecError(f"budget {self.budget} is smaller than the initial design ({self.initial} points)")
        if self.batch < 1:
            raise SpecError("adaptive batch size must be at least 1")
        self._pending_prediction: tuple | None = None  # (batch, predicted, std) of the last proposal

    @property
    def n_tasks(self) -> int:
        return len(self.senses)

    def initial_design(self) -> np.ndarray:
        return strength_stratified_design(self.bounds, self.n_tasks, self.initial, self.seed)

    def fit(self, C: np.ndarray, Y: np.ndarray, noise_variance=None) -> list:
        names = [f"t{i}" for i in range(self.n_tasks)]
        fitted = fit_surrogates(names, C, Y, self.bounds, self.senses, self.family, self.link,
                                noise_variance=noise_variance)
        return [fitted[n] for n in names]

    def propose(self, C: np.ndarray, Y: np.ndarray, k: int | None = None, noise_variance=None) -> np.ndarray:
        """The next batch (k, T) given measured coefficients C (n, T) and metrics Y (n, T) (measured on
        subsamples: their sampling variances `noise_variance` (n, T))."""
        C, Y = np.asarray(C, dtype=float), np.asarray(Y, dtype=float)
        k = self.batch if k is None else k
        round_no = len(self.history)
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        width = hi - lo
        surrogates = self.fit(C, Y, noise_variance)
        front = compute_front(surrogates, self.bounds, self.senses, n_candidates=1024, max_points=300,
                              seed=self.seed + round_no)
        cand = front.X
        # points go where more points help: the std of the smooth part where a family tells it apart
        pairs = [(s.predict(cand), s.epistemic_std(cand)) if hasattr(s, "epistemic_std")
                 else s.predict(cand, return_std=True) for s in surrogates]
        std = np.column_stack([p[1] for p in pairs])
        score = np.max(std / trust_thresholds(Y), axis=1)
        # never re-measure: damp candidates near measured points, then pick greedily with damping
        Uc, Us = (cand - lo) / width, (C - lo) / width
        near = 0.05 * math.sqrt(self.n_tasks)
        d2 = ((Uc[:, None, :] - Us[None, :, :]) ** 2).sum(axis=2)
        score = score * np.prod(1.0 - np.exp(-d2 / (2 * near**2)), axis=1)
        spread = 3 * near
        chosen = []
        for _ in range(min(k, len(cand))):
            i = int(np.argmax(score))
            if score[i] <= 0:
                break
            chosen.append(i)
            score = score * (1.0 - np.exp(-((Uc - Uc[i]) ** 2).sum(axis=1) / (2 * spread**2)))
        batch = cand[chosen]
        # what a user is told about these points before they are measured: mean and a new measurement's std
        told = [s.predict(batch, return_std=True) for s in surrogates] if len(batch) else []
        self._pending_prediction = (batch.copy(), np.column_stack([p[0] for p in pairs])[chosen],
                                    np.column_stack([p[1] for p in told]) if told else None)
        return batch

    @property
    def told(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(batch, predicted mean, std) (metric units) of the last proposal before it is measured; None
        when nothing was proposed. The std is that of a new measurement on the examples the fit saw."""
        p = self._pending_prediction
        return None if p is None or p[2] is None else p

    def record(self, batch: np.ndarray, measured: np.ndarray, n_total: int) -> float:
        """Held-out RMS error (metric units) of the last proposal's predictions; appends to history,
        with each point's error in units of the std it was predicted with ("held_out_z", (k, T)): how
        the reported ± fares on front points before they were measured (benchmarks/pick_coverage.py)."""
        err, z = float("nan"), []
        if self._pending_prediction is not None and len(batch):
            _, predicted, std = self._pending_prediction
            err = float(np.sqrt(np.mean((np.asarray(measured) - predicted) ** 2)))
            z = ((np.asarray(measured) - predicted) / np.clip(std, 1e-12, None)).tolist()
        self.history.append({"round": len(self.history) + 1, "n_evaluations": int(n_total), "held_out_rmse": err,
                             "batch": int(len(batch)), "held_out_z": z})
        self._pending_prediction = None
        return err

    def converged(self) -> bool:
        """True when the last round's held-out error on the front is below `tol`."""
        errs = [h["held_out_rmse"] for h in self.history if np.isfinite(h["held_out_rmse"])]
        return bool(errs) and errs[-1] < self.tol


def explore_adaptive(
    evaluate: Callable[[np.ndarray], Mapping[str, float]],
    tasks: Sequence[str],
    bounds=(0.0, 1.0),
    budget: int | None = None,
    seed: int = 0,
    higher_is_better=True,
    *,
    initial: int | None = None,
    batch: int | None = None,
    tol: float = 0.005,
    link: str = "auto",
    family: str = "auto",
    progress: bool = False,
    front_points: int = 1000,
    front_bounds=None,
    callback: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> ExploreResult:
    """Like `explore`, but after a smaller initial design adds points in rounds near the front.

    budget: most evaluations to spend (default MAP's 2·(T+1)(T+2)/2); sampling stops earlier once
    a round's held-out RMS error (metric units, e.g. accuracy) is below `tol`.
    initial / batch: initial design size and points per round (see `default_initial`, `default_batch`).
    callback(C, Y): called after each round with everything measured so far (for tracing quality).
    The rounds are recorded in `result.extra["adaptive"]`.
    """
    tasks = list(tasks)
    if len(tasks) < 2:
        raise SpecError(f"need at least 2 tasks to explore trade-offs, got {len(tasks)}")
    t = len(tasks)
    budget = default_budget(t) if budget is None else int(budget)
    initial = min(default_initial(t), budget) if initial is None else int(initial)
    sampler = AdaptiveSampler(normalize_bounds(bounds, t), task_senses(tasks, higher_is_better), budget, initial,
                              default_batch(t) if batch is None else int(batch), tol, seed=seed, link=link,
                              family=family)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc="evaluations", unit="pt")

    def measure(points: np.ndarray) -> np.ndarray:
        rows = []
        for c in points:
            rows.append(check_metrics(evaluate(c.copy()), tasks, c))
            if bar:
                bar.update(1)
        return np.array(rows).reshape(len(points), t)

    try:
        C = sampler.initial_design()
        Y = measure(C)
        told = np.full((len(C), 2, t), np.nan)  # per point, the (mean, std) a round told before measuring it
        if callback:
            callback(C, Y)
        while len(C) < budget:
            new = sampler.propose(C, Y, min(sampler.batch, budget - len(C)))
            if len(new) == 0:
                break
            told = np.vstack([told, np.stack(sampler.told[1:], axis=1) if sampler.told else np.full((len(new), 2, t), np.nan)])
            measured = measure(new)
            C, Y = np.vstack([C, new]), np.vstack([Y, measured])
            sampler.record(new, measured, len(C))
            if callback:
                callback(C, Y)
            if sampler.converged():
                break
    finally:
        if bar:
            bar.close()
    front_samples = np.arange(len(C)) >= sampler.initial  # placed on the predicted front
    result = fit_result(tasks, C, Y, bounds, higher_is_better, seed, link, front_points, front_bounds,
                        family=family, front_samples=front_samples, front_scale=front_scale(Y, told[:, 0], told[:, 1]))
    result.extra["adaptive"] = sampler.history
    return result


def loop_budget(budget: int, initial: int) -> int:
    """Evaluations `run_adaptive`'s design and rounds may spend: one of `budget` is kept for the
    closing best task-arithmetic reference (`Experiment.finish`) when there is room for it."""
    return budget - 1 if budget > initial + 1 else budget


def inside_box(C: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Mask of the rows of C inside the box (points verified or polished outside it are not fitted)."""
    return np.all((C >= bounds[:, 0] - 1e-12) & (C <= bounds[:, 1] + 1e-12), axis=1)
