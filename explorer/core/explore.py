"""The Python entry point: evaluate a design, fit surrogates, compute the amortized Pareto front.

`explore` works with any evaluator (a callable from coefficients to per-task metrics), so it is
not tied to one model family; the experiment layer runs specs on the same pieces.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from explorer.core.adaptive import explore_adaptive
from explorer.core.design import sample_design
from explorer.core.metrics import check_metrics
from explorer.core.result import ExploreResult, fit_result
from explorer.errors import SpecError

#: From this many tasks on, the default run places part of its budget on the predicted front
#: (explorer.core.adaptive). Measured at equal evaluations (analytic landscapes, 10 preferences, mean
#: real margin of the picks): T = 2 space-filling 0.00 / 0.05 vs adaptive 0.00 / 0.36 (sharp /
#: smooth), T = 3 0.02 / 0.12 vs 0.02 / 0.22, T = 4 1.44 / 0.26 vs 0.06 / 0.10, T = 8 see
#: benchmarks/results (space-filling fronts miss by several points there).
ADAPTIVE_FROM_TASKS = 4


def default_design(n_tasks: int) -> str:
    """"adaptive" from `ADAPTIVE_FROM_TASKS` tasks on, else "space_filling" (MAP's)."""
    return "adaptive" if n_tasks >= ADAPTIVE_FROM_TASKS else "space_filling"


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
    family: str = "auto",
    design: str = "auto",
) -> ExploreResult:
    """Evaluate a seeded design, fit surrogates and return the amortized Pareto front.

    design: "space_filling" (MAP: the whole budget on a space-filling design), "adaptive"
    (part of it on the predicted front, see explorer.core.adaptive) or "auto" (`default_design`).
    family: surrogate family per task, "auto" (kriging; the quadratic where kriging fails), "quadratic" (MAP) or "kriging".

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
    design = default_design(len(tasks)) if design == "auto" else design
    if design == "adaptive":
        return explore_adaptive(evaluate, tasks, bounds, budget, seed, higher_is_better, link=link, family=family,
                                progress=progress, front_points=front_points, front_bounds=front_bounds, tol=0.0)
    if design != "space_filling":
        raise SpecError(f"unknown design {design!r}; choose auto, adaptive or space_filling")
    design = sample_design(bounds, len(tasks), budget, seed)
    rows = []
    iterator = design
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(design, desc="evaluations", unit="pt")
    for c in iterator:
        rows.append(check_metrics(evaluate(c.copy()), tasks, c))
    return fit_result(tasks, design, np.array(rows), bounds, higher_is_better, seed, link, front_points, front_bounds,
                      family=family)
