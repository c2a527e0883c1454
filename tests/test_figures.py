"""Figures, the HTML report and the app-state helpers, on an analytic 3-task exploration."""
from __future__ import annotations

import dataclasses

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer import app_state
from explorer import figures as F
from explorer.core.explore import explore
from explorer.report import report_html, write_report

TASKS = ["a", "b", "c"]


def _evaluate(c):
    z = np.array([-1.0, -0.5, -1.5]) + 3.0 * c - 1.5 * c @ np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) * c.mean()
    return {t: float(1 / (1 + np.exp(-z[i]))) for i, t in enumerate(TASKS)}


@pytest.fixture(scope="module")
def result():
    return explore(_evaluate, TASKS, seed=0, front_points=200)


@pytest.fixture(scope="module")
def markers():
    refs = [F.Marker("base", "base", np.zeros(3), np.array([_evaluate(np.zeros(3))[t] for t in TASKS]))]
    for i, t in enumerate(TASKS):
        c = np.eye(3)[i]
        refs.append(F.Marker(f"expert: {t}", "expert", c, np.array([_evaluate(c)[k] for k in TASKS])))
    c = np.full(3, 0.4)
    refs.append(F.Marker("task arithmetic (λ=0.40)", "task_arithmetic", c, np.array([_evaluate(c)[k] for k in TASKS])))
    return refs


def _chosen(result):
    d = result.decide()
    return F.Chosen(d.coefficients, d.predicted, np.array([_evaluate(d.coefficients)[t] for t in TASKS]), std=d.std,
                    trusted=d.trusted)


def _colours(fig: go.Figure) -> set[str]:
    out = set()
    for tr in fig.data:
        for part in ("marker", "line"):
            obj = getattr(tr, part, None)
            colour = getattr(obj, "color", None) if obj is not None else None
            if isinstance(colour, str):
                out.add(colour.upper())
    return out


ALLOWED = {c.upper() for c in F.OKABE_ITO.values()} | {F.GREY.upper(), "WHITE"}


def test_front_2d_has_references_units_and_click_data(result, markers):
    units = F.units_for(TASKS, {t: "accuracy" for t in TASKS})
    fig = F.front_2d(result, (0, 2), _chosen(result), markers, [], units)
    assert fig.layout.xaxis.title.text == "a: accuracy (%)" and fig.layout.yaxis.title.text == "c: accuracy (%)"
    names = [tr.name for tr in fig.data]
    for expected in ("base model", "fine-tuned expert", "task arithmetic", "chosen merge (predicted)", "chosen merge (measured)"):
        assert expected in names
    labels = [x for tr in fig.data if tr.text is not None for x in tr.text]
    assert {"base", "expert: a", "expert: b", "expert: c"} <= set(labels)
    for tr in fig.data:  # every clickable trace carries full coefficient vectors
        if tr.customdata is not None:
            assert np.asarray(tr.customdata).shape[1] == 3
    assert _colours(fig) <= ALLOWED


def test_front_2d_frontier_is_non_dominated():
    pts = np.array([[0.1, 0.9], [0.5, 0.5], [0.4, 0.4], [0.9, 0.1], [0.2, 0.2]])
    assert F.frontier_2d(pts, [1, 1]).tolist() == [0, 1, 3]
    assert F.frontier_2d(pts, [-1, -1]).tolist() == [0, 4, 3]  # minimising both


def test_front_3d(result, markers):
    fig = F.front_3d(result, (0, 1, 2), _chosen(result), markers)
    assert fig.layout.scene.zaxis.title.text.startswith("c:")
    assert any(isinstance(tr, go.Scatter3d) and tr.name == "chosen merge (predicted)" for tr in fig.data)


def test_parallel_draws_minimums_as_constraint_ranges(result):
    floor = float(np.median(result.front_predicted[:, 1]))
    fig = F.parallel(result, [np.nan, floor, np.nan], _chosen(result))
    dims = fig.data[0].dimensions
    assert [d.label.split(":")[0] for d in dims] == TASKS
    assert dims[0].constraintrange is None
    lo, hi = dims[1].constraintrange
    assert lo == pytest.approx(floor) and hi == pytest.approx(max(dims[1].values))
    n = len(result.front_predicted)
    assert np.array_equal(np.array([d.values[:n] for d in dims]).T, result.front_predicted)  # the front first


