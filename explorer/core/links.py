"""Link functions: the scale a surrogate's quadratic lives on (logit of an accuracy, log of a loss).

Accuracies are bounded, so a quadratic fitted to them directly overshoots [0, 1]; fitted to their
logit it cannot. Every surrogate (quadratic, kriging, low-rank) and the front's fast objectives
map through the same functions here.
"""
from __future__ import annotations

import numpy as np

LINKS = ("logit", "log", "identity")
_EPS = 1e-4


def infer_n_examples(metric: np.ndarray, largest: int = 20000) -> int | None:
    """The smallest evaluation-set size n for which every value is k/n (None if there is none)."""
    y = np.asarray(metric, dtype=float).ravel()
    if y.size == 0 or np.any((y < 0) | (y > 1)):
        return None
    for start in range(1, largest + 1, 1024):  # in blocks of 1024: the usual set sizes lie in the first
        n = np.arange(start, min(start + 1024, largest + 1))
        frac = np.abs(np.outer(n, y) - np.round(np.outer(n, y)))
        ok = np.flatnonzero(np.all(frac < 1e-6 * n[:, None], axis=1))
        if ok.size:
            return int(n[ok[0]])
    return None


def clip_for_link(link: str, metric: np.ndarray, n_examples: int | None = None) -> np.ndarray:
    """Keep accuracies of exactly 0 or 1 finite under the logit link: clip to [½/(n+1), (n+½)/(n+1)].

    n is the evaluation-set size behind the accuracy ((k+½)/(n+1) for k = 0 and k = n); when it is
    not given it is inferred from the spacing of the values, else 1000 is assumed.
    """
    m = np.asarray(metric, dtype=float)
    if link != "logit":
        return m
    n = n_examples or infer_n_examples(m) or 1000
    return np.clip(m, 0.5 / (n + 1), (n + 0.5) / (n + 1))


def metric_std(link: str, z: np.ndarray, z_std: np.ndarray) -> np.ndarray:
    """A std in metric units: a quarter of the ±2-std interval mapped through the inverse link."""
    return (link_inverse(link, z + 2 * z_std) - link_inverse(link, z - 2 * z_std)) / 4.0


def choose_link(metric: np.ndarray, higher_is_better: bool) -> str:
    """Logit for scores in [0, 1], log for positive losses, identity otherwise."""
    m = np.asarray(metric, dtype=float)
    if higher_is_better and np.all((m >= 0) & (m <= 1)):
        return "logit"
    if not higher_is_better and np.all(m > 0):
        return "log"
    return "identity"


def link_forward(link: str, m: np.ndarray) -> np.ndarray:
    """The link (logit, log, identity) applied to a metric already kept inside its domain."""
    if link == "logit":
        p = np.clip(m, _EPS, 1 - _EPS)
        return np.log(p) - np.log1p(-p)
    if link == "log":
        return np.log(np.maximum(m, 1e-12))
    return np.asarray(m, dtype=float)


def link_inverse(link: str, z: np.ndarray) -> np.ndarray:
    """Metric units from link space (an overflow-free sigmoid for logit)."""
    if link == "logit":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free sigmoid
    if link == "log":
        return np.exp(np.minimum(z, 700.0))
    return z


def link_inverse_derivative(link: str, z: np.ndarray) -> np.ndarray:
    """d metric / d z, for Gauss-Newton steps and front gradients."""
    if link == "logit":
        s = link_inverse(link, z)
        return s * (1 - s)
    if link == "log":
        return np.exp(np.minimum(z, 700.0))
    return np.ones_like(z)
