"""Quadratic + Gaussian-process surrogate: exact where MAP's quadratic is, better where it is not, honest std."""
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import qmc

from explorer.core.design import sample_design
from explorer.core.kriging import KrigingSurrogate
from explorer.core.pareto import surrogate_objectives
from explorer.core.links import clip_for_link, infer_n_examples
from explorer.core.model_selection import fit_surrogate
from explorer.core.surrogate import QuadraticSurrogate
from explorer.demo.landscapes import make_landscape


def _landscape_data(kind: str, t: int, n: int, seed: int = 0):
    land = make_landscape(t, kind, seed=seed)
    C = sample_design(land.bounds, t, n, seed)
    return land, C, land.values(C)


def test_recovers_a_quadratic_in_link_space():
    rng = np.random.default_rng(0)
    C = rng.random((30, 3))
    z = 0.5 + C @ np.array([1.0, -2.0, 0.5]) - 1.5 * C[:, 0] * C[:, 1] + C[:, 2] ** 2
    y = 1 / (1 + np.exp(-z))
    s = KrigingSurrogate(bounds=np.tile([0.0, 1.0], (3, 1))).fit(C, y)
    X = rng.random((200, 3))
    zx = 0.5 + X @ np.array([1.0, -2.0, 0.5]) - 1.5 * X[:, 0] * X[:, 1] + X[:, 2] ** 2
    np.testing.assert_allclose(s.predict(X), 1 / (1 + np.exp(-zx)), atol=2e-3)
    assert s.r2_cv_ > 0.999


def test_beats_the_quadratic_on_a_sharp_landscape_and_its_intervals_cover():
    land, C, Y = _landscape_data("sharp", 3, 40)
    X = qmc.Sobol(3, seed=7).random(512)
    truth = land.values(X)
    quad_err, krig_err, covered = [], [], []
    for i in range(3):
        q = QuadraticSurrogate().fit(C, Y[:, i])
        k = KrigingSurrogate(bounds=land.bounds).fit(C, Y[:, i])
        mean, std = k.predict(X, return_std=True)
        quad_err.append(np.median(np.abs(q.predict(X) - truth[:, i])))
        krig_err.append(np.median(np.abs(mean - truth[:, i])))
        covered.append(np.mean(np.abs(mean - truth[:, i]) <= 2 * std))
        assert k.r2_cv_ > q.r2_cv_
    assert np.mean(krig_err) < 0.7 * np.mean(quad_err)
    assert 0.8 <= np.mean(covered) <= 0.99  # calibrated on left-out points: held-out points are covered


def test_std_vanishes_at_samples_and_grows_away_from_them():
    land, C, Y = _landscape_data("smooth", 2, 20)
    k = KrigingSurrogate(bounds=land.bounds).fit(C, Y[:, 0])
    at, between = k.epistemic_std(C), k.epistemic_std(C[:5] + 0.08)
    assert np.median(at) < 0.2 * np.median(between)
    assert np.all(k.predict(C, return_std=True)[1] >= at - 1e-12)  # a new measurement is never surer


def test_two_std_covers_new_measurements_of_a_rugged_metric():
    """Measured accuracies wobble between nearby merges (a finite evaluation set): the ± of a new point
    must cover a new measurement there, as the left-out points it was calibrated on did; the smooth
    part's std alone covers far fewer."""
    rng = np.random.default_rng(3)
    land = make_landscape(3, "smooth", seed=1)

    def measure(C):
        return np.clip(land.values(C)[:, 0] + rng.normal(0, 0.03, len(C)), 0, 1)

    C = sample_design(land.bounds, 3, 30, 0)
    k = KrigingSurrogate(bounds=land.bounds).fit(C, measure(C))
    X = land.bounds[:, 0] + qmc.Sobol(3, seed=5).random(256) * (land.bounds[:, 1] - land.bounds[:, 0])
    mean, std = k.predict(X, return_std=True)
    new = measure(X)
    covered = np.mean(np.abs(mean - new) <= 2 * std)
    latent = np.mean(np.abs(mean - new) <= 2 * k.epistemic_std(X))
    assert 0.85 <= covered <= 0.995 and latent < covered - 0.1, (covered, latent)


def test_gradient_matches_finite_differences_for_the_front_search():
    land, C, Y = _landscape_data("sharp", 3, 30)
    ss = [KrigingSurrogate(bounds=land.bounds).fit(C, Y[:, i]) for i in range(3)]
    objectives, jacobian = surrogate_objectives(ss, np.ones(3))
    X = np.random.default_rng(1).random((6, 3))
    F, J = jacobian(X, with_objectives=True)
    np.testing.assert_allclose(F, -np.column_stack([s.predict(X) for s in ss]), atol=1e-12)
    eps = 1e-6
    numeric = np.stack([(objectives(X + eps * e) - objectives(X - eps * e)) / (2 * eps) for e in np.eye(3)], axis=2)
    np.testing.assert_allclose(J, numeric, atol=1e-6)


