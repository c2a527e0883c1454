"""Polish a pick with a few real evaluations: a trust region around the surrogate's choice.

The front is a prediction; the merge a user ships is measured. Starting from the surrogate pick
(measured first), each step proposes the point inside a trust region that the surrogates,
corrected by what the polish has measured so far, predict to improve *every* task most over the
incumbent (the same augmented weighted-Chebyshev achievement function as the pick, with the
incumbent's measured metrics as reference point). It is measured; it becomes the incumbent only
if it really improves every task (then it is also better by the pick's achievement function),
and the region grows after a success and shrinks otherwise. So the returned point is measured,
never worse than the start, and each success shrinks how much every task could still gain at
once. Candidates come from a seeded generator and depend only on what was measured, so a rerun
through the store replays stored evaluations for free (resumable).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from explorer.core.decision import achievement, as_vector
from explorer.core.metrics import check_metrics

#: Penalty per unit of minimum missed (in units of the task's front range): misses dominate.
MISS_PENALTY = 10.0


@dataclass
class Polished:
    """Every point the polish measured, and which is best."""

    coefficients: np.ndarray  # (k, T)
    measured: np.ndarray      # (k, T)
    scores: np.ndarray        # (k,) achievement (+ penalty), lower is better
    best_index: int
    history: list = field(default_factory=list)

    @property
    def best(self) -> tuple[np.ndarray, np.ndarray]:
        return self.coefficients[self.best_index].copy(), self.measured[self.best_index].copy()


def _scorer(result, weights, minimums):
    """Achievement on the front's scale plus a penalty for missed minimums (lower is better)."""
    tasks, senses = result.tasks, result.senses
    w = np.maximum(as_vector(weights, tasks, 1.0, "weights"), 1e-6)
    floors = as_vector(minimums, tasks, np.nan, "minimums")
    ref = result.front_predicted * senses
    span = np.maximum(np.ptp(ref, axis=0), 1e-12)

    def score(values: np.ndarray) -> np.ndarray:
        good = np.atleast_2d(values) * senses
        miss = np.where(np.isfinite(floors), np.maximum(floors * senses - good, 0.0), 0.0) / span
        return achievement(good, w, ref) + MISS_PENALTY * miss.sum(axis=1)

    return score


def _correction(points: np.ndarray, residuals: np.ndarray, width: np.ndarray, radius: float):
    """Smooth interpolation of the surrogates' misses at measured points (RBF, in box units)."""
    if len(points) == 0:
        return lambda X: 0.0
    U = points / width
    ell = max(radius, 1e-3)
    K = np.exp(-0.5 * ((U[:, None] - U[None]) ** 2).sum(axis=2) / ell**2) + 1e-6 * np.eye(len(U))
    coef = np.linalg.solve(K, residuals)

    def at(X: np.ndarray) -> np.ndarray:
        k = np.exp(-0.5 * (((X / width)[:, None] - U[None]) ** 2).sum(axis=2) / ell**2)
        return k @ coef

    return at


def polish(result, evaluate: Callable[[np.ndarray], Mapping[str, float]], weights=None, minimums=None,
           budget: int = 12, progress: Callable[[int, int], None] | None = None, *, seed: int | None = None,
           n_candidates: int = 2048) -> Polished:
    """Spend at most `budget` real evaluations improving `result.decide(weights, minimums)`.

    evaluate: 1-D coefficients -> {task: metric}. progress(done, budget) is called after each
    evaluation. The first evaluation measures the surrogate pick itself.
    """
    if budget < 1:
        raise ValueError("polish needs a budget of at least 1 evaluation")
    tasks = result.tasks
    lo, hi = result.bounds[:, 0], result.bounds[:, 1]
    width = hi - lo
    score = _scorer(result, weights, minimums)
    rng = np.random.default_rng(result.seed if seed is None else seed)
    start = result.decide(weights, minimums).coefficients
    radius = 0.15  # in box widths, Euclidean over all tasks
    C, Y, history = [], [], []

    def measure(c: np.ndarray) -> None:
        C.append(c.copy())
        Y.append(check_metrics(evaluate(c.copy()), tasks, c))
        if progress:
            progress(len(C), budget)

    measure(start)
    best = 0
    span = np.maximum(np.ptp(result.front_predicted, axis=0), 1e-12)
    w = np.maximum(as_vector(weights, tasks, 1.0, "weights"), 1e-6)
    w = w / w.sum()
    while len(C) < budget and radius > 1e-3:
        Cm, Ym = np.array(C), np.array(Y)
        correction = _correction(Cm - lo, Ym - result.predict(Cm), width, radius)
        centre, incumbent = Cm[best], Ym[best]
        direction = rng.standard_normal((n_candidates, len(tasks)))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        r = radius * rng.random((n_candidates, 1)) ** (1.0 / len(tasks))
        cand = np.clip(centre + direction * r * width, lo, hi)
        predicted = result.predict(cand) + correction(cand - lo)
        predicted_ok = score(predicted) <= score(incumbent[None])[0] + 1e-12  # minimums still met
        gain = ((predicted - incumbent) * result.senses) / span
        ranking = np.min(w * gain, axis=1) + 1e-3 * np.sum(w * gain, axis=1)
        ranking = np.where(predicted_ok, ranking, ranking - 1e6)
        nxt = cand[int(np.argmax(ranking))]
        measure(nxt)
        real_gain = (Y[-1] - incumbent) * result.senses
        improved = bool(np.all(real_gain >= 0) and np.any(real_gain > 0)
                        and score(np.array(Y[-1])[None])[0] <= score(incumbent[None])[0])
        history.append({"evaluation": len(C), "radius": radius, "improved": improved})
        if improved:
            best = len(C) - 1
            radius = min(radius * 1.5, 0.5)
        else:
            radius *= 0.5
    scores = score(np.array(Y))
    return Polished(np.array(C), np.array(Y), scores, best, history)
