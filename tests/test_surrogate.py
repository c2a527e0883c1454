import numpy as np
import pytest

from explorer.core.design import sample_design
from explorer.core.links import choose_link
from explorer.core.surrogate import QuadraticSurrogate


def random_quadratic(t, rng):
    m = rng.normal(size=(t, t))
    return -(m @ m.T) / t - np.eye(t), rng.normal(size=t), rng.normal()


@pytest.mark.parametrize("t", [2, 3, 4, 5])
@pytest.mark.parametrize("link", ["identity", "logit"])
def test_recovers_known_quadratic_from_noiseless_samples(t, link):
    rng = np.random.default_rng(t)
    a, b, e = random_quadratic(t, rng)
    c = sample_design((-1, 1), t, seed=1)
    z = 0.5 * np.einsum("ni,ij,nj->n", c, a, c) + c @ b + e
    y = z if link == "identity" else 1 / (1 + np.exp(-z))
    s = QuadraticSurrogate(link=link, alpha=0.0).fit(c, y)
    np.testing.assert_allclose(s.A_, a, atol=1e-6)
    np.testing.assert_allclose(s.b_, b, atol=1e-6)
    assert s.e_ == pytest.approx(e, abs=1e-6)
    assert s.r2_cv_ > 0.999999
    test = rng.uniform(-1, 1, size=(50, t))
    z_test = 0.5 * np.einsum("ni,ij,nj->n", test, a, test) + test @ b + e
    want = z_test if link == "identity" else 1 / (1 + np.exp(-z_test))
    np.testing.assert_allclose(s.predict(test), want, atol=1e-6)


def test_follows_scikit_learn_conventions():
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 1, (30, 2))
    y = 0.5 + 0.3 * c[:, 0] - 0.2 * c[:, 1] ** 2
    s = QuadraticSurrogate()
    assert s.fit(c, y) is s
    assert s.predict(c).shape == (30,)
    assert s.score(c, y) > 0.999
    assert s.link == "auto" and s.link_ == "logit"


def test_link_choice_matches_metric_kind():
    assert choose_link(np.array([0.2, 0.9]), True) == "logit"
    assert choose_link(np.array([0.5, 2.3]), False) == "log"
    assert choose_link(np.array([-1.0, 3.0]), True) == "identity"


def test_noisy_or_degenerate_data_never_fails_silently():
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 1, (12, 3))
    noise = rng.uniform(0, 1, 12)  # no structure at all
    s = QuadraticSurrogate().fit(c, noise)
    assert np.all(np.isfinite(s.predict(c)))
    assert s.r2_cv_ < 0.5  # the poor fit is reported, not hidden
    flat = QuadraticSurrogate().fit(np.ones((12, 3)) * 0.5, np.full(12, 0.7))  # singular design
    assert np.all(np.isfinite(flat.predict(c)))
    with pytest.raises(ValueError, match="NaN"):
        QuadraticSurrogate().fit(c, np.where(np.arange(12) == 3, np.nan, noise))
