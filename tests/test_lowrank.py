"""Low-rank quadratic surrogate: recovers a low-rank truth, plugs into fronts; the method rule."""
import numpy as np
import pytest

from benchmarks import problems as P
from benchmarks.preferences import preferences
from explorer.core.design import n_quadratic_terms
from explorer.core.lowrank import (
    LowRankQuadraticSurrogate,
    choose_method,
    explore_lowrank,
    lowrank_design,
    n_lowrank_terms,
)
from explorer.core.nested import nested_picks
from explorer.core.pareto import compute_front
from explorer.demo.landscapes import make_landscape
from explorer.errors import SpecError


def test_recovers_diagonal_plus_rank_one_quadratic():
    t = 8
    rng = np.random.default_rng(0)
    u = rng.normal(size=t) * 0.8
    a, b = -rng.uniform(0.5, 1.5, t), rng.normal(size=t)
    A = np.diag(a) - np.outer(u, u)
    C = lowrank_design((0, 1), t, 2 * n_lowrank_terms(t, 1), 0)
    z = 0.3 + C @ b + 0.5 * np.einsum("ni,ij,nj->n", C, A, C)
    s = LowRankQuadraticSurrogate(rank=1, link="identity", alpha=1e-10).fit(C, z)
    test = rng.random((200, t))
    truth = 0.3 + test @ b + 0.5 * np.einsum("ni,ij,nj->n", test, A, test)
    assert np.max(np.abs(s.predict(test) - truth)) < 1e-3
    np.testing.assert_allclose(s.A_, A, atol=1e-3)
    assert s.r2_cv_ > 0.999


def test_explore_lowrank_front_on_landscape():
    land = make_landscape(6, "smooth")
    r = explore_lowrank(land, land.tasks, front_points=100)
    assert len(r.samples) == 2 * n_lowrank_terms(6) < 2 * n_quadratic_terms(6)
    assert r.front_coefficients.shape[1] == 6 and len(r.front_coefficients) > 10
    coef, pred = r.pick()
    real = land.values(coef[None], noisy=False)[0]
    assert np.max(np.abs(real - pred)) < 0.1
    assert isinstance(r.surrogates["t0"], LowRankQuadraticSurrogate)


def test_gradient_matches_finite_differences():
    land = make_landscape(4, "sharp")
    C = lowrank_design((0, 1), 4, 30, 1)
    s = LowRankQuadraticSurrogate().fit(C, land.values(C)[:, 0])
    c = np.array([[0.3, 0.2, 0.6, 0.4]])
    g = s.gradient(c)[0]
    fd = [(s.predict(c + e * 1e-6) - s.predict(c - e * 1e-6))[0] / 2e-6 for e in np.eye(4)]
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-8)
    compute_front([s, s], np.tile([0.0, 1.0], (4, 1)), n_candidates=256, max_points=20)


@pytest.mark.parametrize("t,expected", [(2, "full"), (8, "full"), (10, "full"), (11, "full"), (12, "lowrank"),
                                        (20, "lowrank")])
def test_choose_method_default_budget(t, expected):
    """At the default 100 evaluations: ours up to T = 8, the full quadratic while it fits (T ≤ 11), then low-rank."""
    assert choose_method(t) == expected


@pytest.mark.parametrize("t,budget,expected", [
    (10, 100, "full"), (12, 100, "lowrank"), (20, 100, "lowrank"),  # nested cannot run for 10 preferences
    (10, 300, "nested"), (12, 300, "nested"),                        # scaling.md: nested first where it can run
    (16, 300, "full"), (20, 300, "full"),
    (16, 600, "nested"), (20, 600, "nested"),
    (8, 600, "full"),                                                # T <= 8: ours at 2P beats nested at any budget
])
def test_choose_method_follows_the_equal_evaluation_table(t, budget, expected):
    assert choose_method(t, budget) == expected


def test_choose_method_counts_preferences_and_refuses_what_cannot_run():
    assert choose_method(12, 120, n_preferences=10) == "full"
    assert choose_method(12, 120, n_preferences=3) == "nested"  # nested's cost grows with the preferences served
    with pytest.raises(SpecError, match="too small"):
        choose_method(20, 50)


def test_rule_choice_beats_the_alternative_at_equal_evaluations():
    """T = 12, 3 preferences, 120 evaluations each: the rule picks nested, the old rule picked low-rank.

    Both spend at most the same 120 real evaluations (every distinct point, the picks included) on
    the analytic landscape; the chosen method's picks must be at least as close to the exact front.
    """
    t, budget = 12, 120
    problem = P.analytic(t, "smooth", 0)
    prefs = preferences(t, 3)
    margins, spent = {}, {}
    counter = P.Counter(problem)
    results, _ = nested_picks(counter.one, problem.tasks, prefs, budget=budget)
    picks = np.array([r.coefficients for r in results])
    margins["nested"], spent["nested"] = problem.margin(picks, counter.many(picks)).mean(), counter.n
    counter = P.Counter(problem)
    result = explore_lowrank(counter.one, problem.tasks, budget=budget - len(prefs), front_points=300)
    picks = np.array([result.decide(w).coefficients for w in prefs])
    margins["lowrank"], spent["lowrank"] = problem.margin(picks, counter.many(picks)).mean(), counter.n
    assert max(spent.values()) <= budget
    chosen = choose_method(t, budget, n_preferences=len(prefs))
    other = "lowrank" if chosen == "nested" else "nested"
    assert margins[chosen] <= margins[other], margins