def test_parallel_chosen_line_stands_out(result):
    """The chosen merge is drawn last, as a thick band around its exact values in the top colour."""
    chosen = _chosen(result)
    fig = F.parallel(result, None, chosen)
    values = np.array([d.values for d in fig.data[0].dimensions]).T
    colours = np.asarray(fig.data[0].line.color)
    n = len(result.front_predicted)
    top = colours == colours.max()
    assert top.sum() >= 5 and np.all(top[-top.sum():]) and not top[:n].any()  # chosen copies, drawn last
    assert np.allclose(values[-1], chosen.predicted)  # the middle copy is exact, on top
    spread = values[top].max(axis=0) - values[top].min(axis=0)
    span = np.array([d.range[1] - d.range[0] for d in fig.data[0].dimensions])
    assert np.all(spread > 0) and np.all(spread < 0.05 * span)  # a few pixels thick, not a smear
    scale = dict(fig.data[0].line.colorscale)
    assert scale[1.0] == F.OKABE_ITO["vermillion"] and scale[0.0] != F.STYLE["front"][0]  # the front recedes


def test_radar_scales_to_experts(result, markers):
    experts = F.expert_diagonal(markers, 3)
    fig = F.radar(TASKS, experts, result.senses, _chosen(result), markers)
    expert_trace = fig.data[0]
    assert np.allclose(expert_trace.r, 1.0)
    assert list(expert_trace.theta) == TASKS + TASKS[:1]
    assert F.scale_to_expert(np.array([2.0]), np.array([4.0]), np.array([-1.0]))[0] == pytest.approx(2.0)


def test_landscape_contour_over_two_coefficients(result, markers):
    ch = _chosen(result)
    fig = F.landscape(result, 1, (0, 2), ch.coefficients, ch, markers, resolution=30)
    contour = fig.data[0]
    assert isinstance(contour, go.Contour) and np.asarray(contour.z).shape == (30, 30)
    grid = np.repeat(ch.coefficients[None], 1, axis=0)
    grid[0, 0], grid[0, 2] = contour.x[3], contour.y[5]
    assert contour.z[5][3] == pytest.approx(result.surrogates["b"].predict(grid)[0])
    assert fig.layout.xaxis.title.text == "c[a] (coefficient, unitless)"
    assert any(tr.name == "Pareto set (front coefficients)" for tr in fig.data)


def test_surrogate_quality_titles_carry_r2(result):
    verified = [F.Marker("verified", "verified", np.full(3, 0.3), np.array([_evaluate(np.full(3, 0.3))[t] for t in TASKS]))]
    fig = F.surrogate_quality(result, verified)
    titles = [a.text for a in fig.layout.annotations]
    assert all("R² (LOO)" in t for t in titles[:3])
    assert any(tr.name == "verified merges" for tr in fig.data)
    bad = F.surrogate_quality(result, threshold=1.01)  # every fit "poor": flagged in the titles
    assert all("poor fit" in a.text for a in bad.layout.annotations[:3])


def test_report_is_standalone_html(result, markers, tmp_path):
    figs = F.all_views(result, _chosen(result), [np.nan] * 3, markers, [], triple=(0, 1, 2))
    assert set(figs) == {"front_2d", "front_3d", "parallel", "radar", "landscape", "quality"}
    rows = [{"task": t, "coefficient": 0.5} for t in TASKS]
    path = write_report(tmp_path / "r.html", "demo <report>", figs, rows, ["a note"])
    text = path.read_text()
    assert "<script" in text and '<script src="http' not in text and "demo &lt;report&gt;" in text
    assert all(f"fig-{k}" in text for k in figs) and "a note" in text
    assert report_html("t", {}, []).startswith("<!DOCTYPE html>")


def test_preferences_round_trip_through_the_url():
    tasks = ["fashion", "digits", "odd,name"]
    q = app_state.encode_preferences(tasks, {"fashion": 2.0, "digits": 1.0, "odd,name": 0.5}, {"digits": 0.875},
                                     "abcdef0123456789", np.array([0.1, 0.2, 0.3]))
    w, m, picked, problems = app_state.decode_preferences(q, tasks)
    assert w == {"fashion": 2.0, "digits": 1.0, "odd,name": 0.5} and m == {"digits": 0.875}
    assert np.allclose(picked, [0.1, 0.2, 0.3]) and not problems and q["exp"] == "abcdef012345"
    w, m, picked, problems = app_state.decode_preferences({"w": "nope:1,digits:x", "pick": "1,2"}, tasks)
    assert w == {} and picked is None and len(problems) == 3


def test_app_args(tmp_path):
    a = app_state.app_args(["--spec", str(tmp_path / "s.yaml")], {})
    assert a.spec == (tmp_path / "s.yaml").resolve() and not a.is_default
    b = app_state.app_args([], {app_state.SPEC_ENV: "x.yaml"})
    assert b.spec.name == "x.yaml"
    c = app_state.app_args(["-x"], {})
    assert c.spec == app_state.DEFAULT_SPEC and c.is_default


def test_choose_a_clicked_point_reports_feasibility(result):
    c = result.front_coefficients[0]
    d = app_state.choose(result, {}, {"a": 2.0}, c)  # an unreachable floor
    assert not d.feasible and d.shortfall[0] > 0 and np.allclose(d.coefficients, c)
    d = app_state.choose(result, {"a": 1.0}, {}, None)
    assert d.feasible


