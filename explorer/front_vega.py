"""The app's 2-D front as a Vega-Lite spec: the first view a visitor sees.

Why not the Plotly figure: the browser loads Streamlit's Plotly chunk (4.7 MB) before it can draw a
Plotly chart, about 1 s of main-thread time per new visitor on a 2-core machine; Streamlit's Vega-Lite
renderer draws the same points ~0.8 s sooner (benchmarks/bench_page_load.py), which is what brings the
page under its 3 s budget. The points, ranges and label places are `figures.front_2d_geometry`'s, the
colours and symbols `figures.STYLE`'s, so the view reads as the report's Plotly figure does. Clicking a
point selects it: each row carries an `id`, and `coefficients_of` maps a selection back to its
coefficient vector.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from explorer.figures import (BAND_STD, METHOD_COLOURS, STYLE, UNCERTAINTY_NAME, Chosen, Marker, Units,
                              front_2d_geometry, label_offsets)

SELECTION = "pick"  # the point-selection parameter the app reads clicks from
#: The plot area in pixels at 1280×800 in the app's left column (measured in Chromium); labels are placed in it.
PLOT_AREA_PX = (420, 260)
LABEL_FONT_PX = 11
#: Vega shapes for Plotly's symbols; the star is an SVG path on the unit square, as Vega's shapes are.
SHAPES = {"circle": "circle", "circle-open": "circle", "square": "square", "diamond": "diamond",
          "triangle-up": "triangle-up", "line": "stroke",
          "star": "M0,-1L0.24,-0.31L0.95,-0.31L0.38,0.12L0.59,0.81L0,0.38L-0.59,0.81L-0.38,0.12L-0.95,-0.31L-0.24,-0.31Z"}
OPEN = {"circle-open"}


def _coefficients_text(tasks: Sequence[str], c) -> str:
    return ", ".join(f"c[{t}] = {float(v):.3f}" for t, v in zip(tasks, c))


def front_2d_spec(result, pair: tuple[int, int], chosen: Chosen | None = None, markers: Sequence[Marker] = (),
                  verified: Sequence[Marker] = (), units: Units | None = None, evaluated=None,
                  others: Sequence[tuple[str, object]] = (), method: str | None = None) -> dict:
    """The Vega-Lite spec of `figures.front_2d`'s view (same arguments): front, frontier, ±2 std bars at the
    frontier, evaluated points, references with labels, other methods' fronts dashed, the chosen merge."""
    g = front_2d_geometry(result, pair, chosen, markers, verified, units, evaluated, others)
    i, j = pair
    tasks, F, S, (C, M) = g.tasks, g.front, g.std, g.evaluated
    xfmt = g.units.hoverformat(tasks[i], g.x_values)
    yfmt = g.units.hoverformat(tasks[j], g.y_values)
    rows: list[dict] = []
    coefficients: list = []
    series: list[tuple[str, str, str, bool]] = []  # the legend: (name, colour, Vega shape, open symbol)
    look: dict[str, tuple[float, float, float]] = {}  # series -> (size px², opacity, stroke width) of its points

    def add_series(name, colour, symbol, size, opacity=1.0, width=1.0):
        if name not in look:
            series.append((name, colour, SHAPES[symbol], symbol in OPEN))
            look[name] = (size, opacity, width)

    def point(x, y, name, layer, c=None, label="", **extra):
        size, opacity, width = look[name]
        row = {"x": float(x), "y": float(y), "series": name, "layer": layer, "label": label, "size": size,
               "opacity": opacity, "width": width, **extra}
        if c is not None:
            row["id"] = len(coefficients)
            row["coefficients"] = _coefficients_text(tasks, c)
            coefficients.append([float(v) for v in c])
        rows.append(row)
        return row

    colour, symbol, name = STYLE["front"]
    name = name if len(tasks) == 2 else "surrogate front, projected (predicted)"
    trusted = g.trusted
    if trusted.any():
        add_series(name, colour, symbol, 36, 0.35 if len(tasks) > 2 else 0.7)
    for k in np.flatnonzero(trusted):
        point(F[k, i], F[k, j], name, "points", result.front_coefficients[k], kind="front")
    if not trusted.all():
        colour, symbol, uname = STYLE["untrusted"]
        add_series(uname, colour, symbol, 36, 0.6)
        for k in np.flatnonzero(~trusted):
            point(F[k, i], F[k, j], uname, "points", result.front_coefficients[k], kind="not vouched for")
    colour, _, fname = STYLE["frontier"]
    fname = f"front of {method} (predicted)" if others and method else fname
    add_series(fname, colour, "line", 0)
    for order, k in enumerate(g.edge):
        point(F[k, i], F[k, j], fname, "lines", order=order)
    for m, (title, ring) in enumerate(g.others):
        oname = f"front of {title} (predicted)"
        add_series(oname, METHOD_COLOURS[m % len(METHOD_COLOURS)], "line", 0)
        for order, (x, y) in enumerate(ring):
            point(x, y, oname, "dashed", order=order)
    bars = [k for k in g.edge if np.isfinite(S[k, i]) or np.isfinite(S[k, j])]
    if bars:
        add_series(UNCERTAINTY_NAME, colour, "line", 0, 0.45)
    for k in bars:
        point(F[k, i], F[k, j], UNCERTAINTY_NAME, "bars", **_bar_ends(F[k, i], F[k, j], S[k, i], S[k, j]))
    colour, symbol, ename = STYLE["evaluated"]
    add_series(ename, colour, symbol, 64)
    for c, m in zip(C, M):
        point(m[i], m[j], ename, "points", c, kind="evaluated")
    labelled = [m for m in g.references if m.kind != "verified"]
    offsets = []
    if labelled:
        anchors = np.array([[m.metrics[i], m.metrics[j]] for m in labelled])
        offsets = label_offsets(anchors, [m.label for m in labelled], g.drawn, g.xrange, g.yrange, PLOT_AREA_PX,
                                LABEL_FONT_PX)
    px = ((g.xrange[1] - g.xrange[0]) / PLOT_AREA_PX[0], (g.yrange[1] - g.yrange[0]) / PLOT_AREA_PX[1])
    for m in g.references:
        colour, symbol, rname = STYLE.get(m.kind, STYLE["verified"])
        add_series(rname, colour, symbol, 170 if m.kind != "verified" else 200)
        point(m.metrics[i], m.metrics[j], rname, "points", m.coefficients, kind=m.label)
    for m, (dx, dy) in zip(labelled, offsets):
        x, y = m.metrics[i], m.metrics[j]
        lx, ly = x + dx * px[0], y + dy * px[1]
        colour = STYLE.get(m.kind, STYLE["verified"])[0]
        # the leader stops short of the marker (7 px) and of the text (half its height)
        t = np.hypot(dx, dy)
        a = 7 / t if t else 0
        b = 1 - (0.75 * LABEL_FONT_PX) / t if t else 1
        rows.append({"x": float(lx), "y": float(ly), "label": m.label, "colour": colour, "layer": "labels",
                     "x1": float(x + a * dx * px[0]), "y1": float(y + a * dy * px[1]),
                     "x2": float(x + b * dx * px[0]), "y2": float(y + b * dy * px[1])})
    if chosen is not None:
        colour, symbol, cname = STYLE["chosen"]
        what = "chosen (predicted" + (f", ±{BAND_STD:g} std" if chosen.std is not None else "") \
            + ("" if chosen.trusted else ", not vouched for") + ")"
        add_series(cname, colour if chosen.trusted else STYLE["untrusted"][0], symbol, 400, 1.0, 3.0)
        extra = {}
        if chosen.std is not None:
            extra = _bar_ends(chosen.predicted[i], chosen.predicted[j], chosen.std[i], chosen.std[j])
        point(chosen.predicted[i], chosen.predicted[j], cname, "points", chosen.coefficients, kind=what, **extra)
        if chosen.std is not None:
            point(chosen.predicted[i], chosen.predicted[j], cname, "chosen bars", **extra)
        if chosen.measured is not None:
            colour, symbol, mname = STYLE["chosen_measured"]
            add_series(mname, colour, symbol, 256)
            point(chosen.measured[i], chosen.measured[j], mname, "points", chosen.coefficients,
                  kind="chosen (measured, verified)", x1=float(chosen.predicted[i]), y1=float(chosen.predicted[j]))
    return _spec(g, rows, series, coefficients, xfmt, yfmt)


