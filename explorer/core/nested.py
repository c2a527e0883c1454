"""Nested MAP for many tasks: pair similar tasks, solve 2-D fronts, pick by preference, merge, repeat.

A full quadratic needs O(T²) evaluations. Nested merging only ever solves two-objective problems:
at each level the current groups (single tasks at first) are paired by similarity; for a pair
(g, h) with merged coefficient vectors v_g, v_h (over the original tasks), the candidates are
a·v_g + b·v_h with (a, b) in `pair_bounds`; each group's objective is the preference-weighted
mean of its tasks' metrics. Two 2-D quadratic surrogates are fitted on a small design, their front
computed, and the point matching the pair's preference weights (sum of its tasks' weights, by the
achievement scalarising function of `explorer.decision`) becomes the new group. log₂T levels of
T/2, T/4, ... pairs cost about `pair_budget`·T evaluations in all; evaluations are cached by
coefficients, so several preferences share the first level (the pairing depends only on the
similarity, so every preference meets the same pairs; only the merged vectors differ above level 1).

Budget: `nested_evaluations` bounds what `nested_picks` spends for K preferences (every distinct
point, the picks included); `nested_picks(..., budget=B)` sizes each 2-D design (`pair_budget`,
6..16 points) to the largest that stays within B, so nested MAP can be compared with the
surrogate methods at equal evaluations (benchmarks/scaling.py).

Similarity: a (T, T) matrix (e.g. `task_vector_similarity`, cosine of task vectors), or by default
the measured transfer between experts: how much expert i gains on task j over the base, and back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from explorer.core.decision import achievement
from explorer.core.design import coefficient_key, sample_design
from explorer.core.metrics import check_metrics, task_senses
from explorer.core.pareto import compute_front
from explorer.core.surrogate import QuadraticSurrogate
from explorer.errors import SpecError

#: Points per 2-D design: the default, the fewest a 2-D quadratic (6 terms) can be fitted from, the most a budget buys.
DEFAULT_PAIR_BUDGET = 8
MIN_PAIR_BUDGET = 6
MAX_PAIR_BUDGET = 16


class CachedEvaluator:
    """Wraps `evaluate` so each coefficient vector is measured once; counts the real evaluations."""

    def __init__(self, evaluate: Callable[[np.ndarray], Mapping[str, float]], tasks: Sequence[str]):
        self.evaluate, self.tasks = evaluate, list(tasks)
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, c: np.ndarray) -> np.ndarray:
        key = coefficient_key(c)
        if key not in self.cache:
            self.cache[key] = check_metrics(self.evaluate(np.array(c, dtype=float)), self.tasks, c)
        return self.cache[key]

    @property
    def n_evaluations(self) -> int:
        return len(self.cache)


@dataclass
class NestedResult:
    """The merged coefficients for one preference, their measured metrics, and how they were built."""

    tasks: list[str]
    coefficients: np.ndarray
    measured: np.ndarray
    n_evaluations: int
    steps: list = field(default_factory=list)


def task_vector_similarity(task_vectors) -> np.ndarray:
    """Cosine similarity (T, T) of the flattened task vectors of an `explorer.merging.task_vectors.TaskVectors`."""
    t = task_vectors.n_tasks
    gram = np.zeros((t, t))
    for v in task_vectors.vectors.values():
        flat = v.reshape(t, -1).double()
        gram += (flat @ flat.T).numpy()
    norm = np.sqrt(np.diag(gram)) + 1e-12
    return gram / norm[:, None] / norm[None, :]


def transfer_similarity(measure: Callable[[np.ndarray], np.ndarray], n_tasks: int, senses: np.ndarray) -> np.ndarray:
    """sim(i, j): gain of expert i on task j over the base plus the reverse (metric units, signed by sense)."""
    base = measure(np.zeros(n_tasks)) * senses
    experts = np.array([measure(np.eye(n_tasks)[i]) * senses for i in range(n_tasks)])  # row i: expert i on every task
    gain = experts - base[None, :]
    sim = gain + gain.T
    np.fill_diagonal(sim, np.inf)
    return sim


def pair_groups(groups: list[list[int]], sim: np.ndarray) -> tuple[list[tuple[int, int]], list[int]]:
    """Greedy matching: repeatedly pair the two most similar unpaired groups. Returns (pairs, leftover)."""
    n = len(groups)
    score = np.full((n, n), -np.inf)
    for a in range(n):
        for b in range(a + 1, n):
            score[a, b] = np.mean([sim[i, j] for i in groups[a] for j in groups[b]])
    free, pairs = set(range(n)), []
    while len(free) >= 2:
        sub = sorted(free)
        best = max(((a, b) for a in sub for b in sub if a < b), key=lambda p: (score[p], -p[0], -p[1]))
        pairs.append(best)
        free -= set(best)
    return pairs, sorted(free)


def pair_counts(n_tasks: int) -> tuple[int, int]:
    """(pairs at the first level, pairs at all later levels) of the pairing tree over `n_tasks` tasks."""
    first, later, groups = n_tasks // 2, 0, n_tasks - n_tasks // 2
    while groups > 1:
        later += groups // 2
        groups -= groups // 2
    return first, later


def nested_evaluations(n_tasks: int, n_preferences: int = 1, pair_budget: int = DEFAULT_PAIR_BUDGET,
                       pair_bounds=(0.0, 1.0)) -> int:
    """Most distinct evaluations `nested_picks` spends on `n_preferences` preferences (an upper bound).

    Base and experts (T + 1, the transfer similarity); the first level's pairs, shared by every
    preference; per preference the later levels' pairs and the pick itself. With `pair_bounds`
    (0, 1) the 2-D design's corners (0, 0), (1, 0), (0, 1) are the base and the two merged
    vectors: free at the first level (experts), the base free above it.
    """
    first, later = pair_counts(n_tasks)
    unit = tuple(float(x) for x in pair_bounds) == (0.0, 1.0)
    return (1 + n_tasks + first * (pair_budget - (3 if unit else 0))
            + n_preferences * (later * (pair_budget - (1 if unit else 0)) + 1))


def pair_budget_for(n_tasks: int, n_preferences: int, budget: int, pair_bounds=(0.0, 1.0)) -> int:
    """The largest 2-D design size (MIN_PAIR_BUDGET..MAX_PAIR_BUDGET) whose `nested_evaluations` fits `budget`."""
    fits = [p for p in range(MIN_PAIR_BUDGET, MAX_PAIR_BUDGET + 1)
            if nested_evaluations(n_tasks, n_preferences, p, pair_bounds) <= budget]
    if not fits:
        need = nested_evaluations(n_tasks, n_preferences, MIN_PAIR_BUDGET, pair_bounds)
        raise SpecError(f"nested MAP over {n_tasks} tasks for {n_preferences} preferences needs up to {need} "
                        f"evaluations; the budget is {budget}")
    return max(fits)


def nested_merge(
    evaluate: Callable[[np.ndarray], Mapping[str, float]],
    tasks: Sequence[str],
    weights=None,
    *,
    similarity: np.ndarray | None = None,
    pair_bounds=(0.0, 1.0),
    pair_budget: int | None = None,
    higher_is_better=True,
    seed: int = 0,
    cache: CachedEvaluator | None = None,
) -> NestedResult:
    """One merged model for the preference `weights` (importance per task, default equal).

    evaluate: as for `explore` (coefficients over all T tasks -> {task: metric}).
    pair_budget: design size of each 2-D problem (default 8: the 2-D quadratic has 6 terms; at least 6).
    cache: share a `CachedEvaluator` between calls (e.g. several preferences) to reuse evaluations.
    """
    tasks = list(tasks)
    t = len(tasks)
    if t < 2:
        raise SpecError(f"need at least 2 tasks to merge, got {t}")
    senses = task_senses(tasks, higher_is_better)
    w = np.ones(t) if weights is None else np.asarray([weights[k] for k in tasks] if isinstance(weights, Mapping) else weights, dtype=float)
    if w.shape != (t,) or np.any(w < 0) or not np.any(w > 0):
        raise SpecError(f"weights must be {t} non-negative numbers, not all zero")
    w = np.maximum(w / w.sum(), 1e-6)
    measure = cache or CachedEvaluator(evaluate, tasks)
    sim = np.asarray(similarity, dtype=float) if similarity is not None else transfer_similarity(measure, t, senses)
    pair_budget = DEFAULT_PAIR_BUDGET if pair_budget is None else int(pair_budget)
    if pair_budget < MIN_PAIR_BUDGET:
        raise SpecError(f"pair_budget {pair_budget} is below the {MIN_PAIR_BUDGET} points a 2-D quadratic needs")
    design = sample_design(pair_bounds, 2, pair_budget, seed)  # (a, b) pairs, the same for every pair

    groups = [[i] for i in range(t)]
    vectors = [np.eye(t)[i] for i in range(t)]
    steps = []
    while len(groups) > 1:
        pairs, leftover = pair_groups(groups, sim)
        new_groups, new_vectors = [], []
        for ga, gb in pairs:
            members = (groups[ga], groups[gb])
            va, vb = vectors[ga], vectors[gb]
            points = np.array([a * va + b * vb for a, b in design])
            metrics = np.array([measure(c) for c in points]) * senses  # goodness, larger is better
            objectives = np.column_stack([metrics[:, m] @ w[m] / w[m].sum() for m in members])
            surrogates = [QuadraticSurrogate(link="identity", gauss_newton_steps=0).fit(design, objectives[:, k]) for k in range(2)]
            front = compute_front(surrogates, np.asarray([pair_bounds, pair_bounds], dtype=float), np.ones(2),
                                  n_candidates=512, max_points=200, seed=seed)
            pref = np.array([w[members[0]].sum(), w[members[1]].sum()])
            best = int(np.argmin(achievement(-front.F, pref)))
            a, b = front.X[best]
            new_groups.append(members[0] + members[1])
            new_vectors.append(a * va + b * vb)
            steps.append({"merged": [[tasks[i] for i in m] for m in members], "a": float(a), "b": float(b)})
        for g in leftover:
            new_groups.append(groups[g])
            new_vectors.append(vectors[g])
        groups, vectors = new_groups, new_vectors
    coefficients = vectors[0]
    return NestedResult(tasks, coefficients, measure(coefficients), measure.n_evaluations, steps)


def nested_picks(evaluate, tasks: Sequence[str], preferences: Sequence, *, budget: int | None = None,
                 **kwargs) -> tuple[list[NestedResult], int]:
    """`nested_merge` for several preferences sharing one evaluation cache; returns (results, total evaluations).

    budget: most distinct evaluations in all (picks included): sets `pair_budget` by `pair_budget_for`
    (SpecError if even the smallest 2-D designs do not fit); None: `pair_budget` as given or the default.
    """
    if budget is not None:
        if kwargs.get("pair_budget") is not None:
            raise SpecError("give nested_picks a budget or a pair_budget, not both")
        kwargs["pair_budget"] = pair_budget_for(len(tasks), len(preferences), budget, kwargs.get("pair_bounds", (0.0, 1.0)))
    cache = CachedEvaluator(evaluate, list(tasks))
    results = [nested_merge(evaluate, tasks, p, cache=cache, **kwargs) for p in preferences]
    return results, cache.n_evaluations
