"""The searches the benchmark compares against: each spends exactly N real evaluations and keeps them.

None of them has a surrogate: a rival's pick for a preference is the best of its *measured*
points by the achievement function (`pick_measured`). All measure through a `problems.Counter`,
so a repeated point is not counted twice and every method's count means the same thing.

- random: N uniform points in the box (seeded); its first N₁ points are its run at N₁.
- grid: the brute-force grid, cell-centred (levels (k + ½)/L, so L = 1 is equal-weight task
  arithmetic at ½): the finest full grid with at most N points, then the rest drawn without
  repetition from the next finer grid. At T = 8 even two levels need 256 points, so with
  N < 256 it is the centre plus a random part of the 2-level grid.
- NSGA-II and TPE (optuna's multi-objective samplers), every task's accuracy an objective to
  maximise. NSGA-II's population is N/5 (8 to 50: optuna's default of 50 would spend a 20-point
  budget on its random first generation); TPE runs with optuna's defaults. Both are sequential,
  so their first N₁ trials are their run at N₁.
"""
from __future__ import annotations

import numpy as np

from explorer.core.decision import achievement


def pick_measured(V: np.ndarray, weights: np.ndarray, reference: np.ndarray) -> int:
    """Index of the measured row (accuracies, maximised) best by the achievement function."""
    return int(np.argmin(achievement(np.atleast_2d(V), np.asarray(weights, dtype=float), reference)))


def random_search(counter, n: int, seed: int) -> None:
    t = counter.problem.n_tasks
    counter.many(np.random.default_rng([seed, 17]).random((n, t)))


def grid_points(t: int, n: int, seed: int) -> np.ndarray:
    """Cell-centred grid of exactly n points in [0, 1]^t (see the module docstring)."""
    levels = 1
    while (levels + 1) ** t <= n:
        levels += 1
    axis = (np.arange(levels) + 0.5) / levels
    full = np.stack(np.meshgrid(*[axis] * t, indexing="ij"), axis=-1).reshape(-1, t)
    rest = n - len(full)
    if rest <= 0:
        return full
    finer = levels + 1
    rng = np.random.default_rng([seed, 23])
    size = finer ** t
    chosen = rng.choice(size, size=min(rest, size), replace=False)
    digits = (chosen[:, None] // finer ** np.arange(t)[None, :]) % finer
    return np.vstack([full, (digits + 0.5) / finer])


def grid_search(counter, n: int, seed: int) -> None:
    counter.many(grid_points(counter.problem.n_tasks, n, seed))


def _optuna(counter, n: int, sampler) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = counter.problem.n_tasks
    study = optuna.create_study(directions=["maximize"] * t, sampler=sampler)

    def objective(trial):
        c = np.array([trial.suggest_float(f"c{i}", 0.0, 1.0) for i in range(t)])
        return counter.many(c[None])[0].tolist()

    def enough(study, trial):
        if counter.n >= n:
            study.stop()

    study.optimize(objective, n_trials=3 * n, callbacks=[enough])  # repeats are free, so allow a few


def nsga2_search(counter, n: int, seed: int) -> None:
    import optuna

    population = int(np.clip(n // 5, 8, 50))
    _optuna(counter, n, optuna.samplers.NSGAIISampler(population_size=population, seed=seed))


def tpe_search(counter, n: int, seed: int) -> None:
    import optuna

    _optuna(counter, n, optuna.samplers.TPESampler(seed=seed))


#: name -> (search, whether its first N₁ evaluations are its run at budget N₁)
RIVALS = {
    "random": (random_search, True),
    "grid": (grid_search, False),
    "NSGA-II": (nsga2_search, True),
    "TPE": (tpe_search, True),
}
