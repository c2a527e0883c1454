"""Quadratic surrogates of a task metric as a function of the merge coefficients (MAP).

M̃(c) = link⁻¹(½ cᵀAc + bᵀc + e). Fitting the quadratic to the linked metric (logit of an
accuracy, log of a loss) by ridge least squares is the cheap equivalent of MAP's nonlinear fit
near the data; a few Gauss-Newton steps then fit in metric units, as MAP does. It never fails
silently: the ridge term keeps the system solvable, and a poor fit shows up in `r2_cv_`.
"""
from __future__ import annotations

import numpy as np

LINKS = ("logit", "log", "identity")
_EPS = 1e-4


def quadratic_features(coefficients: np.ndarray) -> np.ndarray:
    """Feature map [1, c₁..c_T, c₁²..c_T², cᵢcⱼ (i<j)] of shape (n, (T+1)(T+2)/2)."""
    c = np.atleast_2d(np.asarray(coefficients, dtype=float))
    n, t = c.shape
    iu, ju = np.triu_indices(t, k=1)
    return np.hstack([np.ones((n, 1)), c, c**2, c[:, iu] * c[:, ju]])


def choose_link(metric: np.ndarray, higher_is_better: bool) -> str:
    """Logit for scores in [0, 1], log for positive losses, identity otherwise."""
    m = np.asarray(metric, dtype=float)
    if higher_is_better and np.all((m >= 0) & (m <= 1)):
        return "logit"
    if not higher_is_better and np.all(m > 0):
        return "log"
    return "identity"


def _forward(link: str, m: np.ndarray) -> np.ndarray:
    if link == "logit":
        p = np.clip(m, _EPS, 1 - _EPS)
        return np.log(p) - np.log1p(-p)
    if link == "log":
        return np.log(np.maximum(m, 1e-12))
    return np.asarray(m, dtype=float)


def _inverse(link: str, z: np.ndarray) -> np.ndarray:
    if link == "logit":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free sigmoid
    if link == "log":
        return np.exp(np.minimum(z, 700.0))
    return z


def _inverse_derivative(link: str, z: np.ndarray) -> np.ndarray:
    if link == "logit":
        s = _inverse(link, z)
        return s * (1 - s)
    if link == "log":
        return np.exp(np.minimum(z, 700.0))
    return np.ones_like(z)


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    ss_res = float(np.sum((observed - predicted) ** 2))
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    if ss_tot <= 1e-18:
        return 1.0 if ss_res <= 1e-18 else 0.0
    return 1.0 - ss_res / ss_tot


