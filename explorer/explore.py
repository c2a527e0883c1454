"""The Python entry point: evaluate a design, fit surrogates, compute the amortized Pareto front.

`explore` works with any evaluator (a callable from coefficients to per-task metrics), so it is
not tied to one model family; the spec runner and the CLIP suite are built on top of it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .decision import Decision, decide
from .design import normalize_bounds, sample_design
from .errors import EvaluationError, SpecError
from .pareto import compute_front
from .surrogate import QuadraticSurrogate

#: Version of the surrogate and front code: part of the key of every cached front (front_cache.py).
#: Bump it whenever a change to the fit or the front search changes the front for the same points.
FIT_VERSION = "1"


def task_senses(tasks: Sequence[str], higher_is_better) -> np.ndarray:
    """+1 for metrics to maximise, -1 for metrics to minimise, in task order."""
    if isinstance(higher_is_better, Mapping):
        missing = [t for t in tasks if t not in higher_is_better]
        if missing:
            raise SpecError(f"higher_is_better has no entry for task {missing[0]!r}")
        flags = [bool(higher_is_better[t]) for t in tasks]
    elif isinstance(higher_is_better, (bool, np.bool_)):
        flags = [bool(higher_is_better)] * len(tasks)
    else:
        flags = [bool(x) for x in higher_is_better]
        if len(flags) != len(tasks):
            raise SpecError(f"higher_is_better has {len(flags)} entries for {len(tasks)} tasks")
    return np.where(flags, 1.0, -1.0)


def check_metrics(values: Mapping[str, float], tasks: Sequence[str], where: np.ndarray) -> np.ndarray:
    """Validate one evaluation result: every task present and finite."""
    if not isinstance(values, Mapping):
        raise EvaluationError(f"evaluate must return a {{task: float}} mapping, got {type(values).__name__}")
    out = np.empty(len(tasks))
    for i, task in enumerate(tasks):
        if task not in values:
            raise EvaluationError(f"evaluation at c={np.round(where, 4).tolist()} returned no metric for task {task!r}")
        v = float(values[task])
        if not np.isfinite(v):
            raise EvaluationError(f"evaluation of task {task!r} at c={np.round(where, 4).tolist()} returned {v}")
        out[i] = v
    return out


@dataclass
class ExploreResult:
    """Samples, measurements, surrogates and the amortized front of one exploration."""

    tasks: list[str]
    bounds: np.ndarray
    senses: np.ndarray
    samples: np.ndarray
    observed: np.ndarray
    surrogates: dict[str, QuadraticSurrogate]
    front_coefficients: np.ndarray
    front_predicted: np.ndarray
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def predict(self, coefficients: np.ndarray) -> np.ndarray:
        """Surrogate predictions (k, T) in task order."""
        c = np.atleast_2d(np.asarray(coefficients, dtype=float))
        return np.column_stack([self.surrogates[t].predict(c) for t in self.tasks])

    def decide(self, weights=None, minimums=None) -> Decision:
        """The front point matching importance `weights` and per-task `minimums` (see decision.decide)."""
        return decide(self.front_coefficients, self.front_predicted, self.senses, self.tasks, weights, minimums)

    def pick(self, weights=None, minimums=None) -> tuple[np.ndarray, np.ndarray]:
        """(coefficients (T,), predicted metrics (T,)) of the chosen front point."""
        d = self.decide(weights, minimums)
        return d.coefficients, d.predicted

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
) -> ExploreResult:
    """Fit one surrogate per task to (samples, observed) and compute the front inside the box.

    `front_bounds` widens (or narrows) the region searched for the front; by default it is the
    sampled box, so the front never extrapolates. `front` restores the `front_*` arrays of a
    front computed before for exactly these inputs (the store's cache, see front_cache.py):
    no front search runs then; `surrogates` ({task: fitted surrogate}, from the same cache) skips
    the fitting.
    """
    tasks = list(tasks)
    box = normalize_bounds(bounds, len(tasks))
    senses = task_senses(tasks, higher_is_better)
    if surrogates is None or set(surrogates) != set(tasks):
        surrogates = {}
        for i, task in enumerate(tasks):
            surrogates[task] = QuadraticSurrogate(link=link, higher_is_better=senses[i] > 0).fit(samples, observed[:, i])
    surrogates = {t: surrogates[t] for t in tasks}
    if front is None:
        search_box = box if front_bounds is None else normalize_bounds(front_bounds, len(tasks))
        found = compute_front([surrogates[t] for t in tasks], search_box, senses, max_points=front_points, seed=seed)
        front = {"front_coefficients": found.X, "front_predicted": -found.F * senses}
    fields = {f.name for f in dataclasses.fields(ExploreResult)}
    result = ExploreResult(
        tasks=tasks,
        bounds=box,
        senses=senses,
        samples=np.asarray(samples, dtype=float),
        observed=np.asarray(observed, dtype=float),
        surrogates=surrogates,
        seed=seed,
        **{k: v for k, v in front.items() if k in fields},
    )
    for name, value in front.items():  # front_* attributes that are not constructor fields
        if name not in fields:
            setattr(result, name, value)
    return result


def explore(
    evaluate: Callable[[np.ndarray], Mapping[str, float]],
    tasks: Sequence[str],
    bounds=(0.0, 1.0),
    budget: int | None = None,
    seed: int = 0,
    higher_is_better=True,
    *,
    link: str = "auto",
    progress: bool = False,
    front_points: int = 1000,
    front_bounds=None,
) -> ExploreResult:
    """Evaluate a seeded design, fit quadratic surrogates and return the amortized Pareto front.

    evaluate: takes a 1-D array of T coefficients, returns {task: metric}.
    bounds: one (lo, hi) pair for all tasks or one pair per task.
    budget: number of evaluations; None means MAP's default 2·(T+1)(T+2)/2.
    higher_is_better: bool, or one per task (sequence or mapping).
    """
    tasks = list(tasks)
    if len(tasks) < 2:
        raise SpecError(f"need at least 2 tasks to explore trade-offs, got {len(tasks)}")
    if len(set(tasks)) != len(tasks):
        raise SpecError("task names must be unique")
    design = sample_design(bounds, len(tasks), budget, seed)
    rows = []
    iterator = design
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(design, desc="evaluations", unit="pt")
    for c in iterator:
        rows.append(check_metrics(evaluate(c.copy()), tasks, c))
    return fit_result(tasks, design, np.array(rows), bounds, higher_is_better, seed, link, front_points, front_bounds)
