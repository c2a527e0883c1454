"""Adaptive sampling: spend evaluations where the surrogates are uncertain or wrong near the front.

MAP spends its whole budget on a space-filling design, but only the region around the Pareto front
matters to the user, and a quadratic fitted to the whole box is biased exactly there. Here a
smaller space-filling design comes first; then, in rounds,

1. the surrogates are fitted to everything measured so far and their front is computed;
2. candidates (a Sobol set over the box plus jittered front points) are scored by
   uncertainty × closeness to the front. Uncertainty combines the spread of a Bayesian-bootstrap
   ensemble of quadratics (Dirichlet row weights, so no refit is ever rank-deficient) with the
   leave-one-out error of nearby measurements ("most wrong"); closeness is exp(−gap/σ), where gap
   is how far the predicted front dominates the candidate and σ its uncertainty, so a point counts
   as "near the front" when it could be on it;
3. a batch is picked greedily, each pick damping the scores around it (and around every measured
   point), so a batch spreads along the front instead of piling up;
4. the batch is measured and, before refitting, its error under the previous surrogates is the
   held-out error near the front: when it falls below `tol` (metric units), sampling stops.

Unlike MAP's reference Bayesian mode, every measurement is kept (nothing is overwritten between
rounds), acquisition is a deterministic argmax (no near-uniform softmax), and regions with no
samples have the largest bootstrap spread, so they are explored rather than ignored.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import qmc

from .design import default_budget, n_quadratic_terms, normalize_bounds, sample_design
from .errors import SpecError
from .explore import ExploreResult, check_metrics, fit_result, task_senses
from .pareto import compute_front
from .surrogate import QuadraticSurrogate, _forward, _inverse, choose_link, quadratic_features


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
        self._pending_prediction: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.senses)

    def initial_design(self) -> np.ndarray:
        return sample_design(self.bounds, self.n_tasks, self.initial, self.seed)

    # --- fitting -----------------------------------------------------------------------------
    def _links(self, Y: np.ndarray) -> list[str]:
        return [choose_link(Y[:, i], self.senses[i] > 0) if self.link == "auto" else self.link for i in range(self.n_tasks)]

    def fit(self, C: np.ndarray, Y: np.ndarray) -> list[QuadraticSurrogate]:
        return [QuadraticSurrogate(link=self.link, higher_is_better=self.senses[i] > 0).fit(C, Y[:, i])
                for i in range(self.n_tasks)]

    def _ensemble(self, C: np.ndarray, Y: np.ndarray, links: list[str], rng) -> np.ndarray:
        """Bootstrap weights (B, P, T): ridge fits in link space with Dirichlet row weights."""
        X = quadratic_features(C)
        scale = np.sqrt(np.mean(X**2, axis=0)) + 1e-12
        Xs = X / scale
        Z = np.column_stack([_forward(l, Y[:, i]) for i, l in enumerate(links)])
        n, p = Xs.shape
        penalty = 1e-6 * n * np.eye(p)
        penalty[0, 0] = 0.0
        W = rng.dirichlet(np.ones(n), self.n_bootstrap) * n  # (B, n), mean weight 1
        gram = np.einsum("bn,np,nq->bpq", W, Xs, Xs) + penalty
        rhs = np.einsum("bn,np,nt->bpt", W, Xs, Z)
        return np.linalg.solve(gram, rhs) / scale[None, :, None]

    @staticmethod
    def _loo_errors(C: np.ndarray, Y: np.ndarray, surrogates) -> np.ndarray:
        """Per measured point, the leave-one-out error (metric units, RMS over tasks) of a linked fit."""
        X = quadratic_features(C)
        scale = np.sqrt(np.mean(X**2, axis=0)) + 1e-12
        Xs = X / scale
        n, p = Xs.shape
        if n <= p:
            return np.zeros(n)
        penalty = 1e-6 * n * np.eye(p)
        penalty[0, 0] = 0.0
        H = Xs @ np.linalg.solve(Xs.T @ Xs + penalty, Xs.T)
        h = np.clip(np.diag(H), 0.0, 0.99)
        errs = []
        for i, s in enumerate(surrogates):
            z = _forward(s.link_, Y[:, i])
            z_loo = z - (z - H @ z) / (1.0 - h)
            errs.append(Y[:, i] - _inverse(s.link_, z_loo))
        return np.sqrt(np.mean(np.square(errs), axis=0))

    # --- acquisition -------------------------------------------------------------------------
    def propose(self, C: np.ndarray, Y: np.ndarray, k: int | None = None) -> np.ndarray:
        """The next batch (k, T) given measured coefficients C (n, T) and metrics Y (n, T)."""
        C, Y = np.asarray(C, dtype=float), np.asarray(Y, dtype=float)
        k = self.batch if k is None else k
        round_no = len(self.history)
        rng = np.random.default_rng([self.seed, round_no, len(C)])
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        width = hi - lo
        surrogates = self.fit(C, Y)
        front = compute_front(surrogates, self.bounds, self.senses, n_candidates=1024, max_points=200, seed=self.seed + round_no)
        front_good = -front.F  # goodness (larger is better) of the predicted front

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unit = qmc.Sobol(d=self.n_tasks, scramble=True, seed=rng.integers(2**31)).random(self.n_candidates)
        jitter = front.X[rng.integers(len(front.X), size=self.n_candidates)] + rng.normal(0, 0.04, (self.n_candidates, self.n_tasks)) * width
        cand = np.vstack([lo + unit * width, np.clip(jitter, lo, hi), front.X])

        links = [s.link_ for s in surrogates]
        ens = self._ensemble(C, Y, links, rng)  # (B, P, T)
        Zc = np.einsum("np,bpt->bnt", quadratic_features(cand), ens)
        Pc = np.stack([_inverse(l, Zc[..., i]) for i, l in enumerate(links)], axis=-1)  # (B, n, T)
        spread = Pc.std(axis=0)  # (n, T)
        mean = np.column_stack([s.predict(cand) for s in surrogates])

        # "most wrong": leave-one-out error of nearby measurements, kernel-weighted in the unit box
        loo = self._loo_errors(C, Y, surrogates)
        rho = 0.15 * math.sqrt(self.n_tasks)
        Uc, Us = (cand - lo) / width, (C - lo) / width
        d2 = ((Uc[:, None, :] - Us[None, :, :]) ** 2).sum(axis=2)
        kern = np.exp(-d2 / (2 * rho**2))
        misfit = (kern @ loo) / (kern.sum(axis=1) + 1e-12)

        sigma = np.sqrt(np.sum(spread**2, axis=1) + misfit**2)
        good = mean * self.senses
        gap = np.linalg.norm(np.maximum(front_good[None, :, :] - good[:, None, :], 0.0), axis=2).min(axis=1)
        score = sigma * np.exp(-gap / (sigma + 1e-3))

        # never re-measure: damp candidates near measured points, then pick greedily with damping
        near = 0.05 * math.sqrt(self.n_tasks)
        score = score * np.prod(1.0 - np.exp(-d2 / (2 * near**2)), axis=1)
        chosen = []
        for _ in range(k):
            i = int(np.argmax(score))
            if score[i] <= 0:
                break
            chosen.append(i)
            score = score * (1.0 - np.exp(-((Uc - Uc[i]) ** 2).sum(axis=1) / (2 * near**2)))
        batch = cand[chosen]
        self._pending_prediction = (batch.copy(), np.column_stack([s.predict(batch) for s in surrogates]))
        return batch

    def record(self, batch: np.ndarray, measured: np.ndarray, n_total: int) -> float:
        """Held-out RMS error (metric units) of the last proposal's predictions; appends to history."""
        err = float("nan")
        if self._pending_prediction is not None and len(batch):
            _, predicted = self._pending_prediction
            err = float(np.sqrt(np.mean((np.asarray(measured) - predicted) ** 2)))
        self.history.append({"round": len(self.history) + 1, "n_evaluations": int(n_total), "held_out_rmse": err,
                             "batch": int(len(batch))})
        self._pending_prediction = None
        return err

    def converged(self) -> bool:
        """True when the last round's held-out error is below `tol`, or no longer falling.

        The second case is a quadratic that is as good as it gets near the front (its remaining
        error is bias, which more samples do not remove): a round whose error is not at least
        10 % below the best earlier round ends sampling.
        """
        errs = [h["held_out_rmse"] for h in self.history if np.isfinite(h["held_out_rmse"])]
        if not errs:
            return False
        if errs[-1] < self.tol:
            return True
        return len(errs) >= 2 and errs[-1] >= 0.9 * min(errs[:-1])


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
                              default_batch(t) if batch is None else int(batch), tol, seed=seed, link=link)
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
        if callback:
            callback(C, Y)
        while len(C) < budget:
            new = sampler.propose(C, Y, min(sampler.batch, budget - len(C)))
            if len(new) == 0:
                break
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
    result = fit_result(tasks, C, Y, bounds, higher_is_better, seed, link, front_points, front_bounds)
    result.extra["adaptive"] = sampler.history
    return result


