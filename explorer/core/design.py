"""Sample designs in the coefficient box.

A full quadratic in T coefficients has P = (T+1)(T+2)/2 terms and needs at least three distinct
levels per coordinate; designs built only from {0, 1} (as in MAP's reference code) make cᵢ² ≡ cᵢ
and are rank-deficient. We combine the informative corners (base, each expert alone, equal
weights) with a scrambled Sobol sequence, which is space-filling and in general position.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import qmc

from explorer.core.surrogate import quadratic_features
from explorer.errors import SpecError


def n_quadratic_terms(n_tasks: int) -> int:
    """Number of terms of a full quadratic in `n_tasks` variables: (T+1)(T+2)/2."""
    return (n_tasks + 1) * (n_tasks + 2) // 2


def default_budget(n_tasks: int) -> int:
    """MAP's default sample count: twice the number of quadratic terms."""
    return 2 * n_quadratic_terms(n_tasks)


def normalize_bounds(bounds, n_tasks: int) -> np.ndarray:
    """Return bounds as an array of shape (T, 2); accepts one (lo, hi) pair or one pair per task."""
    arr = np.asarray(bounds, dtype=float)
    if arr.shape == (2,):
        arr = np.tile(arr, (n_tasks, 1))
    if arr.shape != (n_tasks, 2):
        raise SpecError(f"bounds must be one (lo, hi) pair or {n_tasks} pairs, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SpecError("bounds must be finite numbers")
    bad = np.nonzero(arr[:, 0] >= arr[:, 1])[0]
    if bad.size:
        lo, hi = arr[bad[0]]
        raise SpecError(f"bounds for task #{bad[0]} have lo >= hi ({lo} >= {hi})")
    return arr


def corner_points(bounds: np.ndarray) -> np.ndarray:
    """Base (all zero), each expert alone (cᵢ = 1) and equal weights (all 1/2), clipped to the box.

    Clipping keeps the design inside the user's box; duplicates (e.g. when 0 is outside it) are dropped.
    """
    n_tasks = bounds.shape[0]
    points = [np.zeros(n_tasks)]
    points += [np.eye(n_tasks)[i] for i in range(n_tasks)]
    points.append(np.full(n_tasks, 0.5))
    clipped = np.clip(np.array(points), bounds[:, 0], bounds[:, 1])
    _, first = np.unique(clipped.round(12), axis=0, return_index=True)
    return clipped[np.sort(first)]


def sample_design(bounds, n_tasks: int, budget: int | None = None, seed: int = 0) -> np.ndarray:
    """Deterministic design of `budget` points (default 2P) with full quadratic rank.

    Corners come first, then scrambled-Sobol points fill the box. The result always has full
    rank for the quadratic feature map (checked; a few extra Sobol points are drawn if needed).
    """
    box = normalize_bounds(bounds, n_tasks)
    needed = n_quadratic_terms(n_tasks)
    budget = default_budget(n_tasks) if budget is None else int(budget)
    if budget < needed:
        raise SpecError(
            f"budget {budget} is smaller than the {needed} evaluations a quadratic surrogate over "
            f"{n_tasks} tasks needs; use at least {needed} (default {default_budget(n_tasks)})"
        )
    corners = corner_points(box)[:budget]
    n_fill = budget - len(corners)
    for attempt in range(20):
        with warnings.catch_warnings():  # Sobol prefers powers of two; any count is still space-filling
            warnings.simplefilter("ignore", UserWarning)
            unit = qmc.Sobol(d=n_tasks, scramble=True, seed=seed + 7919 * attempt).random(n_fill)
        design = np.vstack([corners, qmc.scale(unit, box[:, 0], box[:, 1])]) if n_fill else corners
        if np.linalg.matrix_rank(quadratic_features(design)) == needed:
            return design
    raise SpecError(f"could not draw a full-rank design of {budget} points for {n_tasks} tasks")


#: Smallest scale of the strength-stratified design (the fill reaches from 20 % of the box to all of it).
MIN_STRENGTH = 0.2


def strength_stratified_design(bounds, n_tasks: int, budget: int, seed: int = 0) -> np.ndarray:
    """`sample_design`, with its Sobol fill spread over merge strengths.

    Why: uniform points in a T-dimensional box concentrate at Σc ≈ T/2 ± √(T/12) (for T = 8 almost
    none has Σc < 2), while the total strength Σcᵢ is what moves a task-arithmetic merge most, and
    good merges of many experts often sit at small strengths (task arithmetic's best λ for 8 tasks is
    typically 0.3). Each fill point u is pulled towards the box's low corner by its own factor
    s ∈ [MIN_STRENGTH, 1] (evenly spaced, shuffled with the seed), so the design covers every
    strength from weak merges to the whole box; corners stay as in `sample_design`.
    """
    design = sample_design(bounds, n_tasks, budget, seed)
    box = normalize_bounds(bounds, n_tasks)
    lo = box[:, 0]
    n_corners = len(corner_points(box))
    fill = design[n_corners:]
    if len(fill) == 0:
        return design
    scales = np.linspace(MIN_STRENGTH, 1.0, len(fill))
    np.random.default_rng(seed).shuffle(scales)
    stratified = np.vstack([design[:n_corners], lo + scales[:, None] * (fill - lo)])
    if np.linalg.matrix_rank(quadratic_features(stratified)) < n_quadratic_terms(n_tasks):
        return design  # never trade the quadratic's rank for the spread
    return stratified


def coefficient_key(coefficients) -> str:
    """Canonical text of a coefficient vector (10 decimals), so equal vectors share a key."""
    c = np.asarray(coefficients, dtype=float).ravel()
    return ",".join(f"{x:.10f}" for x in np.round(c, 10) + 0.0)
