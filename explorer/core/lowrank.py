"""A cheaper surrogate for many tasks: a diagonal-plus-low-rank quadratic, and the rule for which method runs.

A full quadratic in T coefficients has P = (T+1)(T+2)/2 terms (231 at T = 20), so MAP's 2P budget
grows as T². In MAP's derivation A = VᵀHV (V the task vectors, H the Hessian of the metric): the
interactions between tasks come through a few directions of H that matter, so

    z(c) = e + bᵀc + ½ Σᵢ aᵢcᵢ² + ½ Σₖ sₖ (uₖᵀc)²,    A = diag(a) + Σₖ sₖ uₖuₖᵀ,  sₖ = ±1,

has 1 + 2T + rT parameters (rank r), linear in T. It is fitted in metric units through the same
links as `QuadraticSurrogate` by nonlinear least squares, starting from the leading eigenvectors
of a heavily regularised full-quadratic fit. It is a `QuadraticSurrogate` (its `coef_` is the same
quadratic in the same feature basis), so fronts, decisions, figures and exports take it unchanged.

Which method runs (`choose_method`), for T tasks, an evaluation budget B (default
`DEFAULT_MAX_EVALUATIONS`, every distinct point counted, the picks included) and K preferences
(default 10, the benchmark's), in this order:
- "full", T ≤ 8 and B ≥ 2P (P = (T+1)(T+2)/2, MAP's budget): the default exploration
  (`explore(design="auto")`: space-filling below 4 tasks, adaptive from 4 on, surrogate family
  per task). benchmarks/results/scaling.md, rows T = 2..8: at 2P it is closer to the front than
  Nested MAP spending 2-3x more (T = 8: 0.10 points at 100 evaluations vs 0.50 at 249), and
  benchmark-partial.md measures it 10-30x closer than plain MAP, grid, random, NSGA-II and TPE at
  equal evaluations on the analytic landscapes and the 8-task testbeds (on the two demo zoos every
  method ends within 0.2 points, said in the README);
- "nested", B ≥ `nested_evaluations(T, K, 6)` (Nested MAP's smallest 2-D designs fit: 236 at
  T = 10, 291 at 12, 401 at 16, 511 at 20 for K = 10): scaling.md's equal-evaluation table, every
  cell where it can run (T = 10, 12 at B = 300; T = 10..20 at B = 600) puts it first, 3.8-6.9
  points closer to the front than the better quadratic at the same B (0.36-0.85 points);
- "full", B ≥ P + 1 + K (a full quadratic fits B − K design points): the same table's cells
  where nested cannot run yet and both fit, T = 10 at B = 100 (8.4 vs 13.6 points) and T = 16 at
  B = 300 (3.7 vs 4.5), have the full quadratic closer than the low-rank one at equal evaluations
  (where nested runs, the two are within 0.5 points either way);
- "lowrank", B ≥ 2 + 4T + K (the rank-2 quadratic's 1 + 4T parameters, plus one, plus the picks):
  the only method that fits (T = 12..20 at B = 100);
- below that no method fits B: `SpecError`.
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import qmc

from explorer.core.design import corner_points, n_quadratic_terms, normalize_bounds
from explorer.core.links import link_forward, link_inverse, link_inverse_derivative
from explorer.core.metrics import check_metrics, task_senses
from explorer.core.nested import MIN_PAIR_BUDGET, nested_evaluations
from explorer.core.pareto import compute_front
from explorer.core.result import ExploreResult
from explorer.core.surrogate import QuadraticSurrogate, quadratic_features, r2_score
from explorer.errors import SpecError

DEFAULT_MAX_EVALUATIONS = 100
DEFAULT_RANK = 2
#: Preferences the budget of `choose_method` serves (the benchmark's and `merge-explorer compare`'s 10).
DEFAULT_PREFERENCES = 10
#: Largest T for which "full" means the default exploration measured in benchmark-partial.md.
FULL_EXPLORE_MAX_TASKS = 8


def n_lowrank_terms(n_tasks: int, rank: int = DEFAULT_RANK) -> int:
    """Parameters of the diagonal-plus-rank-r quadratic: 1 + 2T + rT."""
    return 1 + 2 * n_tasks + rank * n_tasks


def choose_method(n_tasks: int, budget: int | None = None, rank: int = DEFAULT_RANK,
                  n_preferences: int = DEFAULT_PREFERENCES) -> str:
    """'full', 'lowrank' or 'nested' for `n_tasks` tasks, `budget` evaluations in all (picks included)
    and `n_preferences` picks: the method closest to the front at equal evaluations in
    benchmarks/results/scaling.md (see the module docstring for the rows behind each branch)."""
    b = DEFAULT_MAX_EVALUATIONS if budget is None else int(budget)
    p = n_quadratic_terms(n_tasks)
    if n_tasks <= FULL_EXPLORE_MAX_TASKS and b >= 2 * p:
        return "full"
    if b >= nested_evaluations(n_tasks, n_preferences, MIN_PAIR_BUDGET):
        return "nested"
    if b >= p + 1 + n_preferences:
        return "full"
    if b >= n_lowrank_terms(n_tasks, rank) + 1 + n_preferences:
        return "lowrank"
    raise SpecError(f"a budget of {b} evaluations is too small for {n_tasks} tasks and {n_preferences} preferences: "
                    f"the low-rank quadratic needs {n_lowrank_terms(n_tasks, rank) + 1 + n_preferences}")


def lowrank_design(bounds, n_tasks: int, budget: int, seed: int = 0) -> np.ndarray:
    """Corners (base, experts, equal weights) then scrambled Sobol points: `budget` rows."""
    box = normalize_bounds(bounds, n_tasks)
    corners = corner_points(box)[:budget]
    n_fill = budget - len(corners)
    if n_fill <= 0:
        return corners
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        unit = qmc.Sobol(d=n_tasks, scramble=True, seed=seed).random(n_fill)
    return np.vstack([corners, qmc.scale(unit, box[:, 0], box[:, 1])])


class LowRankQuadraticSurrogate(QuadraticSurrogate):
    """Diagonal-plus-rank-r quadratic in the merge coefficients, with a link for bounded metrics.

    rank: number of interaction directions r. alpha: ridge penalty on all non-constant parameters.
    Fitted attributes as `QuadraticSurrogate` (`coef_`, `A_`, `b_`, `e_`, `link_`, `r2_cv_` by
    k-fold cross-validation with at most `cv_folds` folds), plus `U_` (r, T) and `signs_` (r,).
    """

    def __init__(self, rank: int = DEFAULT_RANK, link: str = "auto", alpha: float = 1e-4, higher_is_better: bool = True,
                 cv_folds: int = 5):
        super().__init__(link=link, alpha=alpha, higher_is_better=higher_is_better, gauss_newton_steps=0)
        self.rank = rank
        self.cv_folds = cv_folds

    def fit(self, coefficients: np.ndarray, metric: np.ndarray) -> "LowRankQuadraticSurrogate":
        c, y, link = self._validated(coefficients, metric)
        self.link_, self.n_tasks_, self.n_samples_ = link, c.shape[1], len(y)
        theta, signs = self._fit_params(c, y, link)
        self.coef_, self.U_, self.signs_ = self._to_coef(theta, signs, c.shape[1]), *self._split(theta, c.shape[1])[3:], signs
        self._set_quadratic_form()
        self.r2_train_ = r2_score(y, self.predict(c))
        self.r2_cv_ = self._kfold_r2(c, y, link)
        return self

    def _split(self, theta: np.ndarray, t: int):
        e, b, a = theta[0], theta[1 : 1 + t], theta[1 + t : 1 + 2 * t]
        U = theta[1 + 2 * t :].reshape(self.rank, t)
        return e, b, a, U

    def _to_coef(self, theta: np.ndarray, signs: np.ndarray, t: int) -> np.ndarray:
        e, b, a, U = self._split(theta, t)
        A = np.diag(a) + (U.T * signs) @ U
        iu, ju = np.triu_indices(t, k=1)
        return np.concatenate([[e], b, 0.5 * np.diag(A), A[iu, ju]])

    def _initial(self, c: np.ndarray, y: np.ndarray, link: str) -> tuple[np.ndarray, np.ndarray]:
        """Start from a ridge full-quadratic fit in link space: its diagonal and leading interactions."""
        t = c.shape[1]
        x = quadratic_features(c)
        scale = np.sqrt(np.mean(x**2, axis=0)) + 1e-12
        xs = x / scale
        penalty = 1e-2 * len(y) * np.eye(x.shape[1])
        penalty[0, 0] = 0.0
        w = np.linalg.solve(xs.T @ xs + penalty, xs.T @ link_forward(link, y)) / scale
        iu, ju = np.triu_indices(t, k=1)
        A = np.zeros((t, t))
        A[iu, ju] = w[1 + 2 * t :]
        A = A + A.T
        vals, vecs = np.linalg.eigh(A)
        top = np.argsort(-np.abs(vals))[: self.rank]
        signs = np.where(vals[top] >= 0, 1.0, -1.0)
        U = (vecs[:, top] * np.sqrt(np.abs(vals[top]) + 1e-6)).T
        a = 2.0 * w[1 + t : 1 + 2 * t] - np.sum(signs[:, None] * U**2, axis=0)
        return np.concatenate([[w[0]], w[1 : 1 + t], a, U.ravel()]), signs

    def _fit_params(self, c: np.ndarray, y: np.ndarray, link: str) -> tuple[np.ndarray, np.ndarray]:
        t = c.shape[1]
        theta0, signs = self._initial(c, y, link)
        sq = 0.5 * c**2
        ridge = np.sqrt(self.alpha * len(y))

        def z_of(theta):
            e, b, a, U = self._split(theta, t)
            proj = c @ U.T  # (n, r)
            return e + c @ b + sq @ a + 0.5 * (proj**2) @ signs, proj

        def residuals(theta):
            z, _ = z_of(theta)
            return np.concatenate([link_inverse(link, z) - y, ridge * theta[1:]])

        def jacobian(theta):
            z, proj = z_of(theta)
            d = link_inverse_derivative(link, z)[:, None]
            du = (signs * proj)[:, :, None] * c[:, None, :]  # (n, r, T)
            J = np.hstack([np.ones((len(y), 1)), c, sq, du.reshape(len(y), -1)]) * d
            R = np.hstack([np.zeros((len(theta) - 1, 1)), ridge * np.eye(len(theta) - 1)])
            return np.vstack([J, R])

        sol = least_squares(residuals, theta0, jac=jacobian, method="trf", max_nfev=200, x_scale="jac")
        return sol.x, signs

    def _kfold_r2(self, c: np.ndarray, y: np.ndarray, link: str) -> float:
        n = len(y)
        if n < 2 * self.cv_folds or n <= n_lowrank_terms(c.shape[1], self.rank):
            return float("nan")
        folds = np.arange(n) % self.cv_folds
        held = np.empty(n)
        for k in range(self.cv_folds):
            test = folds == k
            theta, signs = self._fit_params(c[~test], y[~test], link)
            held[test] = link_inverse(link, quadratic_features(c[test]) @ self._to_coef(theta, signs, c.shape[1]))
        return r2_score(y, held)


def explore_lowrank(
    evaluate: Callable[[np.ndarray], Mapping[str, float]],
    tasks: Sequence[str],
    bounds=(0.0, 1.0),
    budget: int | None = None,
    seed: int = 0,
    higher_is_better=True,
    *,
    rank: int = DEFAULT_RANK,
    front_points: int = 1000,
) -> ExploreResult:
    """`explore` with diagonal-plus-low-rank surrogates: default budget 2·(1 + 2T + rT) evaluations."""
    tasks = list(tasks)
    t = len(tasks)
    if t < 2:
        raise SpecError(f"need at least 2 tasks to explore trade-offs, got {t}")
    need = n_lowrank_terms(t, rank)
    budget = 2 * need if budget is None else int(budget)
    if budget < need + 1:
        raise SpecError(f"budget {budget} is smaller than the {need + 1} evaluations a rank-{rank} surrogate over {t} tasks needs")
    box = normalize_bounds(bounds, t)
    C = lowrank_design(box, t, budget, seed)
    Y = np.array([check_metrics(evaluate(c.copy()), tasks, c) for c in C])
    return fit_lowrank_result(tasks, C, Y, box, higher_is_better, seed, rank, front_points)


def fit_lowrank_result(tasks, samples, observed, bounds, higher_is_better=True, seed: int = 0,
                       rank: int = DEFAULT_RANK, front_points: int = 1000) -> ExploreResult:
    """Fit a low-rank surrogate per task and compute the front inside `bounds`."""
    tasks = list(tasks)
    box = normalize_bounds(bounds, len(tasks))
    senses = task_senses(tasks, higher_is_better)
    surrogates = {task: LowRankQuadraticSurrogate(rank=rank, higher_is_better=senses[i] > 0).fit(samples, observed[:, i])
                  for i, task in enumerate(tasks)}
    front = compute_front([surrogates[t] for t in tasks], box, senses, max_points=front_points, seed=seed)
    return ExploreResult(tasks=tasks, bounds=box, senses=senses, samples=np.asarray(samples, dtype=float),
                         observed=np.asarray(observed, dtype=float), surrogates=surrogates,
                         front_coefficients=front.X, front_predicted=-front.F * senses, seed=seed,
                         extra={"method": "lowrank", "rank": rank})