def run_adaptive(experiment, budget: int | None = None, progress: bool = True, executor=None, *,
                 initial: int | None = None, batch: int | None = None, tol: float = 0.005) -> ExploreResult:
    """Adaptive sampling for a spec `Experiment`, through the store (resumable) and an executor.

    Everything already measured in the box counts towards the budget, so a rerun continues where
    the last one stopped. Initial points are stored with kind "design", later ones "adaptive".
    """
    from .executors import evaluate_points

    t = len(experiment.tasks)
    budget = budget if budget is not None else (experiment.spec.budget or default_budget(t))
    initial = min(default_initial(t), budget) if initial is None else int(initial)
    sampler = AdaptiveSampler(experiment.bounds, experiment.senses, budget, initial,
                              default_batch(t) if batch is None else int(batch), tol, seed=experiment.spec.seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc="evaluations", unit="pt", dynamic_ncols=True)
    try:
        start = [(c, "design") for c in sampler.initial_design()]
        start += [(c, "reference") for c in experiment.reference_points()]
        evaluate_points(experiment, start, executor, bar)
        while True:
            C, Y = _fit_points(experiment)
            if len(C) >= budget:
                break
            new = sampler.propose(C, Y, min(sampler.batch, budget - len(C)))
            if len(new) == 0:
                break
            evaluate_points(experiment, [(c, "adaptive") for c in new], executor, bar)
            measured = np.array([experiment.evaluate(c, "adaptive") for c in new])  # read back from the store
            sampler.record(new, measured, len(C) + len(new))
            if sampler.converged():
                break
    finally:
        if bar:
            bar.close()
    result = experiment.finish()
    result.extra["adaptive"] = sampler.history
    return result


def _fit_points(experiment) -> tuple[np.ndarray, np.ndarray]:
    from .runner import FIT_KINDS

    C, M, _ = experiment.measured(FIT_KINDS)
    if len(C):
        b = experiment.bounds
        inside = np.all((C >= b[:, 0] - 1e-12) & (C <= b[:, 1] + 1e-12), axis=1)
        C, M = C[inside], M[inside]
        order = np.lexsort(C.T[::-1])  # store order depends on which worker finished first; the fit must not
        C, M = C[order], M[order]
    return C, M
