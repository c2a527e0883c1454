"""From preferences (importance weights, per-task minimums) to one point of the front.

A weighted sum cannot reach the non-convex parts of a front, so we minimise an augmented
achievement scalarising function (weighted Chebyshev distance to the ideal point, plus a small
sum term that breaks ties towards Pareto-optimal points).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RHO = 1e-3


@dataclass
class Decision:
    """The chosen front point; `feasible` is False when no front point meets every minimum."""

    index: int
    coefficients: np.ndarray
    predicted: np.ndarray
    feasible: bool
    shortfall: np.ndarray  # per task, how far the choice misses its minimum (metric units, ≥ 0)
    std: np.ndarray | None = None  # per task, the predictive std at the choice (metric units)
    trusted: bool = True  # whether the surrogates vouch for the choice (see ExploreResult.trusted)


def as_vector(values, tasks: list[str], default: float, what: str) -> np.ndarray:
    """Accept None, a sequence in task order, or a {task: value} mapping (unknown tasks are errors)."""
    if values is None:
        return np.full(len(tasks), default, dtype=float)
    if isinstance(values, dict):
        unknown = [k for k in values if k not in tasks]
        if unknown:
            raise ValueError(f"{what} names unknown task {unknown[0]!r}; tasks are {', '.join(tasks)}")
        return np.array([float(values.get(t, default)) for t in tasks])
    arr = np.asarray(values, dtype=float).ravel()
    if arr.shape != (len(tasks),):
        raise ValueError(f"{what} needs {len(tasks)} values (one per task), got {arr.size}")
    return arr


def achievement(goodness: np.ndarray, weights: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Augmented weighted-Chebyshev shortfall from the ideal point (lower is better).

    `goodness` is (n, T) with larger = better; each task is scaled by its range on the front.
    `reference` (goodness of the front, default `goodness` itself) fixes the ideal and nadir
    points, so points off the front (measured ones, say) are judged on the same scale.
    """
    ref = goodness if reference is None else np.atleast_2d(reference)
    ideal, nadir = ref.max(axis=0), ref.min(axis=0)
    shortfall = (ideal - goodness) / np.maximum(ideal - nadir, 1e-12)
    w = weights / weights.sum()
    return np.max(w * shortfall, axis=1) + RHO * np.sum(w * shortfall, axis=1)


def decide(
    front_coefficients: np.ndarray,
    front_predicted: np.ndarray,
    senses: np.ndarray,
    tasks: list[str],
    weights=None,
    minimums=None,
    scale_front: np.ndarray | None = None,
) -> Decision:
    """Choose the front point that best matches the preferences.

    weights: importance per task (> 0, default equal). minimums: per-task bound on the predicted
    metric in its own units — a floor for metrics to maximise, a ceiling for metrics to minimise.
    If no front point meets all bounds, returns the one that misses them least (feasible=False).
    scale_front: predictions of the whole front, whose ideal and nadir scale the tasks when only
    part of it is offered (default: the offered points).
    """
    w = as_vector(weights, tasks, 1.0, "weights")
    if np.any(w < 0) or not np.any(w > 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, non-negative and not all zero")
    w = np.maximum(w, 1e-6)
    goodness = front_predicted * senses
    score = achievement(goodness, w, None if scale_front is None else scale_front * senses)
    floors = as_vector(minimums, tasks, np.nan, "minimums")
    has_floor = np.isfinite(floors)
    miss = np.where(has_floor, np.maximum(floors * senses - goodness, 0.0), 0.0)
    feasible_rows = np.all(miss <= 1e-12, axis=1)
    if np.any(feasible_rows):
        idx = int(np.flatnonzero(feasible_rows)[np.argmin(score[feasible_rows])])
        feasible = True
    else:
        span = np.maximum(np.ptp(goodness, axis=0), 1e-12)
        total_miss = np.sum(miss / span, axis=1)
        best = np.flatnonzero(total_miss <= total_miss.min() + 1e-12)
        idx = int(best[np.argmin(score[best])])
        feasible = False
    return Decision(idx, front_coefficients[idx].copy(), front_predicted[idx].copy(), feasible, miss[idx])


def preference_set(n_tasks: int, n: int = 10, seed: int = 0) -> np.ndarray:
    """(n, T) importance weights to judge fronts by: equal weights, then seeded Dirichlet(1) draws,
    the same for every method compared (the benchmark's and `merge-explorer compare`'s)."""
    rng = np.random.default_rng([seed, n_tasks, 10])
    return np.vstack([np.ones(n_tasks) / n_tasks, rng.dirichlet(np.ones(n_tasks), n - 1)])
