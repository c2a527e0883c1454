"""Analytic merge landscapes whose Pareto front is known exactly (for tests and benchmarks).

Each task's accuracy is a decreasing function of a quadratic distance to the task's optimum:

    accᵢ(c) = floorᵢ + (peakᵢ − floorᵢ) · exp(−(dᵢ(c) / widthᵢ)^κ),   dᵢ(c) = (c − pᵢ)ᵀ Mᵢ (c − pᵢ)

with Mᵢ symmetric positive definite. Why the front is known: a monotone transform of each objective
does not change which points are Pareto-optimal, and for strictly convex dᵢ every Pareto-optimal
point minimises some weighted sum Σ wᵢ dᵢ, whose minimiser is c*(w) = (Σ wᵢMᵢ)⁻¹ Σ wᵢMᵢpᵢ. So the
Pareto set is {c*(w) : w in the simplex}; the construction checks that it lies inside the box.

κ = 1 ("smooth") is close to MAP's logistic-quadratic surrogate but not equal to it; κ = 1.6
("sharp") has a plateau and a cliff a quadratic cannot follow everywhere, which is where adaptive
sampling near the front pays off. Optional evaluation noise is a deterministic function of c (a
hash of its canonical key), so every executor and every rerun sees the same values.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from explorer.core.design import coefficient_key
from explorer.core.pareto import non_dominated, thin

KINDS = {"smooth": 1.0, "sharp": 1.6}


@dataclass(eq=False)
class Landscape:
    """T analytic tasks over the coefficient box; all metrics are accuracies in [0, 1] (maximised)."""

    name: str
    centers: np.ndarray   # (T, T): row i is task i's optimum pᵢ
    metrics: np.ndarray   # (T, T, T): Mᵢ
    floors: np.ndarray    # (T,)
    peaks: np.ndarray     # (T,)
    widths: np.ndarray    # (T,)
    power: float = 1.0
    bounds: np.ndarray = field(default_factory=lambda: np.array([[0.0, 1.0]]))
    noise: float = 0.0
    _front_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_tasks(self) -> int:
        return self.centers.shape[0]

    @property
    def tasks(self) -> list[str]:
        return [f"t{i}" for i in range(self.n_tasks)]

    def distances(self, C: np.ndarray) -> np.ndarray:
        """dᵢ(c) for every row of C: shape (n, T)."""
        C = np.atleast_2d(np.asarray(C, dtype=float))
        diff = C[:, None, :] - self.centers[None, :, :]  # (n, T, T)
        return np.einsum("nis,ist,nit->ni", diff, self.metrics, diff)

    def values(self, C: np.ndarray, noisy: bool = True) -> np.ndarray:
        """Accuracies (n, T) at the rows of C."""
        C = np.atleast_2d(np.asarray(C, dtype=float))
        d = self.distances(C)
        acc = self.floors + (self.peaks - self.floors) * np.exp(-((d / self.widths) ** self.power))
        if noisy and self.noise > 0:
            acc = acc + self.noise * np.array([_hash_normal(c, self.n_tasks) for c in C])
        return np.clip(acc, 0.0, 1.0)

    def __call__(self, coefficients) -> dict[str, float]:
        """The `evaluate` signature of `explorer.explore`: one vector in, {task: accuracy} out."""
        v = self.values(np.asarray(coefficients, dtype=float)[None])[0]
        return dict(zip(self.tasks, v.tolist()))

    def pareto_set(self, weights: np.ndarray) -> np.ndarray:
        """c*(w) for each row of `weights` (n, T), w ≥ 0 not all zero."""
        w = np.asarray(weights, dtype=float)
        lhs = np.einsum("ni,ist->nst", w, self.metrics)
        rhs = np.einsum("ni,ist,it->ns", w, self.metrics, self.centers)
        return np.linalg.solve(lhs, rhs[..., None])[..., 0]

    def true_front(self, n_points: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(coefficients, noise-free accuracies) of `n_points` spread evenly along the exact front."""
        key = (n_points, seed)
        if key not in self._front_cache:
            W = simplex_weights(self.n_tasks, max(4 * n_points, 4000), seed)
            X = self.pareto_set(W)
            F = -self.values(X, noisy=False)
            keep = non_dominated(F)
            X, F = X[keep], F[keep]
            pick = thin(F, n_points, seed)
            self._front_cache[key] = (X[pick], -F[pick])
        return self._front_cache[key]


def simplex_weights(n_tasks: int, n: int, seed: int = 0) -> np.ndarray:
    """Weights covering the simplex: its vertices, edge midpoints, dense interior and near-face points."""
    rng = np.random.default_rng(seed)
    if n_tasks == 2:
        a = np.linspace(0.0, 1.0, n)
        return np.column_stack([a, 1 - a])
    vertices = np.eye(n_tasks)
    rest = max(n - n_tasks, 2)
    inner = rng.dirichlet(np.ones(n_tasks), rest // 2)
    faces = rng.dirichlet(np.full(n_tasks, 0.15), rest - rest // 2)  # concentrated near faces and edges
    return np.vstack([vertices, inner, faces])


def _hash_normal(c: np.ndarray, n: int) -> np.ndarray:
    digest = hashlib.sha256(coefficient_key(c).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(n)


def make_landscape(n_tasks: int, kind: str = "smooth", seed: int = 0, noise: float = 0.0,
                   anisotropy: float = 0.5) -> Landscape:
    """A seeded landscape of `n_tasks` tasks on the box [0, 1]^T (see the module docstring).

    Task i peaks near cᵢ ≈ 0.75 with the other coefficients small (like an expert's task vector at
    full strength); `anisotropy` sets how unequal the curvatures of Mᵢ are (0 = isotropic). It is
    halved until the whole Pareto set lies inside the box, so `true_front` is exact.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown landscape kind {kind!r}; choose one of {', '.join(KINDS)}")
    if n_tasks < 2:
        raise ValueError("a landscape needs at least 2 tasks")
    rng = np.random.default_rng(seed * 1000 + n_tasks)
    t = n_tasks
    centers = 0.08 + 0.04 * rng.random((t, t)) + np.eye(t) * (0.62 + 0.1 * rng.random(t))
    floors = 0.35 + 0.25 * rng.random(t)
    peaks = 0.86 + 0.12 * rng.random(t)
    widths = 0.5 + 0.3 * rng.random(t)
    rotations = [np.linalg.qr(rng.standard_normal((t, t)))[0] for _ in range(t)]
    logs = rng.uniform(-1.0, 1.0, (t, t))
    while True:
        metrics = np.stack([q @ np.diag(np.exp(anisotropy * l)) @ q.T for q, l in zip(rotations, logs)])
        land = Landscape(f"{kind}-T{t}-s{seed}", centers, metrics, floors, peaks, widths, KINDS[kind],
                         np.tile([0.0, 1.0], (t, 1)), noise)
        X = land.pareto_set(simplex_weights(t, 4000, seed))
        if np.all((X >= 0.0) & (X <= 1.0)) or anisotropy < 1e-3:
            return land
        anisotropy /= 2


def dominance_gap(values: np.ndarray, front_values: np.ndarray) -> np.ndarray:
    """Per row of `values` (accuracies), how far the reference front dominates it (0 = on or past it).

    The IGD+ distance seen from a single point: min over front points f of ‖max(f − v, 0)‖.
    """
    V = np.atleast_2d(values)
    diff = np.maximum(front_values[None, :, :] - V[:, None, :], 0.0)
    return np.linalg.norm(diff, axis=2).min(axis=1)
