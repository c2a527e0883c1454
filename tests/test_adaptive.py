"""Adaptive sampling: fewer evaluations for MAP's front quality; keeps every sample; runner and CLI."""
import numpy as np
import pytest

from explorer.core.adaptive import AdaptiveSampler, default_batch, default_initial, explore_adaptive
from explorer.core.design import default_budget
from explorer.core.explore import explore
from explorer.core.pareto import igd, non_dominated
from explorer.demo.landscapes import make_landscape


def _igd(land, result):
    _, truth = land.true_front(500)
    V = land.values(result.front_coefficients, noisy=False)
    return igd(-V[non_dominated(-V)], -truth)


def _front_error(land, result, trusted_only: bool) -> float:
    rows = np.flatnonzero(result.front_trusted) if trusted_only else np.arange(len(result.front_coefficients))
    return float(np.median(np.abs(result.front_predicted[rows] - land.values(result.front_coefficients[rows]))))


def test_shown_front_is_predicted_closer_than_plain_map():
    land = make_landscape(3, "sharp")
    plain = explore(land, land.tasks, family="quadratic", front_points=300)
    ada = explore_adaptive(land, land.tasks, tol=0.0, front_points=300)
    assert len(ada.samples) <= default_budget(3) == len(plain.samples)
    assert ada.front_trusted.sum() >= 50
    assert _front_error(land, ada, trusted_only=True) < 0.5 * _front_error(land, plain, trusted_only=False)
    rounds = ada.extra["adaptive"]
    assert rounds and rounds[-1]["n_evaluations"] == len(ada.samples)


def test_keeps_every_sample_and_respects_budget():
    land = make_landscape(3, "sharp")
    seen = []
    ada = explore_adaptive(land, land.tasks, budget=18, tol=0.0, front_points=100,
                           callback=lambda C, Y: seen.append(C.copy()))
    assert len(ada.samples) <= 18
    for earlier, later in zip(seen, seen[1:]):  # nothing overwritten between rounds
        np.testing.assert_array_equal(later[: len(earlier)], earlier)
    assert len(np.unique(ada.samples.round(10), axis=0)) == len(ada.samples)  # never re-measures a point
    np.testing.assert_allclose(ada.observed, land.values(ada.samples))


def test_same_seed_same_samples():
    land = make_landscape(2, "sharp")
    a = explore_adaptive(land, land.tasks, budget=9, seed=3, front_points=50)
    b = explore_adaptive(land, land.tasks, budget=9, seed=3, front_points=50)
    np.testing.assert_array_equal(a.samples, b.samples)


def test_proposals_concentrate_near_the_front():
    land = make_landscape(3, "smooth")
    sampler = AdaptiveSampler(np.tile([0.0, 1.0], (3, 1)), np.ones(3), 40, default_initial(3), 6)
    C = sampler.initial_design()
    batch = sampler.propose(C, land.values(C))
    X, F = land.true_front(500)
    from explorer.demo.landscapes import dominance_gap

    random = np.random.default_rng(0).random((500, 3))
    assert np.median(dominance_gap(land.values(batch, noisy=False), F)) < np.median(dominance_gap(land.values(random, noisy=False), F))
    assert default_batch(3) >= 1


def test_sampler_validates_sizes():
    with pytest.raises(Exception, match="initial design"):
        AdaptiveSampler(np.tile([0.0, 1.0], (3, 1)), np.ones(3), 40, 5, 2)


def test_runner_and_cli_adaptive(tmp_path):
    from explorer.cli import main
    from explorer.experiment.experiment import Experiment
    from tests.toy_zoo import build

    spec = build(tmp_path)
    exp = Experiment.from_file(spec)
    result = exp.run(budget=16, progress=False, adaptive=True, tol=0.0)  # initial 12, then rounds of 2
    kinds = exp.measured()[2]
    assert kinds.count("adaptive") == 15 - default_initial(3) == len(result.samples) - kinds.count("design")  # one kept for the task-arithmetic reference
    assert len(result.extra["adaptive"]) == 2
    assert np.all(np.isfinite(result.front_predicted))
    n_before = exp.store.count(exp.key)
    assert main(["run", str(spec), "--adaptive", "--budget", "16", "--no-progress"]) == 0  # resumes: budget spent
    assert exp.store.count(exp.key) == n_before


def test_progress_follows_the_adaptive_run(tmp_path):
    """From 4 tasks on the run is adaptive: the app's "n / total points" bar and its "Continue
    evaluation" button must count that run's points, not MAP's space-filling design."""
    import yaml

    from explorer.experiment.experiment import Experiment
    from tests.toy_zoo import build

    spec = build(tmp_path)
    data = yaml.safe_load(spec.read_text())
    first = next(iter(data["tasks"].values()))
    data["tasks"]["all_digits"] = {**first, "params": {"classes": list(range(10))}}  # a 4th task, its own metric
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    exp = Experiment.from_file(spec)
    assert len(exp.tasks) == 4
    done, total = exp.progress(budget=20)
    # the budget is every evaluation: the base and the 4 experts are corners of the start design,
    # and the budget's last point is the closing task-arithmetic reference
    assert (done, total) == (0, 20)
    exp.run(budget=20, progress=False, tol=0.0)
    assert exp.progress(budget=20) == (total, total)
    assert exp.store.count(exp.key) // 4 == total  # exactly the points the bar promised


