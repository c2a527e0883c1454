"""Measuring merges on a subsample of each task's examples, and how much such a measurement is worth.

Why: a point's cost is its evaluation over every task's examples. A metric that is a mean over
examples (accuracy, mean loss) measured on n of N examples has a known sampling variance,
s²/n · (N − n)/(N − 1) (s² the per-example variance; p(1 − p) for 0/1 scores: 4 points of
accuracy at n = 100), so the surrogates can be told how much to trust each point instead of
paying for the full set everywhere.

Every point of a task sees the same examples (a prefix of one seeded order of the task's set):
merges then differ only by what they get right or wrong on common examples, which sharpens
differences between them, and a point extended from n to n′ examples runs only the n′ − n new ones.
"""
from __future__ import annotations

import hashlib

import numpy as np

from explorer.errors import SpecError

#: `examples: auto` keeps the sampling noise the surrogates inherit under `AUTO_TARGET` (metric units).
#: A quadratic in T coefficients has P = (T+1)(T+2)/2 terms, fitted to the default 2P points, so its
#: predictions carry about σ²·P/(2P) = σ²/2 of the points' sampling variance σ² ≤ ¼·(1/n − 1/N);
#: keeping that under AUTO_TARGET² asks n ≥ K·N/(N + K) with K = 1/(8·AUTO_TARGET²) = 1,250 at one
#: point of accuracy: 242 of 300 examples, 556 of 1,000, 1,112 of 10,000, 1,191 of 25,000. Small
#: sets are measured almost whole (subsampling cannot beat a full set's zero noise there; see
#: benchmarks/results/subsample.md), large ones on a small share. Points the adaptive rounds place
#: on the predicted front, where picks are made, get `FRONT_FACTOR` times as many.
AUTO_TARGET = 0.01
AUTO_K = 1.0 / (8 * AUTO_TARGET**2)
FRONT_FACTOR = 2


