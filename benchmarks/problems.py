"""The merge problems the benchmark runs on, each with a real evaluator and, where it exists, the truth.

- analytic landscapes (`explorer.demo.landscapes`): the exact front; a pick's margin is found by
  constrained optimisation on the exact functions, and is never below what the exact front
  points show.
- real testbeds (`explorer.demo.testbeds`): small MLPs whose truth is known by dense real evaluation
  (`reference_front`, `real_margin`).
- demo zoos (real CLIP merges, evaluated through a benchmark store so reruns are free): no truth;
  the margin is measured against every point any method measured.

The margin of a point c: the most every task could gain at once over c's measured accuracies,
in accuracy units (0 = nothing known beats c in every task).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parent.parent
BENCH_STORE = ROOT / "cache" / "benchmark-store.sqlite"
ZOOS = {"demo-zoo": ROOT / "examples" / "demo.yaml", "demo-zoo-8": ROOT / "examples" / "demo8.yaml"}


@dataclass(eq=False)
class Problem:
    """One merge problem: `measure(C) -> (n, T)` real accuracies (maximised), and its truth if known.

    truth: goodness (m, T) of the true front, or None (zoos: filled in from everything measured).
    margin(C, V) -> (n,): real margin of coefficient rows C whose measured accuracies are V.
    """

    name: str
    family: str           # "analytic", "testbed" or "zoo"
    tasks: list[str]
    measure: Callable[[np.ndarray], np.ndarray]
    truth: np.ndarray | None
    margin: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    note: str = ""
    pool: list = field(default_factory=list)  # zoos: every (C, V) measured, for the margin

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)


class Counter:
    """What one method spends: every distinct coefficient vector it has measured, counted once.

    A repeat (a polish starting at an already measured pick, say) is free, as it is through the
    store of a real run.
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        self.seen: dict[bytes, np.ndarray] = {}
        self.order: list[bytes] = []
        self.C: list[np.ndarray] = []

    def many(self, C: np.ndarray) -> np.ndarray:
        C = np.atleast_2d(np.asarray(C, dtype=float))
        keys = [np.round(c, 12).tobytes() for c in C]
        new = [i for i, k in enumerate(keys) if k not in self.seen]
        fresh_keys = list(dict.fromkeys(keys[i] for i in new))
        if fresh_keys:
            first = {k: C[keys.index(k)] for k in fresh_keys}
            V = self.problem.measure(np.array([first[k] for k in fresh_keys]))
            for k, v in zip(fresh_keys, V):
                self.seen[k] = v
                self.order.append(k)
                self.C.append(first[k])
        return np.array([self.seen[k] for k in keys])

    def one(self, c) -> dict[str, float]:
        """The `evaluate` signature of `explorer.core.explore`."""
        return dict(zip(self.problem.tasks, self.many(np.asarray(c)[None])[0].tolist()))

    @property
    def n(self) -> int:
        return len(self.order)

    def measured(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, V) in the order they were first measured."""
        if not self.order:
            t = self.problem.n_tasks
            return np.empty((0, t)), np.empty((0, t))
        return np.array(self.C), np.array([self.seen[k] for k in self.order])


# ----------------------------------------------------------------------------- analytic


def exact_margin(land, c: np.ndarray, front: np.ndarray) -> float:
    """Most every task can gain at once over c on an analytic landscape (exact functions).

    The larger of: what the exact front points show (a lower bound), and SLSQP on
    max s s.t. v(c') ≥ v(c) + s, started at c and at the front point that beats c most.
    """
    t = land.n_tasks
    v0 = land.values(c[None], noisy=False)[0]
    gains = (front - v0).min(axis=1)
    best = float(max(gains.max(), 0.0))
    X, _ = land.true_front(len(front))
    starts = [c, X[int(np.argmax(gains))]]
    cons = {"type": "ineq", "fun": lambda z: land.values(z[None, :t], noisy=False)[0] - v0 - z[t]}
    for x0 in starts:
        s0 = max(float((land.values(x0[None], noisy=False)[0] - v0).min()), 0.0)
        res = minimize(lambda z: -z[t], np.append(x0, s0), method="SLSQP", constraints=[cons],
                       bounds=[(0.0, 1.0)] * t + [(0.0, 1.0)], options={"maxiter": 300, "ftol": 1e-10})
        z = np.clip(res.x, 0.0, 1.0)
        gain = float((land.values(z[None, :t], noisy=False)[0] - v0).min())
        best = max(best, gain)
    return best


def analytic(t: int, kind: str, seed: int = 0) -> Problem:
    from explorer.demo.landscapes import make_landscape

    land = make_landscape(t, kind, seed)
    _, front = land.true_front(1000)

    def margin(C, V):
        return np.array([exact_margin(land, c, front) for c in np.atleast_2d(C)])

    return Problem(f"analytic {kind} T={t} s{seed}", "analytic", land.tasks, lambda C: land.values(C, noisy=False),
                   front, margin, "exact front (analytic)")


# ----------------------------------------------------------------------------- testbeds


def testbed(kind: str) -> Problem:
    from explorer.demo.testbeds import make_testbed

    tb = make_testbed(kind, cache_dir=ROOT / "cache" / "testbeds")
    _, front = tb.reference_front()
    return Problem(f"testbed {kind} T=8", "testbed", tb.tasks, tb.values, front,
                   lambda C, V: tb.real_margin(np.atleast_2d(C)),
                   f"dense real truth ({tb.truth_samples} Sobol points + real local search)")


# ----------------------------------------------------------------------------- zoos


def zoo_built(name: str) -> bool:
    from explorer.demo.zoo import MANIFEST

    return (ROOT / "cache" / name / MANIFEST).is_file() and ZOOS[name].is_file()


def zoo(name: str) -> Problem:
    """A demo zoo through a benchmark store (kind "benchmark": never used by the app's fits)."""
    import torch

    from explorer.experiment.experiment import Experiment

    torch.set_num_threads(1)  # a tiny CLIP on a shared 2-core machine: two threads wait on each other (~8x slower)
    exp = Experiment.from_file(ZOOS[name], store_path=BENCH_STORE)
    problem = Problem(f"{name} T={len(exp.tasks)}", "zoo", list(exp.tasks), None, None, None,
                      "no truth: margin against every point any method measured")

    def measure(C):
        V = np.array([exp.evaluate(c, "benchmark") for c in np.atleast_2d(C)])
        problem.pool.append((np.atleast_2d(C).copy(), V.copy()))
        return V

    def margin(C, V):
        P = np.vstack([v for _, v in problem.pool])
        return np.maximum((P[None, :, :] - np.atleast_2d(V)[:, None, :]).min(axis=2).max(axis=1), 0.0)

    problem.measure, problem.margin = measure, margin
    return problem
