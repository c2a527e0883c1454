"""The documented Python entry point, with an analytic evaluator (any model family works)."""
import numpy as np

from explorer import explore


def test_explore_contract():
    centers = {"a": np.array([0.8, 0.1, 0.2]), "b": np.array([0.1, 0.9, 0.3]), "c": np.array([0.2, 0.2, 0.9])}
    calls = []

    def evaluate(c):
        calls.append(c)
        return {k: float(1 / (1 + np.exp(-(2 - 4 * np.sum((c - v) ** 2))))) for k, v in centers.items()}

    result = explore(evaluate, tasks=["a", "b", "c"], bounds=(0.0, 1.0), budget=None, seed=0, higher_is_better=True)
    assert result.samples.shape == (20, 3) and result.observed.shape == (20, 3) and len(calls) == 20
    assert set(result.surrogates) == {"a", "b", "c"}
    assert all(s.r2_cv_ > 0.99 for s in result.surrogates.values())
    assert result.surrogates["a"].predict(result.samples[:4]).shape == (4,)
    m = len(result.front_coefficients)
    assert m >= 100 and result.front_predicted.shape == (m, 3)
    coefficients, predicted = result.pick(weights=None, minimums=None)
    assert coefficients.shape == (3,) and predicted.shape == (3,)
    favour_a, pred_a = result.pick(weights={"a": 5, "b": 1, "c": 1})
    assert pred_a[0] > predicted[0]
    _, pred_min = result.pick(minimums={"b": predicted[1] + 0.02})
    assert pred_min[1] >= predicted[1] + 0.02
    # per-task bounds and a loss (lower is better) work the same way
    r2 = explore(lambda c: {"x": float(1 + (c[0] - 0.3) ** 2), "y": float(0.5 + c[0] * c[1])}, ["x", "y"],
                 bounds=[(0, 1), (0.2, 0.8)], higher_is_better=[False, True], seed=1)
    assert r2.surrogates["x"].link_ == "log" and np.all(r2.front_coefficients[:, 1] >= 0.2)
