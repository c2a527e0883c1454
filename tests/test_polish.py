"""Polish: a few real evaluations around the pick, judged on measured values, never worse than the start."""
import numpy as np

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
