import numpy as np
import pytest

from explorer.core.decision import decide


def concave_front(n=201):
    """A front with a non-convex middle (the quarter circle bulging towards the nadir)."""
    t = np.linspace(0, np.pi / 2, n)
    g = np.column_stack([1 - np.cos(t), 1 - np.sin(t)])  # goodness, larger is better
    return np.column_stack([t, 1 - t]), g


def test_importance_moves_the_choice_towards_the_task():
    X, G = concave_front()
    tasks = ["a", "b"]
    senses = np.ones(2)
    even = decide(X, G, senses, tasks)
    favour_a = decide(X, G, senses, tasks, weights={"a": 3, "b": 1})
    assert favour_a.predicted[0] > even.predicted[0] and favour_a.predicted[1] < even.predicted[1]


def test_non_convex_middle_is_reachable_unlike_a_weighted_sum():
    X, G = concave_front()
    d = decide(X, G, np.ones(2), ["a", "b"])
    weighted_sum_best = np.argmax(G.sum(axis=1))
    assert weighted_sum_best in (0, len(G) - 1)  # a weighted sum only finds the ends
    assert 0.2 < d.predicted[0] < 0.4 and 0.2 < d.predicted[1] < 0.4  # the balanced middle


def test_minimums_are_respected_or_the_closest_point_is_reported():
    X, G = concave_front()
    d = decide(X, G, np.ones(2), ["a", "b"], minimums={"b": 0.8})
    assert d.feasible and d.predicted[1] >= 0.8
    impossible = decide(X, G, np.ones(2), ["a", "b"], minimums={"a": 0.9, "b": 0.9})
    assert not impossible.feasible and np.all(impossible.shortfall >= 0) and impossible.shortfall.sum() > 0


def test_minimised_metrics_use_ceilings():
    X, G = concave_front()
    losses = -G  # a loss-like second view of the same front
    d = decide(X, np.column_stack([G[:, 0], -G[:, 1]]), np.array([1.0, -1.0]), ["acc", "loss"], minimums={"loss": -0.8})
    assert d.feasible and d.predicted[1] <= -0.8
    assert losses.shape == G.shape


def test_bad_preferences_are_refused():
    X, G = concave_front()
    with pytest.raises(ValueError, match="unknown task 'c'"):
        decide(X, G, np.ones(2), ["a", "b"], weights={"c": 1})
    with pytest.raises(ValueError, match="non-negative"):
        decide(X, G, np.ones(2), ["a", "b"], weights=[-1, 1])
