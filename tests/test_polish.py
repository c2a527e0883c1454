"""Polish: a few real evaluations around the pick, judged on measured values, never worse than the start."""
import numpy as np
import pytest

from benchmarks.problems import exact_margin
from explorer.core.decision import achievement
from explorer.core.explore import explore
from explorer.core.polish import polish
from explorer.demo.landscapes import make_landscape


def test_polish_improves_a_biased_pick_within_budget_and_replays():
    land = make_landscape(3, "sharp", seed=1)
    result = explore(land, land.tasks, family="quadratic", design="space_filling", front_points=300)
    weights = np.array([3.0, 1.0, 1.0])
    calls = []

    def evaluate(c):
        calls.append(c.copy())
        return land(c)

    out = polish(result, evaluate, weights, budget=10)
    assert len(calls) <= 10 and len(out.coefficients) == len(calls)
    start = land.values(result.decide(weights).coefficients[None], noisy=False)
    ref = result.front_predicted * result.senses
    score = lambda v: achievement(np.atleast_2d(v), weights, ref)[0]  # noqa: E731
    c, measured = out.best
    assert score(measured) <= score(start) + 1e-12  # never worse than the start, measured
    np.testing.assert_allclose(measured, land.values(c[None], noisy=False)[0])
    again = polish(result, land, weights, budget=10)  # deterministic: a rerun through a store replays it
    np.testing.assert_array_equal(again.coefficients, out.coefficients)


def test_result_polish_respects_minimums():
    land = make_landscape(2, "smooth", seed=2)
    result = explore(land, land.tasks, design="space_filling", front_points=200)
    floor = float(np.median(result.front_predicted[:, 1]))
    c, measured = result.polish(land, minimums={"t1": floor}, budget=6)
    assert c.shape == (2,) and measured.shape == (2,)
    assert measured[1] >= floor - 0.02


@pytest.mark.parametrize("t,kind,seed,weights", [(4, "smooth", 0, [3.0, 1.0, 1.0, 1.0]), (3, "sharp", 1, [1.0, 1.0, 1.0])])
def test_polish_moves_an_off_front_pick_onto_the_front(t, kind, seed, weights):
    """A pick from a deliberately tiny design (P + 1 points) is well off the exact front; 12 real
    evaluations of polish must close most of that gap (returning the start would fail here)."""
    land = make_landscape(t, kind, seed)
    _, front = land.true_front(1000)
    p = (t + 1) * (t + 2) // 2
    result = explore(land, land.tasks, budget=p + 1, family="quadratic", design="space_filling", front_points=200)
    weights = np.array(weights)
    start = result.decide(weights).coefficients
    out = polish(result, land, weights, budget=12)
    c, measured = out.best
    before, after = 100 * exact_margin(land, start, front), 100 * exact_margin(land, c, front)
    assert before > 2.5  # the start is off the front by more than 2.5 accuracy points
    assert after < 0.25 * before and before - after > 2.0  # polish recovers most of it
    ref = result.front_predicted * result.senses
    start_value = land.values(start[None], noisy=False)
    assert achievement(measured[None], weights, ref)[0] < achievement(start_value, weights, ref)[0] - 0.01
