"""The benchmark is fair: every method gets the same real evaluations, repeats are free, truths are exact."""
import numpy as np
import pytest

from benchmarks import problems as P
from benchmarks.bench_front import exact_front, known_surrogates, margin_to_truth
from benchmarks.rivals import RIVALS, grid_points, pick_measured
from benchmarks.run import METHODS, preferences, run_problem
from explorer.core.decision import achievement
from explorer.core.pareto import compute_front, surrogate_objectives
from explorer.demo.landscapes import make_landscape


def test_grid_has_exactly_n_distinct_points_and_is_the_full_grid_when_it_fits():
    for t, n in [(2, 9), (2, 14), (4, 40), (8, 100)]:
        G = grid_points(t, n, seed=0)
        assert G.shape == (n, t)
        assert len(np.unique(G, axis=0)) == n
        assert np.all((G > 0) & (G < 1))
    assert np.allclose(np.unique(grid_points(2, 9, 0)), [1 / 6, 0.5, 5 / 6])
    assert np.allclose(grid_points(8, 100, 0)[0], 0.5)  # the centre: equal-weight task arithmetic at ½


def test_counter_counts_distinct_points_once():
    problem = P.analytic(2, "smooth")
    counter = P.Counter(problem)
    C = np.array([[0.1, 0.2], [0.3, 0.4], [0.1, 0.2]])
    V = counter.many(C)
    assert counter.n == 2
    assert np.array_equal(V[0], V[2])
    counter.one(np.array([0.3, 0.4]))
    assert counter.n == 2
    assert np.allclose(counter.measured()[1], problem.measure(C[:2]))


@pytest.mark.parametrize("name", list(RIVALS))
def test_each_rival_spends_exactly_its_budget(name):
    search, _ = RIVALS[name]
    problem = P.analytic(2, "sharp")
    counter = P.Counter(problem)
    search(counter, 25, seed=0)
    assert counter.n == 25


def test_rival_pick_is_the_best_measured_point_by_the_achievement_function():
    problem = P.analytic(3, "smooth")
    V = problem.measure(np.random.default_rng(0).random((50, 3)))
    w = np.array([0.6, 0.3, 0.1])
    i = pick_measured(V, w, problem.truth)
    assert achievement(V[i][None], w, problem.truth)[0] == pytest.approx(achievement(V, w, problem.truth).min())


def test_exact_margin_is_zero_on_the_true_front_and_positive_off_it():
    problem = P.analytic(4, "smooth")
    on = make_landscape(4, "smooth").true_front(1000)[0][:5]
    assert np.all(problem.margin(on, problem.measure(on)) < 1e-6)
    off = np.full((1, 4), 0.05)  # near the base: every task can gain
    assert problem.margin(off, problem.measure(off))[0] > 0.05


def test_bench_front_truth_is_exact_and_our_front_lies_on_it():
    surrogates, land = known_surrogates(3)
    objectives, _ = surrogate_objectives(surrogates, np.ones(3))
    truth = exact_front(objectives, land, n=4000)
    ours = compute_front(surrogates, np.tile([0.0, 1.0], (3, 1)), seed=0, max_points=200).F
    assert margin_to_truth(ours, truth) < 1e-3          # no exact point beats a front point by 0.1 point in every task
    interior = np.zeros((1, 3))  # the base
    assert margin_to_truth(objectives(interior), truth) > 0.01  # a point off the front is caught


def test_every_method_gets_the_same_evaluations_on_a_small_problem():
    problem = P.analytic(2, "smooth", seed=3)
    res = run_problem(problem, seed=0, log=lambda m: None)
    n1, n2 = (res["rows"]["ours"][b]["evaluations"] for b in ("N1", "N2"))
    assert n1 <= 12 + 10 and n2 - n1 <= 10 * 12
    for m in METHODS[2:]:  # the searches spend exactly the budget
        assert [res["rows"][m][b]["evaluations"] for b in ("N1", "N2")] == [n1, n2], m
    for b, n in (("N1", n1), ("N2", n2)):  # MAP: a design of N - 10, then its 10 picks (fewer if some repeat)
        assert n - 10 <= res["rows"]["plain MAP"][b]["evaluations"] <= n
    for m in METHODS:
        for b in ("N1", "N2"):
            margins = np.array(res["rows"][m][b]["margins"])
            assert margins.shape == (10,) and np.all(margins >= 0), (m, b)
    assert res["ours"]["fidelity"]["n"] == 40
    assert np.allclose(np.array(res["preferences"]).sum(axis=1), 1.0)
    assert np.array_equal(preferences(2), np.array(res["preferences"]))