def test_every_view_is_a_valid_plotly_figure(result, markers):
    """The builders skip plotly's validation for speed; validate their output here once."""
    figs = F.all_views(result, _chosen(result), [np.nan, 0.5, np.nan], markers, [], triple=(0, 1, 2))
    for name, fig in figs.items():
        go.Figure(fig.to_dict())  # raises ValueError on any invalid property
        assert fig.to_json()


# --- uncertainty and trust -------------------------------------------------------------------------
def test_front_2d_draws_uncertainty_and_marks_points_not_vouched_for(result):
    m = len(result.front_predicted)
    mixed = dataclasses.replace(result, front_trusted=np.arange(m) % 3 != 0)  # a real fit, some points untrusted
    chosen = _chosen(mixed)
    fig = F.front_2d(mixed, (0, 1), chosen)
    by_name = {tr.name: tr for tr in fig.data}
    front, untrusted = by_name["surrogate front, projected (predicted)"], by_name["front, not vouched for (predicted)"]
    assert np.allclose(front.x, mixed.front_predicted[mixed.front_trusted, 0])
    assert np.allclose(untrusted.x, mixed.front_predicted[~mixed.front_trusted, 0])
    assert untrusted.marker.symbol == "circle-open" and untrusted.marker.color == F.GREY != front.marker.color
    bars = by_name[F.UNCERTAINTY_NAME]
    trusted_rows = np.flatnonzero(mixed.front_trusted)
    rows = [int(trusted_rows[np.argmin(np.abs(mixed.front_coefficients[trusted_rows] - c).max(axis=1))])
            for c in bars.customdata]
    assert rows and np.allclose(mixed.front_coefficients[rows], bars.customdata)  # the edge runs through vouched-for points
    assert np.allclose(bars.error_x.array, 2 * mixed.front_std[rows, 0])
    assert np.allclose(bars.error_y.array, 2 * mixed.front_std[rows, 1])
    picked = next(tr for tr in fig.data if tr.name.startswith("chosen merge (predicted)"))
    assert np.allclose([picked.error_x.array[0], picked.error_y.array[0]], 2 * chosen.std[:2])
    assert np.all(chosen.std > 0)
    go.Figure(fig.to_dict())  # valid plotly
    fig3 = F.front_3d(mixed, (0, 1, 2), chosen)
    assert any(tr.name == "front, not vouched for (predicted)" and tr.marker.symbol == "circle-open" for tr in fig3.data)


def test_parallel_and_radar_draw_the_chosen_band(result, markers):
    chosen = _chosen(result)
    fig = F.parallel(result, None, chosen)
    values = np.array([d.values for d in fig.data[0].dimensions]).T
    colours = np.asarray(fig.data[0].line.color)
    band = values[colours == F.PARALLEL_LEVELS["band"]]
    assert len(band) == F.PARALLEL_BAND_LINES
    assert np.allclose(band.min(axis=0), chosen.predicted - 2 * chosen.std)
    assert np.allclose(band.max(axis=0), chosen.predicted + 2 * chosen.std)
    experts = F.expert_diagonal(markers, 3)
    radar = F.radar(TASKS, experts, result.senses, chosen, markers)
    ring = next(tr for tr in radar.data if F.UNCERTAINTY_NAME in tr.name)
    assert ring.fill == "toself"
    r = np.asarray(ring.r)
    assert np.allclose(r[:3], F.scale_to_expert(chosen.predicted + 2 * chosen.std, experts, result.senses))
    assert np.allclose(r[-3:][::-1], F.scale_to_expert(chosen.predicted - 2 * chosen.std, experts, result.senses))


def _rough(c):
    """Not a quadratic in any link: left-out predictions differ from the in-sample fit."""
    base = _evaluate(c)
    return {t: float(np.clip(v + 0.08 * np.sin(7 * c[0] + 4 * c[i]), 0, 1)) for i, (t, v) in enumerate(base.items())}


def test_surrogate_quality_plots_left_out_predictions():
    result = explore(_rough, TASKS, seed=0, front_points=50)
    fig = F.surrogate_quality(result)
    evaluated = [tr for tr in fig.data if tr.name and tr.name.startswith("evaluated points")]
    assert len(evaluated) == 3
    for tr, task in zip(evaluated, TASKS):
        s = result.surrogates[task]
        assert np.allclose(tr.x, result.observed[:, TASKS.index(task)])
        assert np.allclose(tr.y, s.loo_predictions_)  # what R² (LOO) is computed from ...
        assert not np.allclose(tr.y, s.predict(result.samples))  # ... not the in-sample fit
        assert np.allclose(tr.error_y.array, 2 * s.loo_std_)
