import numpy as np
import pytest

from explorer.core.design import default_budget, n_quadratic_terms, sample_design
from explorer.core.surrogate import quadratic_features
from explorer.errors import SpecError


@pytest.mark.parametrize("t", range(2, 9))
def test_default_design_has_full_quadratic_rank(t):
    design = sample_design((0.0, 1.0), t, seed=0)
    assert design.shape == (default_budget(t), t)
    assert np.linalg.matrix_rank(quadratic_features(design)) == n_quadratic_terms(t)
    assert all(len(np.unique(design[:, i].round(6))) >= 3 for i in range(t))  # ≥ 3 levels per axis


def test_design_is_seeded_and_includes_informative_corners():
    a, b = sample_design((0, 1), 4, seed=3), sample_design((0, 1), 4, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_design((0, 1), 4, seed=4))
    rows = {tuple(r) for r in a.round(9)}
    assert (0.0, 0.0, 0.0, 0.0) in rows and (0.5,) * 4 in rows
    assert all(tuple(np.eye(4)[i]) in rows for i in range(4))


def test_design_stays_inside_per_task_bounds():
    bounds = [(0.2, 0.6), (-1.0, 2.0), (0.0, 1.0)]
    d = sample_design(bounds, 3, budget=25, seed=0)
    lo, hi = np.array(bounds).T
    assert d.shape == (25, 3) and np.all(d >= lo) and np.all(d <= hi)


def test_budget_below_quadratic_terms_is_refused():
    with pytest.raises(SpecError, match="budget 5 is smaller than the 10"):
        sample_design((0, 1), 3, budget=5)


def test_bounds_with_lo_not_below_hi_are_refused():
    with pytest.raises(SpecError, match="lo >= hi"):
        sample_design((1.0, 1.0), 2)


def test_strength_stratified_design_reaches_weak_merges_that_a_uniform_design_misses():
    from explorer.core.design import strength_stratified_design

    t, n = 8, 54
    box = np.array([[0.0, 1.0]] * t)
    uniform = sample_design(box, t, n, seed=0)
    spread = strength_stratified_design(box, t, n, seed=0)
    assert np.linalg.matrix_rank(quadratic_features(spread)) == n_quadratic_terms(t)
    assert np.all((spread >= 0) & (spread <= 1))
    np.testing.assert_array_equal(spread[:10], uniform[:10])  # base, experts, equal weights kept
    weak = lambda d: int(np.sum(d[10:].sum(axis=1) < 2.0))  # Σc < 2: task arithmetic's λ ≈ 0.25 for 8 tasks
    assert weak(uniform) <= 1 and weak(spread) >= 8, (weak(uniform), weak(spread))
    np.testing.assert_array_equal(spread, strength_stratified_design(box, t, n, seed=0))
