"""The result of an exploration and the fit behind it: surrogates per task and their amortized front.

`fit_result` turns measured (coefficients, metrics) into an `ExploreResult`; `explore` (explore.py)
and the experiment layer both call it, and the store's front cache restores its arrays.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from explorer.core.decision import Decision, decide
from explorer.core.design import normalize_bounds
from explorer.core.metrics import task_senses
from explorer.core.model_selection import TRUST_ERROR_SHARE, fit_surrogate, trust_radius
from explorer.core.pareto import compute_front, compute_trusted_front
from explorer.core.polish import polish as polish_pick
from explorer.core.surrogate import QuadraticSurrogate

#: Default most std (metric units) a front point may have on any task and still be vouched for:
#: 2 points of accuracy for metrics in [0, 1], else 5 % of the task's measured range.
TRUST_ACCURACY_STD = 0.02
TRUST_RANGE_SHARE = 0.05

#: Version of the surrogate and front code: part of the key of every cached front (front_cache.py).
#: Bump it whenever a change to the fit or the front search changes the front for the same points.
FIT_VERSION = "13"  # 11: the kriging nugget is bounded by the set's binomial variance (kriging._nugget_cap); 12: not where the points do not outnumber the trend's terms; 13: family "auto" is kriging (model_selection)


@dataclass
class ExploreResult:
    """Samples, measurements, surrogates and the amortized front of one exploration.

    `front_std` (m, T) is each front point's predictive std in metric units; `front_trusted` (m,)
    says whether the surrogates vouch for it (it lies within the trust radius of a measured
    point, see `trusted_front`). Choices are made among trusted points whenever there are any.
    """

    tasks: list[str]
    bounds: np.ndarray
    senses: np.ndarray
    samples: np.ndarray
    observed: np.ndarray
    surrogates: dict[str, QuadraticSurrogate]
    front_coefficients: np.ndarray
    front_predicted: np.ndarray
    front_std: np.ndarray | None = None
    front_trusted: np.ndarray | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        m, t = self.front_predicted.shape
        if self.front_std is None:
            self.front_std = np.full((m, t), np.nan)
        if self.front_trusted is None:
            self.front_trusted = np.ones(m, dtype=bool)

    def predict(self, coefficients: np.ndarray, return_std: bool = False):
        """Surrogate predictions (k, T) in task order; with return_std, (mean, std), metric units."""
        c = np.atleast_2d(np.asarray(coefficients, dtype=float))
        if not return_std:
            return np.column_stack([self.surrogates[t].predict(c) for t in self.tasks])
        pairs = [self.surrogates[t].predict(c, return_std=True) for t in self.tasks]
        return np.column_stack([p[0] for p in pairs]), np.column_stack([p[1] for p in pairs])

    @property
    def trust_radius(self) -> float:
        """Distance (box widths) from a measured point within which the surrogates are vouched for."""
        return float(min(getattr(s, "trust_radius_", 0.0) for s in self.surrogates.values()))

    def vouched(self, coefficients: np.ndarray) -> np.ndarray:
        """Whether each row lies within `trust_radius` of a measured sample (what `front_trusted` says)."""
        lo, width = self.bounds[:, 0], self.bounds[:, 1] - self.bounds[:, 0]
        V, U = (np.atleast_2d(coefficients) - lo) / width, (self.samples - lo) / width
        d2 = np.sum(V**2, axis=1)[:, None] + np.sum(U**2, axis=1)[None, :] - 2 * V @ U.T
        return d2.min(axis=1) <= self.trust_radius**2 + 1e-9

    @property
    def trust_std(self) -> np.ndarray:
        """Per task, the most std a point may have for the surrogates to vouch for it."""
        return trust_thresholds(self.observed)

    def trusted(self, std: np.ndarray) -> np.ndarray:
        """Whether each row of predictive stds (k, T) is within `trust_std` on every task."""
        return np.all(np.nan_to_num(np.atleast_2d(std), nan=np.inf) <= self.trust_std, axis=1)

    def decide(self, weights=None, minimums=None) -> Decision:
        """The front point matching importance `weights` and per-task `minimums` (see decision.decide).

        Only front points the surrogates vouch for are candidates, unless none is.
        """
        rows = np.flatnonzero(self.front_trusted) if np.any(self.front_trusted) else np.arange(len(self.front_coefficients))
        d = decide(self.front_coefficients[rows], self.front_predicted[rows], self.senses, self.tasks, weights, minimums,
                   scale_front=self.front_predicted)
        d.index = int(rows[d.index])
        d.std = self.front_std[d.index].copy()
        d.trusted = bool(self.front_trusted[d.index])
        return d

    def pick(self, weights=None, minimums=None) -> tuple[np.ndarray, np.ndarray]:
        """(coefficients (T,), predicted metrics (T,)) of the chosen front point."""
        d = self.decide(weights, minimums)
        return d.coefficients, d.predicted

    def polish(self, evaluate: Callable[[np.ndarray], Mapping[str, float]], weights=None, minimums=None,
               budget: int = 12, progress: Callable[[int, int], None] | None = None):
        """Improve the pick with at most `budget` real evaluations; returns (coefficients, measured).

        See `explorer.polish`: a local trust region around the surrogate pick, judged on measured
        values by the same achievement function; never worse than the start.
        """
        return polish_pick(self, evaluate, weights, minimums, budget, progress).best

    def r2_cv(self) -> dict[str, float]:
        return {t: float(self.surrogates[t].r2_cv_) for t in self.tasks}

    def best_task_arithmetic(self, levels: int = 201) -> tuple[float, np.ndarray]:
        """Best equal-weight λ (all cᵢ = λ) inside the box by mean predicted goodness, and its metrics."""
        lo, hi = self.bounds[:, 0].max(), self.bounds[:, 1].min()
        if lo > hi:
            return float("nan"), np.full(len(self.tasks), np.nan)
        lams = np.linspace(lo, hi, levels)
        pred = self.predict(np.repeat(lams[:, None], len(self.tasks), axis=1))
        best = int(np.argmax((pred * self.senses).mean(axis=1)))
        return float(lams[best]), pred[best]


def trust_thresholds(observed: np.ndarray) -> np.ndarray:
    """Per task: 2 accuracy points for metrics in [0, 1], else 5 % of the measured range."""
    Y = np.atleast_2d(observed)
    unit = np.all((Y >= 0) & (Y <= 1), axis=0)
    return np.where(unit, TRUST_ACCURACY_STD, TRUST_RANGE_SHARE * np.maximum(np.ptp(Y, axis=0), 1e-12))


def fit_surrogates(tasks, samples, observed, bounds, senses, family: str = "auto", link: str = "auto",
                   front_samples=None, noise_variance=None, shared_variance=None, front_scale=None) -> dict:
    """One surrogate per task ("auto": kriging, or the quadratic where kriging fails).

    front_samples: boolean mask of the samples that adaptive rounds placed on the predicted
    front; each surrogate's `candidates_` reports its left-out error there.
    """
    noise = None if noise_variance is None else np.asarray(noise_variance, dtype=float).reshape(np.shape(observed))
    shared = np.zeros(len(tasks)) if shared_variance is None else np.asarray(shared_variance, dtype=float).ravel()
    scale = np.ones(len(tasks)) if front_scale is None else np.asarray(front_scale, dtype=float).ravel()
    return {task: fit_surrogate(samples, observed[:, i], senses[i] > 0, bounds, family, link, front_samples,
                                None if noise is None else noise[:, i], float(shared[i]), float(scale[i]))
            for i, task in enumerate(tasks)}


def trusted_front(surrogates, samples, observed, box, search_box, senses, front_points: int, seed: int) -> dict:
    """The front the user is shown: where the surrogates are trusted, plus the rest marked as a guess.

    1. the trust radius: how far from measured points left-out errors say the surrogates stay
       accurate (`model_selection.trust_radius`, median error within 0.35 × the trust std per task);
    2. the front within the trust radius of a sample (`pareto.compute_trusted_front`):
       `front_trusted` True;
    3. the unconstrained front of the box, for context: `front_trusted` False unless it also
       lies in the trusted region. Only its points that neither dominate nor are dominated by a
       trusted point are kept, so the front shown is non-dominated as a whole and a guess never
       outshines a vouched-for point it cannot back.
    Two thirds of `front_points` go to the trusted part.
    """
    radius = trust_radius(surrogates, samples, box, TRUST_ERROR_SHARE * trust_thresholds(observed))
    n_trusted = max(1, (2 * front_points) // 3)
    inner = compute_trusted_front(surrogates, search_box, senses, samples, radius, n_trusted, seed)
    outer = compute_front(surrogates, search_box, senses, max_points=max(1, front_points - len(inner.X)), seed=seed)
    keep = incomparable(outer.F, inner.F)
    X = np.vstack([inner.X, outer.X[keep]])
    predicted = -np.vstack([inner.F, outer.F[keep]]) * senses
    std = np.column_stack([s.predict(X, return_std=True)[1] for s in surrogates])
    lo, width = box[:, 0], box[:, 1] - box[:, 0]
    V, U = (X - lo) / width, (samples - lo) / width
    d2 = np.sum(V**2, axis=1)[:, None] + np.sum(U**2, axis=1)[None, :] - 2 * V @ U.T
    near = d2.min(axis=1) <= radius**2 + 1e-9
    trusted = near
    for s in surrogates:
        s.trust_radius_ = radius
    return {"front_coefficients": X, "front_predicted": predicted, "front_std": std, "front_trusted": trusted}


def incomparable(F: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Mask of the rows of F (minimisation) that neither dominate, equal nor are dominated by a row of G."""
    F, G = np.atleast_2d(F), np.atleast_2d(G)
    if len(F) == 0 or len(G) == 0:
        return np.ones(len(F), dtype=bool)
    le = np.all(F[:, None, :] <= G[None, :, :], axis=2)  # f weakly below g: f dominates or equals g
    ge = np.all(F[:, None, :] >= G[None, :, :], axis=2)  # g weakly below f
    return ~np.any(le | ge, axis=1)