def example_order(n_total: int, key: str) -> np.ndarray:
    """The order a task's examples are measured in: a permutation of range(n_total) fixed by `key`
    (the task's evaluation identity: the same for every point, run and machine, so stored prefixes
    of per-example scores always name the same examples)."""
    word = hashlib.sha256(f"{int(n_total)}\0{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(word[:8], "little"))
    return rng.permutation(int(n_total))


def check_examples(setting, n_total: int, task: str) -> None:
    """One line naming the task when a fixed count cannot be measured on its set."""
    if isinstance(setting, (int, np.integer)) and not isinstance(setting, bool):
        if setting < 1:
            raise SpecError(f"evaluation.examples: {setting} is not a positive number of examples")
        if setting > n_total:
            raise SpecError(f"evaluation.examples: {setting} is more than task {task!r} has ({n_total} examples)")


def examples_for(setting, n_total: int, kind: str, task: str = "") -> int:
    """How many of a task's `n_total` examples a point of `kind` is measured on.

    setting: "full" (every example), a count (design and adaptive points; capped by nothing: a count
    above the set is an error), or "auto". Points that are shown or acted on (picks, verify, polish,
    the closing task-arithmetic reference, held-out tests) are always measured on the full set.
    """
    check_examples(setting, n_total, task)
    if setting == "full" or kind not in ("design", "adaptive", "reference"):
        return int(n_total)
    if setting == "auto":
        n = int(np.ceil(AUTO_K * n_total / (n_total + AUTO_K)))
        if kind == "adaptive":
            n *= FRONT_FACTOR
        return int(min(n, n_total))
    return int(setting)


def sampling_variance(values: np.ndarray, n_total: int) -> float:
    """Variance of the mean of `values` (per-example scores, a prefix of a random order) as an
    estimate of the mean over all `n_total` examples: s²/n · (N − n)/(N − 1); 0 for the full set."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n >= n_total or n_total <= 1:
        return 0.0
    if n < 2:
        return 0.25  # one example: the widest a score in [0, 1] can vary
    s2 = float(np.var(v, ddof=1))
    if np.all((v == 0) | (v == 1)):  # 0/1 scores: never claim certainty from an all-right subsample
        p = (np.sum(v) + 0.5) / (n + 1.0)
        s2 = max(s2, p * (1 - p))
    return s2 / n * (n_total - n) / (n_total - 1)


def link_noise(link: str, metric: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """A metric's sampling variance carried into link space (delta method): var · (dz/dm)²."""
    m = np.asarray(metric, dtype=float)
    var = np.asarray(variance, dtype=float)
    if link == "logit":
        p = np.clip(m, 1e-3, 1 - 1e-3)
        return var / (p * (1 - p)) ** 2
    if link == "log":
        return var / np.maximum(m, 1e-12) ** 2
    return var


#: Points that must share the longest prefix before it is used to correct shorter ones.
MIN_ANCHORS = 3


def shared_variance(scores: list[np.ndarray], n_total: int) -> float:
    """Variance of the level error that one task's points still share after `corrected_means`.

    Why: the surrogates treat each point's sampling variance as independent noise, which more points
    average away; the error common to every point does not average away, so a new full-set
    measurement differs from the fitted level by it. Two merges' errors on the same n examples have
    covariance c̄/n · (N − n)/(N − 1), c̄ the covariance of their per-example scores over examples (an
    example most merges get wrong lowers them all); its mean over pairs of the longest anchored
    prefix's points is the part they share (0 once that prefix is the full set: verified picks,
    full-set front points). Shorter points add the uncertainty of the mean gap they were shifted by.
    """
    lengths, top, anchors = _anchors(scores)
    if len(scores) == 0 or np.all(lengths >= n_total):
        return 0.0
    if top is None:
        return float(np.mean([sampling_variance(s, n_total) for s in scores]))
    out = 0.0
    if top < n_total and top > 1:
        X = np.array([np.asarray(scores[a][:top], dtype=float) for a in anchors])  # (points, examples)
        k = len(X)
        total = np.var(X.mean(axis=0), ddof=1) * k * k - np.sum(np.var(X, axis=1, ddof=1))
        pair_cov = total / (k * (k - 1))  # mean over pairs i ≠ j of cov over examples
        out = max(float(pair_cov), 0.0) / top * (n_total - top) / (n_total - 1)
    shorter = np.unique(lengths[lengths < top])
    if len(shorter) and len(anchors) > 1:
        out += max(float(np.var(_gaps(scores, anchors, top, n), ddof=1)) for n in shorter) / len(anchors)
    return out


def _anchors(scores: list[np.ndarray]) -> tuple[np.ndarray, int | None, np.ndarray | None]:
    """(lengths, the longest prefix at least `MIN_ANCHORS` points reached, those points), or
    (lengths, None, None) when no prefix was reached by that many."""
    lengths = np.array([len(s) for s in scores])
    levels = [n for n in np.unique(lengths)[::-1] if np.sum(lengths >= n) >= MIN_ANCHORS]
    if not levels:
        return lengths, None, None
    top = int(levels[0])
    return lengths, top, np.flatnonzero(lengths >= top)


def _gaps(scores: list[np.ndarray], anchors: np.ndarray, top: int, n: int) -> np.ndarray:
    """Per anchor, its mean over the first `top` examples minus its mean over the first `n`."""
    return np.array([float(np.mean(scores[a][:top])) - float(np.mean(scores[a][:n])) for a in anchors])


def corrected_means(scores: list[np.ndarray], n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """One task's values from per-example scores measured on prefixes of one order: (values, variances).

    Why: every point sees the same first n examples, so most of a subsample's error is shared by all
    points (an easy or hard draw lifts or lowers every merge alike): it leaves the shape of the front
    nearly intact but shifts its level, and averaging over points cannot remove it. Points measured on
    a longer prefix (the front's points, verified picks: the full set) show how far the shorter
    prefix's mean sits from theirs on the same merges, so each shorter point is shifted by the mean
    of that gap over the points of the longest prefix that at least `MIN_ANCHORS` points reached.
    Its variance is then the spread of those gaps (the part not shared) plus their mean's
    uncertainty and the longest prefix's own sampling variance; points on the longest prefix or
    longer keep their plain mean and sampling variance. With too few longer points nothing is shifted.
    """
    lengths, top, anchors = _anchors(scores)
    means = np.array([float(np.mean(s)) for s in scores])
    variances = np.array([sampling_variance(s, n_total) for s in scores])
    if top is None:
        return means, variances
    top_var = float(np.mean([sampling_variance(scores[a][:top], n_total) for a in anchors]))
    values, out_var = means.copy(), variances.copy()
    for n in np.unique(lengths[lengths < top]):
        gaps = _gaps(scores, anchors, top, n)
        spread = float(np.var(gaps, ddof=1)) if len(gaps) > 1 else float(np.max(variances))
        short = lengths == n
        values[short] = means[short] + float(np.mean(gaps))
        out_var[short] = spread * (1.0 + 1.0 / len(gaps)) + top_var
    return values, out_var