def _bar_ends(x, y, sx, sy) -> dict:
    """±BAND_STD std ends; unknown or unbounded std draws no bar (the ends collapse on the point)."""
    hx = BAND_STD * sx if np.isfinite(sx) else 0.0
    hy = BAND_STD * sy if np.isfinite(sy) else 0.0
    return {"xlo": float(x - hx), "xhi": float(x + hx), "ylo": float(y - hy), "yhi": float(y + hy)}


def _spec(g, rows, series, coefficients, xfmt, yfmt) -> dict:
    i, j = g.pair
    tasks = g.tasks
    names = [s[0] for s in series]
    legend = {"orient": "bottom", "columns": 2, "title": None, "labelFontSize": 11, "symbolSize": 70,
              "labelLimit": 260, "direction": "horizontal", "rowPadding": 2, "symbolStrokeWidth": 1.5}
    x = {"field": "x", "type": "quantitative", "title": g.units.title(tasks[i], g.x_values),
         "scale": {"domain": g.xrange, "nice": False, "zero": False},
         "axis": {"format": g.units.tickformat(tasks[i], g.x_values)}}  # d3-format, as Plotly's
    y = {"field": "y", "type": "quantitative", "title": g.units.title(tasks[j], g.y_values),
         "scale": {"domain": g.yrange, "nice": False, "zero": False},
         "axis": {"format": g.units.tickformat(tasks[j], g.y_values)}}
    scale = lambda k: {"domain": names, "range": [s[k] for s in series]}  # noqa: E731
    tooltip = [{"field": "kind", "title": "point"},
               {"field": "x", "title": tasks[i], "format": xfmt}, {"field": "y", "title": tasks[j], "format": yfmt},
               {"field": "coefficients", "title": "coefficients"}]
    only = lambda *layers: {"filter": {"field": "layer", "oneOf": list(layers)}}  # noqa: E731
    colour = {"field": "series", "type": "nominal", "scale": scale(1), "legend": legend}
    line_colour = {**colour, "legend": None}
    layers = [
        {"transform": [only("bars")], "mark": {"type": "rule", "strokeWidth": 1, "opacity": 0.45},
         "encoding": {"x": {**x, "field": "xlo"}, "x2": {"field": "xhi"}, "y": y, "color": line_colour}},
        {"transform": [only("bars")], "mark": {"type": "rule", "strokeWidth": 1, "opacity": 0.45},
         "encoding": {"y": {**y, "field": "ylo"}, "y2": {"field": "yhi"}, "x": x, "color": line_colour}},
        {"transform": [only("lines")], "mark": {"type": "line", "strokeWidth": 2.5},
         "encoding": {"x": x, "y": y, "order": {"field": "order"}, "color": line_colour}},
        {"transform": [only("dashed")], "mark": {"type": "line", "strokeWidth": 2, "strokeDash": [6, 4]},
         "encoding": {"x": x, "y": y, "order": {"field": "order"}, "color": line_colour}},
        {"transform": [only("chosen bars")], "mark": {"type": "rule", "strokeWidth": 2},
         "encoding": {"x": {**x, "field": "xlo"}, "x2": {"field": "xhi"}, "y": y, "color": line_colour}},
        {"transform": [only("chosen bars")], "mark": {"type": "rule", "strokeWidth": 2},
         "encoding": {"y": {**y, "field": "ylo"}, "y2": {"field": "yhi"}, "x": x, "color": line_colour}},
        {"transform": [only("points"), {"filter": "isValid(datum.x1)"}],  # predicted -> measured chosen merge
         "mark": {"type": "rule", "strokeDash": [2, 3], "strokeWidth": 1.5},
         "encoding": {"x": x, "y": y, "x2": {"field": "x1"}, "y2": {"field": "y1"}, "color": line_colour}},
        {"transform": [only("points")],
         "params": [{"name": SELECTION, "select": {"type": "point", "fields": ["id"], "on": "click",
                                                    "clear": "dblclick", "toggle": False}}],
         "mark": {"type": "point", "strokeWidth": 1.5},
         "encoding": {"x": x, "y": y, "stroke": colour,
                      "shape": {"field": "series", "type": "nominal", "scale": scale(2), "legend": legend},
                      "size": {"field": "size", "type": "quantitative", "scale": None},
                      "opacity": {"field": "opacity", "type": "quantitative", "scale": None},
                      "strokeWidth": {"field": "width", "type": "quantitative", "scale": None},
                      "fill": {"field": "series", "type": "nominal", "legend": None,
                               "scale": {"domain": names, "range": ["transparent" if s[3] else s[1] for s in series]}},
                      "tooltip": tooltip}},
        {"transform": [only("labels")], "mark": {"type": "rule", "strokeWidth": 1},
         "encoding": {"x": {**x, "field": "x1"}, "y": {**y, "field": "y1"}, "x2": {"field": "x2"},
                      "y2": {"field": "y2"}, "color": {"field": "colour", "type": "nominal", "scale": None}}},
        {"transform": [only("labels")],
         "mark": {"type": "text", "fontSize": LABEL_FONT_PX, "baseline": "middle", "align": "center"},
         "encoding": {"x": x, "y": y, "text": {"field": "label"},
                      "color": {"field": "colour", "type": "nominal", "scale": None}}},
    ]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": f"Front: {tasks[i]} vs {tasks[j]}", "anchor": "start", "fontSize": 15},
        # the plot area keeps its height whatever the legend needs; the width follows the column
        "height": PLOT_AREA_PX[1], "width": "container", "autosize": {"type": "fit-x", "contains": "padding"},
        "data": {"values": rows},
        "layer": layers,
        "usermeta": {"coefficients": coefficients},
    }


def coefficients_of(spec: dict, selection: dict) -> np.ndarray | None:
    """The coefficients of the point a Streamlit selection event (`event["selection"]`) picked, or None."""
    picked = (selection or {}).get(SELECTION) or []
    table = spec.get("usermeta", {}).get("coefficients", [])
    for p in picked:
        k = p.get("id") if isinstance(p, dict) else None
        if isinstance(k, (int, float)) and 0 <= int(k) < len(table):
            return np.asarray(table[int(k)], dtype=float)
    return None