def fit_result(
    tasks: Sequence[str],
    samples: np.ndarray,
    observed: np.ndarray,
    bounds,
    higher_is_better=True,
    seed: int = 0,
    link: str = "auto",
    front_points: int = 1000,
    front_bounds=None,
    front: Mapping[str, np.ndarray] | None = None,
    surrogates: Mapping[str, object] | None = None,
    family: str = "auto",
    front_samples=None,
    noise_variance=None,
    shared_variance=None,
    front_scale=None,
) -> ExploreResult:
    """Fit one surrogate per task to (samples, observed) and compute the front inside the box.

    `front_bounds` widens (or narrows) the region searched for the front; by default it is the
    sampled box, so the front never extrapolates. `front` restores the `front_*` arrays of a
    front computed before for exactly these inputs (the store's cache, see front_cache.py):
    no front search runs then; `surrogates` ({task: fitted surrogate}, from the same cache) skips
    the fitting. `family`: "auto" (kriging, or the quadratic where kriging fails), "quadratic" (MAP)
    or "kriging" (see explorer.core.model_selection). `noise_variance` (n, T): each measurement's known
    sampling variance when it was made on a subsample of the task's examples (explorer.core.sampling);
    `shared_variance` (T,): per task, the variance of the level error those subsamples share
    (`sampling.shared_variance`), part of the std of a new full-set measurement. `front_scale` (T,): per
    task, the std factor the adaptive rounds' held-out front errors ask for (`surrogate.front_scale`).
    """
    tasks = list(tasks)
    box = normalize_bounds(bounds, len(tasks))
    senses = task_senses(tasks, higher_is_better)
    samples, observed = np.asarray(samples, dtype=float), np.asarray(observed, dtype=float)
    if surrogates is None or set(surrogates) != set(tasks):
        surrogates = fit_surrogates(tasks, samples, observed, box, senses, family, link, front_samples, noise_variance,
                                    shared_variance, front_scale)
    surrogates = {t: surrogates[t] for t in tasks}
    if front is None:
        search_box = box if front_bounds is None else normalize_bounds(front_bounds, len(tasks))
        front = trusted_front([surrogates[t] for t in tasks], samples, observed, box, search_box, senses,
                              front_points, seed)
    fields = {f.name for f in dataclasses.fields(ExploreResult)}
    result = ExploreResult(
        tasks=tasks,
        bounds=box,
        senses=senses,
        samples=samples,
        observed=observed,
        surrogates=surrogates,
        seed=seed,
        **{k: v for k, v in front.items() if k in fields},
    )
    for name, value in front.items():  # front_* attributes that are not constructor fields
        if name not in fields:
            setattr(result, name, value)
    return result


