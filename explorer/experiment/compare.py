"""Fronts of several merge methods on one store, judged side by side on measured values.

The choice of merging method moves every task more than most trade-offs within one method do, so
a user should see each method's front, not only task arithmetic's. `compare` runs MAP once per
method on the same checkpoints and store: the base (c = 0, θ₀ for every method) is measured once
and shared, and the experts (task arithmetic's c = eᵢ) once. For each method it reports the best
equal-weight merge it measured, how far its front reaches per task and how well its surrogates fit;
then, for each of a fixed set of preferences, every method's pick is measured for real (kind
"verify", stored and counted) and the preference's achievement function, on a scale common to all
methods, says whose pick is best.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from explorer.core.decision import achievement, preference_set
from explorer.core.result import ExploreResult
from explorer.errors import SpecError
from explorer.experiment.experiment import Experiment
from explorer.merging.methods.registry import method_names


@dataclass
class MethodRun:
    """One method's run: its experiment, result, and what it cost."""

    method: str
    experiment: Experiment
    result: ExploreResult
    evaluations: int                      # points this method's run measured (the shared base: by the first only)
    best_equal: tuple[float, np.ndarray] | None  # (λ, metrics) of its best measured equal-weight merge

    def reach(self) -> np.ndarray:
        """Per task, the best value its vouched-for front predicts (metric units)."""
        rows = self.result.front_trusted if np.any(self.result.front_trusted) else slice(None)
        good = self.result.front_predicted[rows] * self.result.senses
        return good.max(axis=0) * self.result.senses

    def fit_r2(self) -> np.ndarray:
        return np.array([self.result.surrogates[t].r2_cv_ for t in self.result.tasks])


@dataclass
class Comparison:
    """The methods' runs, the preferences, each method's measured pick per preference and the winner."""

    tasks: list[str]
    senses: np.ndarray
    runs: list[MethodRun]
    weights: np.ndarray                        # (n, T) preferences
    picks: dict[str, np.ndarray] = field(default_factory=dict)     # method -> (n, T) coefficients
    measured: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (n, T) measured metrics
    pick_evaluations: dict[str, int] = field(default_factory=dict)  # method -> new points its picks cost
    scores: np.ndarray | None = None           # (n, methods) achievement on measured values, lower is better
    references: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        """Every real evaluation (points, each on every task): the methods' runs and their measured picks
        (a pick the store already had costs nothing)."""
        return sum(r.evaluations for r in self.runs) + sum(self.pick_evaluations.values())

    def winners(self) -> list[str]:
        return [self.runs[int(np.argmin(row))].method for row in self.scores]


def _equal_weight_points(experiment: Experiment) -> tuple[float, np.ndarray] | None:
    """(λ, metrics) of the best measured point with all cᵢ equal (> 0): the experiment's own reference."""
    refs = experiment.references()
    if "task_arithmetic" not in refs:
        return None
    return float(refs["task_arithmetic_lambda"][0]), refs["task_arithmetic"]


def compare(spec_path, methods: Sequence[str], store_path=None, budget: int | None = None, progress: bool = True,
            executor=None, n_preferences: int = 10, seed: int = 0, device: str | None = None,
            log: Callable[[str], None] = print) -> Comparison:
    """Run MAP for each merge method on the spec's checkpoints and store; measure every method's pick
    for each of `n_preferences` preferences (equal weights, then seeded Dirichlet draws)."""
    methods = list(dict.fromkeys(methods))
    known = method_names()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SpecError(f"--methods: unknown merge method {unknown[0]!r} (methods: {', '.join(known)})")
    if len(methods) < 2:
        raise SpecError("--methods: name at least two merge methods to compare")
    runs = []
    for method in methods:
        exp = Experiment.from_file(spec_path, store_path=store_path, device=device, method=method)
        before = exp.store.count(exp.key)
        log(f"compare: {method} ({before // len(exp.tasks)} points already in the store)")
        result = exp.run(budget=budget, progress=progress, executor=executor)
        measured = (exp.store.count(exp.key) - before) // len(exp.tasks)  # the shared base is not stored again
        runs.append(MethodRun(method, exp, result, measured, _equal_weight_points(exp)))
        exp.release()  # one model in memory at a time
    first = runs[0]
    cmp = Comparison(first.result.tasks, first.result.senses, runs, preference_set(len(first.result.tasks),
                                                                                      n_preferences, seed))
    for run in runs:
        picks = np.array([run.result.decide(weights=w).coefficients for w in cmp.weights])
        before = run.experiment.store.count(run.experiment.key)
        cmp.picks[run.method] = picks
        cmp.measured[run.method] = np.array([run.experiment.evaluate(c, kind="verify") for c in picks])
        cmp.pick_evaluations[run.method] = (run.experiment.store.count(run.experiment.key) - before) // len(cmp.tasks)
        run.experiment.release()
    # one scale for every method: the ideal and nadir of everything measured by any of them
    every = np.vstack([r.experiment.measured()[1] for r in runs]) * cmp.senses
    cmp.scores = np.column_stack([
        [achievement((cmp.measured[r.method][i] * cmp.senses)[None], w, every)[0] for i, w in enumerate(cmp.weights)]
        for r in runs])
    ta = next((r for r in runs if r.method == "task_arithmetic"), None)
    refs = (ta.experiment if ta else first.experiment).references()
    cmp.references = {k: v for k, v in refs.items() if k in ("base", "experts")} if ta else \
        {k: v for k, v in refs.items() if k == "base"}
    return cmp

