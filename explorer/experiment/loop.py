"""The evaluation loop of an experiment: which points to measure, in what order, through which executor.

Two designs run through it: MAP's space-filling design (`run_design`) and adaptive sampling
(`run_adaptive`: the sampler of explorer.core.adaptive proposes, this loop measures through the
store). Everything already stored counts, so an interrupted run continues where it stopped.
An executor has one method, `run(experiment, pending)`, yielding once per finished point; the
in-process one is here, Ray's in explorer.experiment.executors.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from explorer.core.adaptive import AdaptiveSampler, default_batch, default_initial, inside_box, loop_budget
from explorer.core.design import coefficient_key, default_budget
from explorer.core.result import ExploreResult
from explorer.experiment.store import FIT_KINDS


class InProcessExecutor:
    """Measure points one after the other with the experiment's own engine."""

    def run(self, experiment, pending: Sequence[tuple[np.ndarray, str]]) -> Iterator[np.ndarray]:
        for c, kind in pending:
            experiment.evaluate(c, kind)
            yield np.asarray(c, dtype=float)


def unique_points(points: Iterable[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
    """Points with equal store keys collapsed to the first (whose kind is the one stored)."""
    seen, out = set(), []
    for c, kind in points:
        key = coefficient_key(c)
        if key not in seen:
            seen.add(key)
            out.append((np.asarray(c, dtype=float), kind))
    return out


def check_executor(experiment, executor) -> None:
    """`evaluation.examples` is checked against every task's set before anything is measured, whichever
    executor measures (each one sends `experiment.plan`'s work and stores it through `experiment.record`)."""
    experiment.check_examples()


def evaluate_points(experiment, points: Iterable[tuple[np.ndarray, str]], executor=None, bar=None) -> None:
    """Measure the points the store lacks through `executor` (default in-process), updating `bar`."""
    pending = [(c, k) for c, k in unique_points(points) if not experiment.complete(c, k)]
    executor = executor or InProcessExecutor()
    for _ in executor.run(experiment, pending):
        if bar:
            bar.update(1)


def run_design(experiment, budget: int | None = None, progress: bool = True, executor=None) -> ExploreResult:
    """MAP's space-filling design and the reference points, measured through the store, then the fit."""
    check_executor(experiment, executor)
    design = experiment.design(budget)
    points = [(c, "design") for c in design] + [(c, "reference") for c in experiment.reference_points()]
    pending = [(c, k) for c, k in points if not experiment.complete(c, k)]
    bar = _bar(len(points), len(points) - len(pending)) if progress else None
    try:
        for _ in (executor or InProcessExecutor()).run(experiment, pending):
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    return experiment.finish()


def _bar(total: int, initial: int = 0):
    from tqdm.auto import tqdm  # imported when a bar is shown: tqdm's notebook check is slow

    return tqdm(total=total, initial=initial, desc="evaluations", unit="pt", dynamic_ncols=True)


def run_adaptive(experiment, budget: int | None = None, progress: bool = True, executor=None, *,
                 initial: int | None = None, batch: int | None = None, tol: float = 0.005) -> ExploreResult:
    """Adaptive sampling for a spec `Experiment`, through the store (resumable) and an executor.

    Everything already measured in the box counts towards the budget, so a rerun continues where
    the last one stopped. Initial points are stored with kind "design", later ones "adaptive".
    """
    check_executor(experiment, executor)
    t = len(experiment.tasks)
    budget = budget if budget is not None else (experiment.spec.budget or default_budget(t))
    initial = min(default_initial(t), budget) if initial is None else int(initial)
    budget = loop_budget(budget, initial)
    sampler = AdaptiveSampler(experiment.bounds, experiment.senses, budget, initial,
                              default_batch(t) if batch is None else int(batch), tol, seed=experiment.spec.seed)
    bar = None
    if progress:
        bar = _bar(budget)
    try:
        start = [(c, "design") for c in sampler.initial_design()]
        start += [(c, "reference") for c in experiment.reference_points()]
        evaluate_points(experiment, start, executor, bar)
        while True:
            C, Y, noise = fit_points(experiment, with_noise=True)
            if len(C) >= budget:
                break
            new = sampler.propose(C, Y, min(sampler.batch, budget - len(C)), noise_variance=noise)
            if len(new) == 0:
                break
            if sampler.told is not None:  # what a user would be told there, kept to calibrate the final std
                experiment.tell(*sampler.told)
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


def fit_points(experiment, with_noise: bool = False):
    """(C, M) of the fitted kinds inside the box, in a fixed order; with_noise, also the values'
    sampling variances (n, T) (None when every value is a full-set measurement)."""
    C, M, _, how = experiment.measured_examples(FIT_KINDS)
    noise = how["noise_variance"]
    if len(C):
        inside = inside_box(C, experiment.bounds)
        C, M, noise = C[inside], M[inside], noise[inside]
        order = np.lexsort(C.T[::-1])  # store order depends on which worker finished first; the fit must not
        C, M, noise = C[order], M[order], noise[order]
    if not with_noise:
        return C, M
    return C, M, (noise if np.any(noise > 0) else None)
