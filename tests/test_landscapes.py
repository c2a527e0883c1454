"""Analytic landscapes: the exact front is non-dominated, dominates everything else, and is reproducible."""
import numpy as np
import pytest

from explorer.core.pareto import non_dominated
from explorer.demo.landscapes import dominance_gap, make_landscape, simplex_weights


@pytest.mark.parametrize("t,kind", [(2, "smooth"), (3, "sharp"), (6, "smooth")])
def test_true_front_is_the_front(t, kind):
    land = make_landscape(t, kind, seed=1)
    X, F = land.true_front(300)
    assert np.all((X >= 0) & (X <= 1))
    assert len(non_dominated(-F)) == len(F)  # mutually non-dominated
    # no random point in the box beats the front: its gap to the front is never negative and
    # random points are (almost always) strictly dominated
    C = np.random.default_rng(0).random((2000, t))
    V = land.values(C, noisy=False)
    beats = np.all(V[:, None, :] > F[None, :, :] + 1e-9, axis=2)
    assert not beats.any()
    assert np.median(dominance_gap(V, F)) > 0


def test_values_evaluate_and_noise_are_deterministic():
    land = make_landscape(3, "smooth", noise=0.01)
    c = np.array([0.2, 0.5, 0.1])
    a, b = land(c), land(c.copy())
    assert a == b and set(a) == {"t0", "t1", "t2"}
    assert not np.allclose(land.values(c[None])[0], land.values(c[None], noisy=False)[0])
    assert np.all((land.values(np.random.default_rng(0).random((50, 3))) >= 0))


def test_simplex_weights_cover_vertices():
    w = simplex_weights(4, 100, 0)
    assert np.allclose(w.sum(axis=1), 1) and np.all(w >= 0)
    assert np.allclose(w[:4], np.eye(4))


def test_pareto_set_is_weighted_sum_minimiser():
    land = make_landscape(3, "smooth", seed=2)
    w = np.array([[0.2, 0.5, 0.3]])
    c = land.pareto_set(w)[0]
    obj = lambda x: float(w[0] @ land.distances(x[None])[0])  # noqa: E731
    for d in np.eye(3) * 1e-3:
        assert obj(c) <= obj(c + d) and obj(c) <= obj(c - d)
