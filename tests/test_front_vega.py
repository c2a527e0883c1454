"""The app's 2-D front in Vega-Lite draws what the report's Plotly figure draws, and a click selects a merge."""
from __future__ import annotations

import dataclasses

import numpy as np

from explorer import figures as F
from explorer.front_vega import SELECTION, coefficients_of, front_2d_spec
from tests.test_figures import TASKS, _chosen, markers, result  # noqa: F401 - fixtures


def _rows(spec, layer=None, series=None):
    return [r for r in spec["data"]["values"] if (layer is None or r["layer"] == layer)
            and (series is None or r.get("series") == series)]


def test_same_points_axes_and_legend_as_the_plotly_figure(result, markers):  # noqa: F811
    units = F.units_for(TASKS, {t: "accuracy" for t in TASKS})
    chosen = _chosen(result)
    mixed = dataclasses.replace(result, front_trusted=np.arange(len(result.front_predicted)) % 3 != 0)
    spec = front_2d_spec(mixed, (0, 2), chosen, markers, [], units)
    fig = F.front_2d(mixed, (0, 2), chosen, markers, [], units)
    layers = spec["layer"]
    x = next(la["encoding"]["x"] for la in layers if la["encoding"]["x"]["field"] == "x")
    assert x["title"] == fig.layout.xaxis.title.text == "a: accuracy (%)"
    assert x["scale"]["domain"] == list(fig.layout.xaxis.range)
    by_name = {tr.name: tr for tr in fig.data}
    for name in ("surrogate front, projected (predicted)", "front, not vouched for (predicted)",
                 "evaluated points (measured)", "base model", "fine-tuned expert", "task arithmetic",
                 "chosen merge (predicted)", "chosen merge (measured)"):
        rows = _rows(spec, "points", name)
        assert np.allclose([r["x"] for r in rows], by_name[name].x), name
        assert np.allclose([r["y"] for r in rows], by_name[name].y), name
    legend = next(la["encoding"]["shape"]["scale"]["domain"] for la in layers if "shape" in la["encoding"])
    assert set(legend) == {tr.name for tr in fig.data if tr.showlegend is not False}
    bars = _rows(spec, "bars")
    plotly_bars = by_name[F.UNCERTAINTY_NAME]
    assert np.allclose([r["xhi"] - r["x"] for r in bars], plotly_bars.error_x.array)
    assert np.allclose([r["yhi"] - r["y"] for r in bars], plotly_bars.error_y.array)
    assert {r["label"] for r in _rows(spec, "labels")} == {"base", "expert: a", "expert: b", "expert: c",
                                                           "task arithmetic (λ=0.40)"}
    colours = set()  # the Okabe-Ito palette and grey only, as in every figure
    for la in layers:
        for key in ("stroke", "fill"):
            scale = la["encoding"].get(key, {}).get("scale") or {}
            colours |= {c.upper() for c in scale.get("range", []) if c != "transparent"}
    assert colours <= {c.upper() for c in F.OKABE_ITO.values()} | {F.GREY.upper()}


def test_a_click_selects_the_clicked_points_coefficients(result, markers):  # noqa: F811
    spec = front_2d_spec(result, (0, 1), _chosen(result), markers)
    points = _rows(spec, "points")
    assert all("id" in r for r in points)  # every point can be clicked
    expert = next(r for r in points if r["kind"] == "expert: b")
    assert np.allclose(coefficients_of(spec, {SELECTION: [{"id": expert["id"]}]}), [0, 1, 0])
    front = next(r for r in points if r["kind"] == "front")
    k = int(np.argmin(np.abs(result.front_predicted[:, 0] - front["x"]) + np.abs(result.front_predicted[:, 1] - front["y"])))
    assert np.allclose(coefficients_of(spec, {SELECTION: [{"id": front["id"]}]}), result.front_coefficients[k])
    assert coefficients_of(spec, {SELECTION: []}) is None and coefficients_of(spec, None) is None
    assert coefficients_of(spec, {SELECTION: [{"id": 10 ** 6}]}) is None  # a stale selection picks nothing


def test_unknown_std_draws_no_bar(result):  # noqa: F811
    spec = front_2d_spec(dataclasses.replace(result, front_std=None), (0, 1))
    assert not _rows(spec, "bars")
