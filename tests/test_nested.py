"""Nested MAP: pairs similar tasks, follows preferences, costs O(T) evaluations per preference."""
import numpy as np
import pytest
import torch

from explorer.core.nested import (
    CachedEvaluator,
    nested_evaluations,
    nested_merge,
    nested_picks,
    pair_budget_for,
    pair_groups,
    task_vector_similarity,
)
from explorer.demo.landscapes import make_landscape
from explorer.errors import SpecError
from explorer.merging.task_vectors import TaskVectors


def test_pair_groups_pairs_most_similar():
    sim = np.array([[0, 1, 9, 0], [1, 0, 0, 8], [9, 0, 0, 2], [0, 8, 2, 0]], dtype=float)
    pairs, left = pair_groups([[0], [1], [2], [3]], sim)
    assert sorted(pairs) == [(0, 2), (1, 3)] and left == []
    pairs, left = pair_groups([[0], [1], [2]], sim[:3, :3])
    assert pairs == [(0, 2)] and left == [1]


def test_task_vector_similarity_is_cosine():
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    tv = TaskVectors(keys=["w"], vectors={"w": v})
    sim = task_vector_similarity(tv)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    np.testing.assert_allclose(sim[0, 1], 1 / np.sqrt(2))
    np.testing.assert_allclose(sim[0, 2], 0.0, atol=1e-12)


def test_nested_follows_preferences_and_is_cheap():
    t = 8
    land = make_landscape(t, "smooth")
    favour0 = np.array([8.0] + [1.0] * (t - 1))
    results, n_eval = nested_picks(land, land.tasks, [np.ones(t), favour0])
    balanced, skewed = results
    assert n_eval < 2 * (t + 1) * (t + 2) // 2  # far below the full quadratic's 2P = 90
    assert skewed.measured[0] > balanced.measured[0]  # preference moves the pick towards task 0
    assert len(balanced.steps) == t - 1
    assert np.all((balanced.coefficients >= 0) & (balanced.coefficients <= 1))
    np.testing.assert_allclose(balanced.measured, land.values(balanced.coefficients[None])[0])
    # the balanced pick is better than plain task arithmetic at the same coefficient sum on average
    lam = balanced.coefficients.mean()
    assert balanced.measured.mean() >= land.values(np.full((1, t), lam))[0].mean() - 0.01


def test_cached_evaluator_counts_unique_points():
    land = make_landscape(3, "smooth")
    ev = CachedEvaluator(land, land.tasks)
    ev(np.zeros(3)), ev(np.zeros(3)), ev(np.ones(3) * 0.5)
    assert ev.n_evaluations == 2
    r = nested_merge(land, land.tasks, {"t0": 1, "t1": 1, "t2": 1}, similarity=np.ones((3, 3)))
    assert r.n_evaluations <= 3 * 8


def test_budget_bounds_what_nested_spends():
    """nested_picks(budget=B) never spends more than B distinct evaluations; a budget too small is refused."""
    t = 6
    land = make_landscape(t, "smooth")
    prefs = [np.ones(t), np.array([4.0] + [1.0] * (t - 1))]
    assert nested_evaluations(t, 2, 8) > nested_evaluations(t, 2, 6)
    budget = nested_evaluations(t, 2, 7)
    assert pair_budget_for(t, 2, budget) == 7
    results, spent = nested_picks(land, land.tasks, prefs, budget=budget)
    assert spent <= budget and len(results) == 2
    _, default_spent = nested_picks(land, land.tasks, prefs)
    assert default_spent <= nested_evaluations(t, 2) and spent < default_spent
    with pytest.raises(SpecError, match="needs up to"):
        nested_picks(land, land.tasks, prefs, budget=nested_evaluations(t, 2, 6) - 1)
