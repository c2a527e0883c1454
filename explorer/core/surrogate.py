"""Quadratic surrogates of a task metric as a function of the merge coefficients (MAP).

M̃(c) = link⁻¹(½ cᵀAc + bᵀc + e). Fitting the quadratic to the linked metric (logit of an
accuracy, log of a loss) by ridge least squares is the cheap equivalent of MAP's nonlinear fit
near the data; a few Gauss-Newton steps then fit in metric units, as MAP does. It never fails
silently: the ridge term keeps the system solvable, and a poor fit shows up in `r2_cv_`.
"""
from __future__ import annotations

import numpy as np

from explorer.core.links import (
    LINKS,
    choose_link,
    clip_for_link,
    link_forward,
    link_inverse,
    link_inverse_derivative,
    metric_std,
)
from explorer.core.sampling import link_noise

#: Target share of left-out measurements inside ±2 predictive std after calibration. Higher than
#: the 80–95 % wanted on the front because the front is where the surrogates are optimistic: left-out
#: errors over the whole design run smaller than errors at re-evaluated front points (8-task
#: testbeds: a 95 % target gave 70–83 % there, 99 % gave 91–99 %; see benchmarks/results). Where the
#: adaptive rounds leave enough held-out front errors, `front_scale` then recalibrates each task on them.
COVERAGE_TARGET = 0.975
_CALIBRATION_GRID = np.exp(np.linspace(np.log(0.25), np.log(20.0), 120))


def quadratic_features(coefficients: np.ndarray) -> np.ndarray:
    """Feature map [1, c₁..c_T, c₁²..c_T², cᵢcⱼ (i<j)] of shape (n, (T+1)(T+2)/2)."""
    c = np.atleast_2d(np.asarray(coefficients, dtype=float))
    n, t = c.shape
    iu, ju = np.triu_indices(t, k=1)
    return np.hstack([np.ones((n, 1)), c, c**2, c[:, iu] * c[:, ju]])


def quadratic_feature_jacobian(coefficients: np.ndarray) -> np.ndarray:
    """d features / d c for each row: shape (n, P, T), in the order of `quadratic_features`."""
    c = np.atleast_2d(np.asarray(coefficients, dtype=float))
    n, t = c.shape
    iu, ju = np.triu_indices(t, k=1)
    jac = np.zeros((n, 1 + 2 * t + len(iu), t))
    idx = np.arange(t)
    jac[:, 1 + idx, idx] = 1.0
    jac[:, 1 + t + idx, idx] = 2.0 * c
    pairs = 1 + 2 * t + np.arange(len(iu))
    jac[:, pairs, iu] = c[:, ju]
    jac[:, pairs, ju] = c[:, iu]
    return jac


def calibration_factor(link: str, observed: np.ndarray, z_mean: np.ndarray, z_std: np.ndarray,
                       target: float = COVERAGE_TARGET) -> float:
    """Smallest std scale putting `target` of left-out measurements inside ±2 std.

    z_mean, z_std: left-out predictions and their std in link space. Intervals are mapped
    through the inverse link, so the coverage is counted in metric units.
    """
    y = np.asarray(observed, dtype=float)
    for f in _CALIBRATION_GRID:
        lo, hi = link_inverse(link, z_mean - 2 * f * z_std), link_inverse(link, z_mean + 2 * f * z_std)
        if np.mean((y >= lo - 1e-12) & (y <= hi + 1e-12)) >= target:
            return float(f)
    return float(_CALIBRATION_GRID[-1])


#: P(|Z| < 2) for a normal Z: the share of the adaptive rounds' held-out front errors ±2 std should hold.
NOMINAL_COVERAGE = 0.954
#: Held-out front errors a task needs before they recalibrate its std; with fewer, the left-out calibration stands.
MIN_FRONT_ERRORS = 20


def front_scale(measured: np.ndarray, told_mean: np.ndarray, told_std: np.ndarray, noise_variance=None,
                target: float = NOMINAL_COVERAGE) -> np.ndarray:
    """Per task (columns), the factor on the reported std that puts `target` of the adaptive rounds'
    held-out errors inside ±2 std; 1 for a task with fewer than `MIN_FRONT_ERRORS` of them.

    Why: the left-out calibration covers the whole design, where errors run smaller than at new points
    on the front, and by task differently. Each adaptive round told a mean and std for the front points
    it chose before they were measured (NaN rows: points nobody was told about), which is what a pick
    is: an unmeasured front point, measured on the full set. Only values measured on the full set count
    (`noise_variance` 0, (n, T)): a subsample shares its level error with the subsamples the fit saw,
    so its error says little about a full-set measurement's. Metric units.
    """
    y, mu, sd = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (measured, told_mean, told_std))
    z = np.abs(y - mu) / np.clip(sd, 1e-12, None)
    if noise_variance is not None:
        z[np.atleast_2d(np.asarray(noise_variance, dtype=float)) > 0] = np.nan
    out = np.ones(y.shape[1])
    for i in range(y.shape[1]):
        zi = z[np.isfinite(z[:, i]), i]
        if len(zi) >= MIN_FRONT_ERRORS:
            out[i] = float(np.clip(np.quantile(zi, target) / 2, _CALIBRATION_GRID[0], _CALIBRATION_GRID[-1]))
    return out


