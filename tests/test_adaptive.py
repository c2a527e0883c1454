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