def test_accuracies_of_zero_and_one_stay_finite_under_the_logit_link():
    y = np.array([0.0, 1.0, 0.5, 0.25, 0.75] * 4)
    assert infer_n_examples(y) == 4
    clipped = clip_for_link("logit", y)
    assert clipped.min() == pytest.approx(0.5 / 5) and clipped.max() == pytest.approx(4.5 / 5)
    C = np.random.default_rng(0).random((20, 2))
    for s in (QuadraticSurrogate(), KrigingSurrogate(bounds=np.tile([0.0, 1.0], (2, 1)))):
        s.fit(C, y)
        mean, std = s.predict(C, return_std=True)
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all((mean >= 0) & (mean <= 1))


def worst_front_error(fixture: str, fit) -> tuple[float, str, dict]:
    """A shipped run's points and its measured shown front (tests/fixtures): the worst task's median
    |predicted − measured| when each task is fitted by `fit(data, i)`, with the families used."""
    data = np.load(Path(__file__).parent / "fixtures" / fixture)
    worst, families = 0.0, ""
    for i in range(data["observed"].shape[1]):
        s = fit(data, i)
        families += getattr(s, "family_", "kriging")[0]
        worst = max(worst, float(np.median(np.abs(s.predict(data["audit"]) - data["measured"][:, i]))))
    return worst, families, data


def kriging_fit(data, i):
    return KrigingSurrogate(bounds=data["bounds"]).fit(data["samples"], data["observed"][:, i])


def test_a_fixed_set_accuracy_is_not_explained_as_noise_beyond_its_binomial_variance():
    """The 90 points an adaptive run placed on the untuned fashion-views seed-1 testbed (300 images per task),
    and 40 points of its shown front measured on the full sets. Unbounded, the nugget of task `rot90` grew to
    3× the binomial variance of 300 images and its front missed by 3.5 points (median); the issue's bar is 2
    on every task. (Made by tests/fixtures/make_fashion_views_s1_design.py.)"""
    worst, _, _ = worst_front_error("fashion_views_s1_design.npz", kriging_fit)
    assert worst <= 0.02, f"worst task's median error along the front {worst * 100:.2f} points"


def test_the_nugget_stays_free_where_the_points_do_not_outnumber_the_trend():
    """45 points (the fewest a quadratic takes at 8 tasks) on the untuned fashion-views testbed's 9,200 images
    per task, and 40 points of its shown front measured there. With the nugget bounded by the binomial variance
    there, the left-out density chose an interpolating fit and the front missed by 11 points on one task.
    (Made by tests/fixtures/make_fashion_views_large_45.py.)"""
    worst, _, data = worst_front_error("fashion_views_large_45.npz", kriging_fit)
    assert len(data["samples"]) == 45
    assert worst <= 0.02, f"worst task's median error along the front {worst * 100:.2f} points"


def test_the_nugget_is_free_where_the_set_size_is_unknown():
    """A loss (not k/n) keeps today's fit: the bound applies only to accuracies over a known number of examples."""
    rng = np.random.default_rng(1)
    C = rng.random((40, 2))
    y = 1.0 + C.sum(axis=1) + 0.3 * rng.standard_normal(40)
    s = KrigingSurrogate(higher_is_better=False, bounds=np.tile([0.0, 1.0], (2, 1))).fit(C, y)
    assert s.nugget_cap_ == 1.0
    assert s.noise_scale_ > 0.1  # the noise is explained as noise


def test_the_default_family_keeps_kriging_where_the_quadratic_wins_only_at_the_rounds_points():
    """90 points of a full-set run on the untuned fashion-views testbed's 9,200 images per task, which of them
    the rounds placed on the front, and 40 points of its shown front measured there. Until FIT_VERSION 13 the
    default family took the quadratic for task `rot90` (lower left-out error at the rounds' points, which lie
    where the std is largest) and the shown front missed by 2.11 points on it; kriging on the same points is
    inside the issue's 2-point bar on every task. (Made by tests/fixtures/make_fashion_views_large_90.py.)"""
    worst, families, _ = worst_front_error(
        "fashion_views_large_90.npz", lambda data, i: fit_surrogate(data["samples"], data["observed"][:, i], True,
                                                                    data["bounds"], "auto", front_samples=data["on_front"]))
    assert worst <= 0.02, f"worst task's median error along the front {worst * 100:.2f} points (families {families})"