def test_front_scale_fits_the_std_to_the_errors_rounds_made_before_measuring():
    """Held-out front errors twice as wide as told ask for twice the std, counting only values measured
    on the full set, as picks are; too few of them, or rows nobody was told about, change nothing."""
    from explorer.core.surrogate import MIN_FRONT_ERRORS, front_scale

    rng = np.random.default_rng(0)
    n = 400
    told_std = np.full((n, 2), 0.01)
    wide = rng.normal(0, 0.02, (n, 2))
    assert np.allclose(front_scale(wide, np.zeros((n, 2)), told_std), 2.0, atol=0.25)
    subsampled = np.zeros((n, 2))
    subsampled[::2] = 1e-4  # measured on part of the examples: says little about a full-set pick's error
    assert np.allclose(front_scale(wide, np.zeros((n, 2)), told_std, subsampled), 2.0, atol=0.3)
    subsampled[: n - MIN_FRONT_ERRORS + 1] = 1e-4
    assert np.all(front_scale(wide, np.zeros((n, 2)), told_std, subsampled) == 1.0)
    few = np.full((n, 2), np.nan)
    few[: MIN_FRONT_ERRORS - 1] = 0.0
    assert np.all(front_scale(wide, few, told_std) == 1.0)
    half = np.zeros((n, 2))
    half[::2] = np.nan  # the initial design: nothing was told there
    assert np.allclose(front_scale(wide, half, told_std), 2.0, atol=0.3)


def test_an_adaptive_run_stores_what_each_round_told_and_calibrates_its_std_on_it(tmp_path):
    """Each adaptive point's told mean and std reach the store before it is measured, a resumed run
    tells nothing twice, and the fitted std at the front is the left-out calibrated std times the factor
    that puts 95.4 % of the rounds' held-out errors inside ±2 std."""
    from explorer.cli import main
    from explorer.core.result import fit_result
    from explorer.core.surrogate import NOMINAL_COVERAGE
    from explorer.experiment.experiment import Experiment
    from explorer.experiment.store import FIT_KINDS
    from tests.toy_zoo import build

    spec = build(tmp_path)
    exp = Experiment.from_file(spec)
    result = exp.run(budget=40, progress=False, adaptive=True, tol=0.0)
    C, M, kinds = exp.measured(FIT_KINDS)
    told = exp.store.told(exp.key)
    adaptive = [i for i, k in enumerate(kinds) if k == "adaptive"]
    assert len(adaptive) >= 20 and len(told) == len(adaptive) * len(exp.tasks)
    ids = [exp.task_identities[t] for t in exp.tasks]
    from explorer.core.design import coefficient_key

    mean = np.array([[told[(i, coefficient_key(C[r]))][0] for i in ids] for r in adaptive])
    std = np.array([[told[(i, coefficient_key(C[r]))][1] for i in ids] for r in adaptive])
    z = (M[adaptive] - mean) / std
    history = np.vstack([np.atleast_2d(h["held_out_z"]) for h in result.extra["adaptive"] if h["held_out_z"]])
    np.testing.assert_allclose(np.sort(np.abs(z), axis=0), np.sort(np.abs(history), axis=0), rtol=1e-9)
    final = exp.result()
    scale = np.array([final.surrogates[t].front_scale_ for t in exp.tasks])
    assert np.all(scale != 1.0)
    wanted = np.quantile(np.abs(z), NOMINAL_COVERAGE, axis=0) / 2
    np.testing.assert_allclose(scale, np.clip(wanted, 0.25, 20.0))  # the factor's range is capped at [0.25, 20]
    plain = fit_result(exp.tasks, final.samples, final.observed, exp.bounds, True, exp.spec.seed, front_points=50,
                       front_samples=np.array([kinds[i] == "adaptive" for i in range(len(kinds))]))
    X = final.front_coefficients[:20]
    np.testing.assert_allclose(final.predict(X, return_std=True)[1], plain.predict(X, return_std=True)[1] * scale, rtol=1e-6)
    inside = np.mean(np.abs(z) <= 2 * scale, axis=0)  # the quantile interpolates: within one error of the target
    free = (wanted > 0.25) & (wanted < 20.0)
    assert np.all(np.abs(inside[free] - NOMINAL_COVERAGE) <= 1 / len(z) + 1e-9)
    assert main(["run", str(spec), "--adaptive", "--budget", "40", "--no-progress"]) == 0  # resumes: nothing new
    assert exp.store.told(exp.key) == told
