"""What the README's "Measured" section claims for an 8-task problem, re-measured on every run.

The analytic smooth landscape (T = 8, seed 0) is the cheapest 8-task problem with exact truth: the
default engine (`explorer.explore`: the adaptive design from 4 tasks on, surrogate family per
task) spends its 2P = 90 evaluations, then the shown (trusted) front is measured at 40 thinned
points, as `benchmarks/run.py` does. README row "analytic T = 8 (smooth / sharp)" (FIT_VERSION 13): median
|pred − meas| 0.22, worst task's median 0.35, ±2 std coverage 96 %; picks at N₁: mean real margin 0.05
points (`benchmarks/results/benchmark-partial.md`). This seed meets the bounds below on both of
OpenBLAS's Haswell and SkylakeX kernels (`benchmarks/claims_spread.py`), so they do not depend on the
machine's BLAS kernel. Over its 4 landscape seeds × 2 kernels the front's bounds hold on every run
(median 0.16–0.22, worst task 0.23–0.43, coverage 92–98 %), the picks' not: seed 1 on Haswell has
mean 0.15 and worst pick 0.80 (0.43 with FIT_VERSION 10). The coverage band is the issue's, widened
on top to 99 %.
"""
import numpy as np
import pytest

from benchmarks.preferences import preferences
from benchmarks.problems import exact_margin
from explorer import explore
from explorer.core.pareto import thin
from explorer.demo.landscapes import make_landscape

POINTS = 40  # as the README's fidelity table (benchmarks/run.py FIDELITY_POINTS)


@pytest.fixture(scope="module")
def explored():
    land = make_landscape(8, "smooth", 0)
    result = explore(land, land.tasks)  # the default: adaptive design, 2P evaluations, 1000 front points
    return land, result


@pytest.fixture(scope="module")
def shown_front(explored):
    land, result = explored
    rows = np.flatnonzero(result.front_trusted)
    chosen = rows[thin(result.front_predicted[rows], POINTS, 0)]
    measured = land.values(result.front_coefficients[chosen], noisy=False)
    error = 100 * np.abs(result.front_predicted[chosen] - measured)  # accuracy points
    return error, 100 * result.front_std[chosen]


def test_default_engine_spends_the_claimed_budget(explored):
    _, result = explored
    assert len(result.samples) == 90  # 2P at T = 8, as the README's tables count it
    assert result.front_trusted.mean() > 0.5  # most of the front is shown as vouched for


def test_shown_front_error_matches_readme(shown_front):
    error, _ = shown_front
    assert len(error) == POINTS
    assert np.median(error) <= 0.26  # README: 0.22 points
    assert np.median(error, axis=0).max() <= 0.50  # README: worst task's median 0.35 points


def test_two_std_coverage_within_band(shown_front):
    error, std = shown_front
    coverage = np.mean(error <= 2 * std)
    assert 0.80 <= coverage <= 0.99  # README: 96 % (FIT_VERSION 13)


def test_picks_are_close_to_the_exact_front(explored):
    land, result = explored
    _, front = land.true_front(1000)
    picks = np.array([result.decide(w).coefficients for w in preferences(8)])
    margins = 100 * np.array([exact_margin(land, c, front) for c in picks])
    assert margins.mean() <= 0.15  # README: 0.05 points at N₁ (0.34 on one kernel before FIT_VERSION 10; plain MAP: 4.68 over both analytic 8-task landscapes)
    assert margins.max() <= 0.6