def r2_score(observed: np.ndarray, predicted: np.ndarray) -> float:
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
                 gauss_newton_steps: int = 20, n_examples: int | None = None):
        self.link = link
        self.alpha = alpha
        self.higher_is_better = higher_is_better
        self.gauss_newton_steps = gauss_newton_steps
        self.n_examples = n_examples

    def fit(self, coefficients: np.ndarray, metric: np.ndarray, noise_variance=None) -> "QuadraticSurrogate":
        """noise_variance: per sample, the known sampling variance of its metric (metric units; 0 for a
        measurement on the full set, see explorer.core.sampling). Samples are then weighted by
        1 / (misfit² + their noise), the misfit estimated from an unweighted fit first (feasible
        generalised least squares), so a point measured on few examples pulls the fit less."""
        c, y, link = self._validated(coefficients, metric)
        y_fit = clip_for_link(link, y, self.n_examples)
        self.sample_weight_ = self._noise_weights(c, y_fit, link, noise_variance)
        self.coef_ = self._weights(c, y_fit, link, self.sample_weight_)
        self.link_ = link
        self.n_tasks_ = c.shape[1]
        self.n_samples_ = len(y)
        self._set_quadratic_form()
        self.r2_train_ = r2_score(y, self.predict(c))
        self.r2_cv_ = self._cross_validated_r2(c, y_fit, link)
        self._fit_uncertainty(c, y, link)
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

    def _noise_weights(self, c: np.ndarray, y: np.ndarray, link: str, noise_variance) -> np.ndarray | None:
        """Relative sample weights (mean 1) from known sampling variances; None when every point is exact."""
        if noise_variance is None:
            return None
        noise = np.asarray(noise_variance, dtype=float).ravel()
        if noise.shape != y.shape or np.any(~np.isfinite(noise)) or np.any(noise < 0):
            raise ValueError("noise_variance must hold one finite, non-negative variance per sample")
        if not np.any(noise > 0):
            return None
        var_z = link_noise(link, y, noise)
        z = link_forward(link, y)
        p = quadratic_features(c[:1]).shape[1]
        resid = z - quadratic_features(c) @ self._weights(c, y, link, None)
        dof = max(len(y) - p, 1)
        misfit = max(float(np.sum(resid**2)) / dof - float(np.mean(var_z)), 1e-4 * float(np.var(z)) + 1e-12)
        weight = 1.0 / (misfit + var_z)
        return weight / weight.mean()

    def _weights(self, c: np.ndarray, y: np.ndarray, link: str, sample_weight: np.ndarray | None = None) -> np.ndarray:
        """Ridge fit of the quadratic to the linked metric, refined by Gauss-Newton in metric units.

        Least squares on logit(accuracy) over-weights points near saturation; the Gauss-Newton
        steps move towards MAP's fit of link⁻¹(quadratic) to the metric itself, and stop as soon
        as a step would not lower the squared error.
        """
        x = quadratic_features(c)
        scale = np.sqrt(np.mean(x**2, axis=0)) + 1e-12
        xs = x / scale
        r = np.ones(len(y)) if sample_weight is None else np.sqrt(sample_weight)  # weighted rows
        penalty = self.alpha * len(y) * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        w = self._solve(xs * r[:, None], link_forward(link, y) * r, penalty)
        for _ in range(self.gauss_newton_steps if link != "identity" else 0):
            z = xs @ w
            resid = (y - link_inverse(link, z)) * r
            step = self._solve(xs * (link_inverse_derivative(link, z) * r)[:, None], resid, penalty)
            # damped: halve the step until the squared error falls (saturated points make full
            # Gauss-Newton steps overshoot)
            for _halving in range(8):
                if np.sum(((y - link_inverse(link, xs @ (w + step))) * r) ** 2) < np.sum(resid**2):
                    break
                step = step / 2
            else:
                break
            w = w + step
        return w / scale

    def _cross_validated_r2(self, c: np.ndarray, y: np.ndarray, link: str, max_folds: int = 100) -> float:
        """Leave-one-out R² in metric units (k-fold with at most `max_folds` folds for large n)."""
        n, p = len(y), quadratic_features(c[:1]).shape[1]
        self.loo_decision_ = np.full(n, np.nan)
        self.loo_predictions_ = np.full(n, np.nan)
        if n <= p:
            return float("nan")
        folds = np.arange(n) % min(n, max_folds)
        held_out = np.empty(n)
        for k in np.unique(folds):
            test = folds == k
            sw = None if getattr(self, "sample_weight_", None) is None else self.sample_weight_[~test]
            w = self._weights(c[~test], y[~test], link, sw)
            held_out[test] = quadratic_features(c[test]) @ w
        self.loo_decision_ = held_out
        self.loo_predictions_ = link_inverse(link, held_out)
        return r2_score(y, self.loo_predictions_)

    def _fit_uncertainty(self, c: np.ndarray, y: np.ndarray, link: str) -> None:
        """Predictive std from the least-squares posterior in link space, calibrated on left-out points.

        var(z) = σ² (1 + x(XᵀX + αI)⁻¹xᵀ), σ² the mean squared left-out residual of the linked
        metric; then scaled so ±2 std covers `COVERAGE_TARGET` of the left-out measurements.
        """
        x = quadratic_features(c)
        self._std_scale = np.sqrt(np.mean(x**2, axis=0)) + 1e-12
        xs = x / self._std_scale
        gram = xs.T @ xs + self.alpha * len(y) * np.eye(x.shape[1]) + 1e-10 * np.eye(x.shape[1])
        self._gram_inv = np.linalg.pinv(gram)
        self.calibration_ = 1.0
        if np.all(np.isfinite(self.loo_decision_)):
            z = link_forward(link, clip_for_link(link, y, self.n_examples))
            self.noise_scale_ = float(np.sqrt(np.mean((z - self.loo_decision_) ** 2)))
            lev = np.einsum("ij,jk,ik->i", xs, self._gram_inv, xs)
            sd = self.noise_scale_ * np.sqrt(1 + np.clip(lev, 0, None))
            self.calibration_ = calibration_factor(link, y, self.loo_decision_, sd)
            self.loo_z_, self.loo_z_std_ = self.loo_decision_, sd * self.calibration_
            self.loo_std_ = metric_std(link, self.loo_z_, self.loo_z_std_)
        else:  # no degrees of freedom left to estimate the error: say so with an unbounded std
            self.noise_scale_ = float("inf")
            self.loo_z_, self.loo_z_std_ = self.loo_decision_, np.full(len(y), np.inf)
            self.loo_std_ = np.full(len(y), np.inf)

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

    def predict(self, coefficients: np.ndarray, return_std: bool = False):
        """Predicted metric at each row of `coefficients`, shape (k,); with return_std, (mean, std).

        std is in metric units (scikit-learn's GaussianProcessRegressor convention), calibrated on
        left-out points and then on the held-out front errors (`front_scale_`, set by
        model_selection.fit_surrogate; 1 without them), with the level error subsampled points share (`shared_variance_`, set by
        model_selection.fit_surrogate; 0 on full sets); infinite when the design leaves no degrees
        of freedom to estimate it.
        """
        z = self.decision_function(coefficients)
        mean = link_inverse(self.link_, z)
        if not return_std:
            return mean
        xs = quadratic_features(coefficients) / self._std_scale
        lev = np.einsum("ij,jk,ik->i", xs, self._gram_inv, xs)
        sd = self.noise_scale_ * np.sqrt(1 + np.clip(lev, 0, None)) * self.calibration_
        return mean, np.sqrt((getattr(self, "front_scale_", 1.0) * metric_std(self.link_, z, sd)) ** 2
                             + getattr(self, "shared_variance_", 0.0))

    def gradient(self, coefficients: np.ndarray) -> np.ndarray:
        """d predict / d c at each row, shape (k, T); used by the front refinement."""
        c = np.atleast_2d(np.asarray(coefficients, dtype=float))
        z = self.decision_function(c)
        return link_inverse_derivative(self.link_, z)[:, None] * (c @ self.A_ + self.b_)

    def score(self, coefficients: np.ndarray, metric: np.ndarray) -> float:
        """R² of the predictions in metric units (scikit-learn convention)."""
        return r2_score(np.asarray(metric, dtype=float).ravel(), self.predict(coefficients))