class QuadraticSurrogate:
    """Full quadratic in the merge coefficients, with a link for bounded metrics.

    Parameters
    ----------
    link : "auto", "logit", "log" or "identity". "auto" picks logit for metrics in [0, 1] that are
        maximised, log for positive metrics that are minimised.
    alpha : ridge penalty on the non-constant terms, relative to the mean feature scale.
    higher_is_better : only used by link="auto".

    Fitted attributes: `coef_` (weights in the `quadratic_features` basis), `A_`, `b_`, `e_`
    (the quadratic form in link space), `link_`, `r2_cv_` (leave-one-out R² in metric units, refitting without each point),
    `r2_train_`, `n_samples_`.
    gauss_newton_steps : refinement steps of the fit in metric units (0 = plain linked least squares).
    """

    def __init__(self, link: str = "auto", alpha: float = 1e-8, higher_is_better: bool = True,
                 gauss_newton_steps: int = 20):
        self.link = link
        self.alpha = alpha
        self.higher_is_better = higher_is_better
        self.gauss_newton_steps = gauss_newton_steps

    def fit(self, coefficients: np.ndarray, metric: np.ndarray) -> "QuadraticSurrogate":
        c, y, link = self._validated(coefficients, metric)
        self.coef_ = self._weights(c, y, link)
        self.link_ = link
        self.n_tasks_ = c.shape[1]
        self.n_samples_ = len(y)
        self._set_quadratic_form()
        self.r2_train_ = _r2(y, self.predict(c))
        self.r2_cv_ = self._cross_validated_r2(c, y, link)
        return self

    def _validated(self, coefficients, metric) -> tuple[np.ndarray, np.ndarray, str]:
        """Arrays checked for shape and finiteness, and the link to use (validated in fit, as in scikit-learn)."""
        c = np.atleast_2d(np.asarray(coefficients, dtype=float))
        y = np.asarray(metric, dtype=float).ravel()
        if c.shape[0] != y.shape[0]:
            raise ValueError(f"{c.shape[0]} coefficient rows but {y.shape[0]} metric values")
        if not np.all(np.isfinite(y)) or not np.all(np.isfinite(c)):
            raise ValueError("coefficients or metric contain NaN or inf")
        link = choose_link(y, self.higher_is_better) if self.link == "auto" else self.link
        if link not in LINKS:
            raise ValueError(f"unknown link {link!r}; choose one of {LINKS} or 'auto'")
        return c, y, link

    def _weights(self, c: np.ndarray, y: np.ndarray, link: str) -> np.ndarray:
        """Ridge fit of the quadratic to the linked metric, refined by Gauss-Newton in metric units.

        Least squares on logit(accuracy) over-weights points near saturation; the Gauss-Newton
        steps move towards MAP's fit of link⁻¹(quadratic) to the metric itself, and stop as soon
        as a step would not lower the squared error.
        """
        x = quadratic_features(c)
        scale = np.sqrt(np.mean(x**2, axis=0)) + 1e-12
        xs = x / scale
        penalty = self.alpha * len(y) * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        w = self._solve(xs, _forward(link, y), penalty)
        for _ in range(self.gauss_newton_steps if link != "identity" else 0):
            z = xs @ w
            resid = y - _inverse(link, z)
            step = self._solve(xs * _inverse_derivative(link, z)[:, None], resid, penalty)
            if np.sum((y - _inverse(link, xs @ (w + step))) ** 2) >= np.sum(resid**2):
                break
            w = w + step
        return w / scale

    def _cross_validated_r2(self, c: np.ndarray, y: np.ndarray, link: str, max_folds: int = 100) -> float:
        """Leave-one-out R² in metric units (k-fold with at most `max_folds` folds for large n)."""
        n, p = len(y), quadratic_features(c[:1]).shape[1]
        if n <= p:
            return float("nan")
        folds = np.arange(n) % min(n, max_folds)
        held_out = np.empty(n)
        for k in np.unique(folds):
            test = folds == k
            w = self._weights(c[~test], y[~test], link)
            held_out[test] = _inverse(link, quadratic_features(c[test]) @ w)
        return _r2(y, held_out)

    @staticmethod
    def _solve(a: np.ndarray, b: np.ndarray, penalty: np.ndarray) -> np.ndarray:
        gram = a.T @ a + penalty
        try:
            return np.linalg.solve(gram, a.T @ b)
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(gram, a.T @ b, rcond=None)[0]

    def _set_quadratic_form(self) -> None:
        t = self.n_tasks_
        w = self.coef_
        iu, ju = np.triu_indices(t, k=1)
        a = np.zeros((t, t))
        a[np.arange(t), np.arange(t)] = 2.0 * w[1 + t : 1 + 2 * t]
        a[iu, ju] = w[1 + 2 * t :]
        a[ju, iu] = w[1 + 2 * t :]
        self.A_, self.b_, self.e_ = a, w[1 : 1 + t].copy(), float(w[0])

    def decision_function(self, coefficients: np.ndarray) -> np.ndarray:
        """The quadratic in link space, ½cᵀAc + bᵀc + e."""
        return quadratic_features(coefficients) @ self.coef_

    def predict(self, coefficients: np.ndarray) -> np.ndarray:
        """Predicted metric at each row of `coefficients`, shape (k,)."""
        return _inverse(self.link_, self.decision_function(coefficients))

    def gradient(self, coefficients: np.ndarray) -> np.ndarray:
        """d predict / d c at each row, shape (k, T); used by the front refinement."""
        c = np.atleast_2d(np.asarray(coefficients, dtype=float))
        z = self.decision_function(c)
        return _inverse_derivative(self.link_, z)[:, None] * (c @ self.A_ + self.b_)

    def score(self, coefficients: np.ndarray, metric: np.ndarray) -> float:
        """R² of the predictions in metric units (scikit-learn convention)."""
        return _r2(np.asarray(metric, dtype=float).ravel(), self.predict(coefficients))
