"""Plotly figures of an exploration, shared by the app, the HTML report and the tests.

Every builder takes engine objects (an `ExploreResult`, reference `Marker`s, the chosen point) and
returns a `plotly.graph_objects.Figure`; nothing here knows about streamlit. Conventions, so the
views read the same everywhere:

- colours come from the Okabe-Ito palette (distinguishable with the common colour-vision
  deficiencies), and every reference kind also has its own marker symbol, so colour is never the
  only cue;
- every axis names its task and unit ("digits: accuracy (%)"; coefficients are unitless);
- clickable traces carry the coefficient vector of each point in `customdata`, so a click on any
  view selects a merge without the caller knowing which trace it came from.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.core.pareto import non_dominated

# Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
GREY = "#8C8C8C"
CONTINUOUS_SCALE = "Cividis"  # perceptually uniform and colour-blind-safe

#: Other merge methods' fronts, one colour each (vermillion is the chosen point's, blue this front's).
METHOD_COLOURS = (OKABE_ITO["orange"], OKABE_ITO["bluish_green"], OKABE_ITO["reddish_purple"], OKABE_ITO["yellow"],
                  OKABE_ITO["sky_blue"], GREY)

#: kind -> (colour, marker symbol, display name)
STYLE = {
    "evaluated": (OKABE_ITO["sky_blue"], "circle", "evaluated points (measured)"),
    "front": (OKABE_ITO["blue"], "circle", "surrogate front (predicted)"),
    "untrusted": (GREY, "circle-open", "front, not vouched for (predicted)"),
    "frontier": (OKABE_ITO["blue"], "circle", "2-D frontier of the surrogate front"),
    "base": (OKABE_ITO["black"], "square", "base model"),
    "expert": (OKABE_ITO["bluish_green"], "diamond", "fine-tuned expert"),
    "task_arithmetic": (OKABE_ITO["reddish_purple"], "triangle-up", "task arithmetic"),
    "chosen": (OKABE_ITO["vermillion"], "circle-open", "chosen merge (predicted)"),
    "chosen_measured": (OKABE_ITO["vermillion"], "star", "chosen merge (measured)"),
    "verified": (OKABE_ITO["orange"], "star", "verified merges (measured)"),
}
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
HEIGHT = 440  # fits a 1280x800 laptop screen under the page header


@dataclass(frozen=True)
class Marker:
    """A labelled point with measured metrics: the base, an expert, task arithmetic, a verified merge."""

    label: str
    kind: str  # a key of STYLE
    coefficients: np.ndarray  # (T,)
    metrics: np.ndarray  # (T,), measured, in each task's own units


@dataclass
class Chosen:
    """The merge the user is looking at: coefficients, surrogate prediction (± `std`, metric units),
    measurement if verified, and whether the surrogates vouch for it."""

    coefficients: np.ndarray
    predicted: np.ndarray
    measured: np.ndarray | None = None
    label: str = "chosen merge"
    std: np.ndarray | None = None
    trusted: bool = True


#: Uncertainty is drawn as ±BAND_STD predictive std (about 95 % when calibrated).
BAND_STD = 2.0
UNCERTAINTY_NAME = f"±{BAND_STD:g} std (predicted uncertainty)"


def _bars(std) -> np.ndarray:
    """±BAND_STD std as error-bar half widths; unknown or unbounded std -> NaN (drawn as no bar)."""
    s = BAND_STD * np.asarray(std, dtype=float)
    return np.where(np.isfinite(s), s, np.nan)


def _front_std(result) -> np.ndarray:
    std = getattr(result, "front_std", None)
    return np.full(result.front_predicted.shape, np.nan) if std is None else np.asarray(std, dtype=float)


def _front_trusted(result) -> np.ndarray:
    trusted = getattr(result, "front_trusted", None)
    return np.ones(len(result.front_predicted), dtype=bool) if trusted is None else np.asarray(trusted, dtype=bool)


@dataclass
class Units:
    """Metric name and sense per task, for axis titles and tick formats."""

    metrics: Mapping[str, str]
    senses: Sequence[float] = field(default_factory=list)

    def is_fraction(self, task: str, values: np.ndarray | None = None) -> bool:
        name = str(self.metrics.get(task, "")).lower()
        fraction_like = any(k in name for k in ("accuracy", "acc", "f1", "auc", "precision", "recall"))
        if values is not None and len(values):
            v = np.asarray(values, dtype=float)
            fraction_like = fraction_like and bool(np.all((v >= -1e-9) & (v <= 1 + 1e-9)))
        return fraction_like

    def title(self, task: str, values: np.ndarray | None = None) -> str:
        metric = self.metrics.get(task, "metric")
        unit = " (%)" if self.is_fraction(task, values) else ""
        return f"{task}: {metric}{unit}"

    def tickformat(self, task: str, values: np.ndarray | None = None) -> str:
        if not self.is_fraction(task, values):
            return ".3g"
        narrow = values is not None and len(values) and float(np.ptp(np.asarray(values, dtype=float))) < 0.05
        return ".1%" if narrow else ".0%"

    def hoverformat(self, task: str, values: np.ndarray | None = None) -> str:
        return ".1%" if self.is_fraction(task, values) else ".4g"


def units_for(tasks: Sequence[str], metrics: Mapping[str, str] | None, senses=None) -> Units:
    metrics = dict(metrics or {})
    return Units({t: metrics.get(t, "accuracy") for t in tasks}, list(senses) if senses is not None else [])


def _trace(kind: str, **attributes) -> dict:
    """A trace as a plain dict: the figures are assembled unvalidated (10x faster; the slider
    budget is 200 ms for every view), and the tests validate them through plotly once."""
    return dict(type=kind, **attributes)


def _figure(*traces: dict) -> go.Figure:
    return go.Figure(data=list(traces), _validate=False)


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, legend_below: bool = True) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=15)),
        template="plotly_white", font=FONT, height=height, margin=dict(l=60, r=20, t=50, b=40),
        hoverlabel=dict(font_size=12),
    )
    if legend_below:
        # two entries a row, below the axis title: one entry a row took half the height at 1280×800
        fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.26, xanchor="left", x=0.0,
                                      font=dict(size=11), entrywidth=0.5, entrywidthmode="fraction"))
    return fig


def _padded(values: np.ndarray, fraction: float) -> list[float]:
    """Axis range with room for marker labels."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = fraction * (hi - lo if hi > lo else max(abs(hi), 1e-3))
    return [lo - pad, hi + pad]


def coefficient_label(task: str) -> str:
    return f"c[{task}] (coefficient, unitless)"


def _coefficient_hover(tasks: Sequence[str]) -> str:
    return "<br>".join(f"c[{t}] = %{{customdata[{k}]:.3f}}" for k, t in enumerate(tasks))


def frontier_2d(points: np.ndarray, senses: Sequence[float]) -> np.ndarray:
    """Indices of the 2-D frontier of `points` (n, 2): its non-dominated rows, both metrics oriented
    by `senses` (+1 maximised, -1 minimised), in order of x so they can be drawn as a line."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    keep = non_dominated(-points * np.asarray(senses, dtype=float))  # pareto minimises
    return keep[np.argsort(points[keep, 0])]


# --- front views -------------------------------------------------------------------------------
@dataclass
class FrontGeometry:
    """What the 2-D front draws, in metric units and free of any renderer: the Plotly figure (report,
    HTML explorer's siblings) and the app's Vega-Lite view (`explorer.front_vega`) draw the same points."""

    pair: tuple[int, int]
    tasks: list
    units: Units
    evaluated: tuple          # (coefficients, metrics) of the measured points
    front: np.ndarray         # (n, T) predicted front
    std: np.ndarray           # (n, T) its predictive std (NaN where unknown)
    trusted: np.ndarray       # (n,) bool: the surrogates vouch for the point
    edge: np.ndarray          # indices of the 2-D frontier of the points choices come from, in order of x
    others: list              # (title, (k, 2) frontier of another method's front)
    references: list          # base, experts, task arithmetic, verified merges (Markers)
    xrange: list
    yrange: list
    drawn: np.ndarray         # (m, 2) every marker a label could cover (not the chosen one)
    x_values: np.ndarray      # the values the axis formats are chosen from
    y_values: np.ndarray


def front_2d_geometry(result, pair: tuple[int, int], chosen: Chosen | None = None, markers: Sequence[Marker] = (),
                      verified: Sequence[Marker] = (), units: Units | None = None, evaluated=None,
                      others: Sequence[tuple[str, object]] = ()) -> FrontGeometry:
    i, j = pair
    tasks = result.tasks
    units = units or units_for(tasks, None, result.senses)
    C, M = evaluated if evaluated is not None else (result.samples, result.observed)
    F = result.front_predicted
    xs = np.concatenate([M[:, i], F[:, i]])
    ys = np.concatenate([M[:, j], F[:, j]])
    trusted = _front_trusted(result)
    shown = np.flatnonzero(trusted) if trusted.any() else np.arange(len(F))  # the edge of what choices come from
    edge = shown[frontier_2d(F[shown][:, [i, j]], result.senses[[i, j]])]
    rings = []
    for title, other in others:  # other merge methods' fronts, for comparison
        G = other.front_predicted
        keep = np.flatnonzero(_front_trusted(other)) if np.any(_front_trusted(other)) else np.arange(len(G))
        rings.append((title, G[keep[frontier_2d(G[keep][:, [i, j]], other.senses[[i, j]])]][:, [i, j]]))
    references = list(markers) + list(verified)
    extra = [m.metrics for m in references]
    if chosen is not None:
        extra += [chosen.predicted] + ([chosen.measured] if chosen.measured is not None else [])
    allx = np.concatenate([xs, [e[i] for e in extra]])
    ally = np.concatenate([ys, [e[j] for e in extra]])
    # every marker a label could cover, but the chosen merge's: it lies on the front, which labels avoid, and
    # leaving it out keeps the placement (cached) the same while a slider moves it
    drawn = np.column_stack([np.concatenate([xs, [m.metrics[i] for m in references]]),
                             np.concatenate([ys, [m.metrics[j] for m in references]])])
    return FrontGeometry((i, j), list(tasks), units, (C, M), F, _front_std(result), trusted, edge, rings, references,
                         _padded(allx, 0.1), _padded(ally, 0.12), drawn, xs, ys)


def front_2d(result, pair: tuple[int, int], chosen: Chosen | None = None, markers: Sequence[Marker] = (),
             verified: Sequence[Marker] = (), units: Units | None = None, evaluated=None,
             others: Sequence[tuple[str, object]] = (), method: str | None = None) -> go.Figure:
    """Evaluated points, the surrogate front, reference markers and the chosen merge for two tasks.

    For more than two tasks the front is the projection of the T-task front, so it fills an area;
    its 2-D non-dominated edge is drawn as a line. `evaluated` is (coefficients, metrics) of the
    measured points (default: the result's samples). `others`: (method title, result) of other merge
    methods on the same checkpoints, each drawn as its own 2-D frontier (one colour per method), so
    that the fronts can be compared; `method` names this result's method in the legend.
    """
    g = front_2d_geometry(result, pair, chosen, markers, verified, units, evaluated, others)
    i, j = pair
    tasks, units, (C, M), F, S, trusted, edge = g.tasks, g.units, g.evaluated, g.front, g.std, g.trusted, g.edge
    xs, ys = g.x_values, g.y_values
    hover = (f"{tasks[i]} = %{{x:{units.hoverformat(tasks[i], xs)}}}<br>{tasks[j]} = %{{y:{units.hoverformat(tasks[j], ys)}}}"
             f"<br>{_coefficient_hover(tasks)}")
    fig = _figure()
    colour, symbol, name = STYLE["front"]
    fig.add_trace(_trace("scatter", 
        x=F[trusted, i], y=F[trusted, j], mode="markers",
        name=name if len(tasks) == 2 else "surrogate front, projected (predicted)",
        marker=dict(color=colour, size=6, opacity=0.35 if len(tasks) > 2 else 0.7, symbol=symbol),
        customdata=result.front_coefficients[trusted], hovertemplate=hover + "<extra>front</extra>"))
    if not trusted.all():
        colour, symbol, name = STYLE["untrusted"]
        fig.add_trace(_trace("scatter",
            x=F[~trusted, i], y=F[~trusted, j], mode="markers", name=name,
            marker=dict(color=colour, size=6, opacity=0.6, symbol=symbol, line=dict(color=colour, width=1)),
            customdata=result.front_coefficients[~trusted],
            hovertemplate=hover + "<extra>not vouched for</extra>"))
    colour, _, name = STYLE["frontier"]
    fig.add_trace(_trace("scatter", 
        x=F[edge, i], y=F[edge, j], mode="lines", name=f"front of {method} (predicted)" if others and method else name,
        line=dict(color=colour, width=2.5), hoverinfo="skip"))
    for k, (title, ring) in enumerate(g.others):
        fig.add_trace(_trace("scatter", x=ring[:, 0], y=ring[:, 1], mode="lines", name=f"front of {title} (predicted)",
                             line=dict(color=METHOD_COLOURS[k % len(METHOD_COLOURS)], width=2, dash="dash"),
                             hovertemplate=f"{title}<br>{tasks[i]} = %{{x}}<br>{tasks[j]} = %{{y}}<extra></extra>"))
    fig.add_trace(_trace("scatter",
        x=F[edge, i], y=F[edge, j], mode="markers", name=UNCERTAINTY_NAME, marker=dict(color=colour, size=3),
        error_x=dict(type="data", array=_bars(S[edge, i]), visible=True, thickness=1, width=0, color=colour),
        error_y=dict(type="data", array=_bars(S[edge, j]), visible=True, thickness=1, width=0, color=colour),
        opacity=0.45, customdata=result.front_coefficients[edge],
        hovertemplate=hover + f"<extra>±{BAND_STD:g} std</extra>"))
    colour, symbol, name = STYLE["evaluated"]
    fig.add_trace(_trace("scatter", 
        x=M[:, i], y=M[:, j], mode="markers", name=name,
        marker=dict(color=colour, size=8, symbol=symbol, line=dict(color="white", width=0.5)),
        customdata=C, hovertemplate=hover + "<extra>evaluated</extra>"))
    xrange, yrange, drawn = g.xrange, g.yrange, g.drawn
    kinds = {m.kind for m in g.references}
    names = [tr.name for tr in fig.data] + [STYLE.get(k, STYLE["verified"])[2] for k in kinds]
    entries = len(names) + (0 if chosen is None else 1 + (chosen.measured is not None))
    columns = 2 if max(len(n or "") for n in names) <= LEGEND_TWO_COLUMNS_CHARS else 1
    _add_markers_2d(fig, g.references, i, j, tasks, hover, (xrange, yrange, drawn))
    if chosen is not None:
        _add_chosen_2d(fig, chosen, i, j, tasks, hover)
    _layout(fig, f"Front: {tasks[i]} vs {tasks[j]}", height=HEIGHT + legend_growth_px(entries, columns))
    fig.update_layout(legend_entrywidth=1.0 / columns)
    fig.update_xaxes(title=units.title(tasks[i], xs), tickformat=units.tickformat(tasks[i], xs), range=xrange)
    fig.update_yaxes(title=units.title(tasks[j], ys), tickformat=units.tickformat(tasks[j], ys), range=yrange)
    fig.update_layout(clickmode="event+select", dragmode="zoom")
    return fig


#: The 2-D front's plot area in pixels in the app's left column at 1280×800 with a legend of up to 10
#: entries (two a row) below it, measured in Chromium; the figure grows by LEGEND_ROW_PX per further
#: legend row, so the plot keeps this size. Reference labels are placed in these pixels so that they
#: hide no marker.
PLOT_AREA_PX = (377, 217)
LEGEND_ROW_PX = 19
LEGEND_TWO_COLUMNS_CHARS = 38  # longer legend names overlap their neighbours two a row: one a row then
LABEL_FONT_PX = 11


def legend_growth_px(legend_entries: int, columns: int = 2) -> int:
    """How much taller than HEIGHT the 2-D front is drawn so that its legend leaves the plot its size."""
    return LEGEND_ROW_PX * max(-(-legend_entries // columns) - 5, 0)


def label_offsets(anchors: np.ndarray, labels: Sequence[str], drawn: np.ndarray, xrange, yrange,
                  area=PLOT_AREA_PX, font_px: int = LABEL_FONT_PX) -> list[tuple[float, float]]:
    """See `_label_offsets`; the same inputs (by content) give the cached answer: a slider move redraws the
    front with the same markers."""
    anchors, drawn = np.ascontiguousarray(anchors, dtype=float), np.ascontiguousarray(drawn, dtype=float)
    return list(_cached_label_offsets(anchors.tobytes(), anchors.shape, tuple(labels), drawn.tobytes(), drawn.shape,
                                      tuple(map(float, xrange)), tuple(map(float, yrange)), tuple(area), font_px))


@functools.lru_cache(maxsize=64)
def _cached_label_offsets(anchors: bytes, a_shape, labels, drawn: bytes, d_shape, xrange, yrange, area, font_px):
    return tuple(_label_offsets(np.frombuffer(anchors).reshape(a_shape), labels, np.frombuffer(drawn).reshape(d_shape),
                                xrange, yrange, area, font_px))


def _label_offsets(anchors: np.ndarray, labels: Sequence[str], drawn: np.ndarray, xrange, yrange,
                   area=PLOT_AREA_PX, font_px: int = LABEL_FONT_PX) -> list[tuple[float, float]]:
    """Per label, the offset (dx, dy) in pixels, y up, of its centre from its marker: the spot nearest
    the marker whose box covers the fewest drawn markers and earlier labels and stays in the plot.
    Greedy over rings of candidate spots, in pixels of `area` (at other sizes the boxes scale with the plot)."""
    W, H = area
    sx, sy = W / (xrange[1] - xrange[0]), H / (yrange[1] - yrange[0])
    P = np.column_stack([(drawn[:, 0] - xrange[0]) * sx, (drawn[:, 1] - yrange[0]) * sy]) if len(drawn) else np.zeros((0, 2))
    h, dot = 1.5 * font_px, 6.0  # text box height; a drawn point's radius plus a margin (reference markers: 13 px)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False) + np.pi / 2  # straight up first
    radii = np.repeat([20, 28, 40, 56, 76, 100, 128, 160, 200], len(angles))  # nearest ring first
    turns = np.tile(angles, len(radii) // len(angles))
    placed = np.zeros((0, 4))
    out = []
    for (x, y), text in zip(anchors, labels):  # every candidate spot of a label at once (the page reruns per slider move)
        ax, ay = (x - xrange[0]) * sx, (y - yrange[0]) * sy
        w = 0.6 * font_px * len(text) + 4
        dx, dy = radii * np.cos(turns) * max(1.0, w / (2 * h)) ** 0.5, radii * np.sin(turns)
        x0, y0, x1, y1 = ax + dx - w / 2, ay + dy - h / 2, ax + dx + w / 2, ay + dy + h / 2
        covered = np.sum((P[None, :, 0] > x0[:, None] - dot) & (P[None, :, 0] < x1[:, None] + dot)
                         & (P[None, :, 1] > y0[:, None] - dot) & (P[None, :, 1] < y1[:, None] + dot), axis=1)
        clash = np.sum(~((x1[:, None] < placed[None, :, 0]) | (placed[None, :, 2] < x0[:, None])
                         | (y1[:, None] < placed[None, :, 1]) | (placed[None, :, 3] < y0[:, None])), axis=1)
        outside = (x0 < 2) | (y0 < 4) | (x1 > W - 2) | (y1 > H - 2)
        cost = covered + 1000 * clash + 500 * outside + radii / 200  # labels never on labels or off the plot
        k = int(np.argmin(cost))
        placed = np.vstack([placed, [x0[k], y0[k], x1[k], y1[k]]])
        out.append((float(dx[k]), float(dy[k])))
    return out


def _add_markers_2d(fig: go.Figure, markers: Sequence[Marker], i: int, j: int, tasks, hover: str,
                    placing: tuple | None = None) -> None:
    """Reference markers, each labelled by an annotation placed where it hides no marker (`placing`: x
    range, y range, every drawn point); verified ones unlabelled (the hover names them)."""
    groups: dict[str, list[Marker]] = {}
    for m in markers:
        groups.setdefault(m.kind, []).append(m)
    for kind, items in groups.items():
        colour, symbol, name = STYLE.get(kind, STYLE["verified"])
        fig.add_trace(_trace("scatter",
            x=[m.metrics[i] for m in items], y=[m.metrics[j] for m in items], mode="markers", name=name,
            text=[m.label for m in items],
            marker=dict(color=colour, size=13 if kind != "verified" else 14, symbol=symbol,
                        line=dict(color="white", width=1)),
            customdata=np.array([m.coefficients for m in items]),
            hovertemplate="%{text}<br>" + hover + "<extra></extra>"))
    labelled = [m for m in markers if m.kind != "verified"]
    if not labelled:
        return
    anchors = np.array([[m.metrics[i], m.metrics[j]] for m in labelled])
    if placing is None:
        offsets = [(0.0, 16.0)] * len(labelled)
    else:
        offsets = label_offsets(anchors, [m.label for m in labelled], placing[2], placing[0], placing[1])
    for m, (dx, dy) in zip(labelled, offsets):
        colour = STYLE.get(m.kind, STYLE["verified"])[0]
        fig.add_annotation(x=m.metrics[i], y=m.metrics[j], xref="x", yref="y", text=m.label, showarrow=True,
                           ax=dx, ay=-dy, arrowhead=0, arrowwidth=1, arrowcolor=colour, standoff=7,
                           font=dict(size=LABEL_FONT_PX, color=colour), bgcolor="rgba(255,255,255,0.8)")


def _add_chosen_2d(fig: go.Figure, chosen: Chosen, i: int, j: int, tasks, hover: str) -> None:
    colour, symbol, name = STYLE["chosen"]
    bars = {}
    if chosen.std is not None:
        bars = dict(error_x=dict(type="data", array=_bars(chosen.std[[i]]), visible=True, thickness=2, width=6, color=colour),
                    error_y=dict(type="data", array=_bars(chosen.std[[j]]), visible=True, thickness=2, width=6, color=colour))
    what = "chosen (predicted" + (f", ±{BAND_STD:g} std" if bars else "") + ("" if chosen.trusted else ", not vouched for") + ")"
    fig.add_trace(_trace("scatter", 
        x=[chosen.predicted[i]], y=[chosen.predicted[j]], mode="markers", name=name,
        marker=dict(color=colour if chosen.trusted else GREY, size=20, symbol=symbol, line=dict(width=3)),
        customdata=[chosen.coefficients], hovertemplate=what + "<br>" + hover + "<extra></extra>", **bars))
    if chosen.measured is not None:
        colour, symbol, name = STYLE["chosen_measured"]
        fig.add_trace(_trace("scatter", 
            x=[chosen.predicted[i], chosen.measured[i]], y=[chosen.predicted[j], chosen.measured[j]],
            mode="lines", line=dict(color=colour, dash="dot", width=1.5), showlegend=False, hoverinfo="skip"))
        fig.add_trace(_trace("scatter", 
            x=[chosen.measured[i]], y=[chosen.measured[j]], mode="markers", name=name,
            marker=dict(color=colour, size=16, symbol=symbol, line=dict(color="white", width=1)),
            customdata=[chosen.coefficients], hovertemplate="chosen (measured, verified)<br>" + hover + "<extra></extra>"))


def front_3d(result, triple: tuple[int, int, int], chosen: Chosen | None = None, markers: Sequence[Marker] = (),
             verified: Sequence[Marker] = (), units: Units | None = None, evaluated=None) -> go.Figure:
    """The front over three tasks (projected when T > 3), with the same markers as `front_2d`."""
    i, j, k = triple
    tasks = result.tasks
    units = units or units_for(tasks, None, result.senses)
    C, M = evaluated if evaluated is not None else (result.samples, result.observed)
    F = result.front_predicted
    vals = {a: np.concatenate([M[:, a], F[:, a]]) for a in triple}
    hover = "<br>".join(f"{tasks[a]} = %{{{ax}:{units.hoverformat(tasks[a], vals[a])}}}" for a, ax in zip(triple, "xyz"))
    hover += "<br>" + _coefficient_hover(tasks)
    fig = _figure()
    trusted = _front_trusted(result)
    for kind, rows in (("front", trusted), ("untrusted", ~trusted)):
        if not rows.any():
            continue
        colour, symbol, name = STYLE[kind]
        fig.add_trace(_trace("scatter3d", 
            x=F[rows, i], y=F[rows, j], z=F[rows, k], mode="markers", name=name,
            marker=dict(color=colour, size=3, opacity=0.45, symbol="circle" if kind == "front" else "circle-open"),
            customdata=result.front_coefficients[rows], hovertemplate=hover + f"<extra>{name}</extra>"))
    colour, _, name = STYLE["evaluated"]
    fig.add_trace(_trace("scatter3d", 
        x=M[:, i], y=M[:, j], z=M[:, k], mode="markers", name=name,
        marker=dict(color=colour, size=5, symbol="circle"), customdata=C, hovertemplate=hover + "<extra>evaluated</extra>"))
    symbols_3d = {"square": "square", "diamond": "diamond", "triangle-up": "diamond-open", "star": "cross",
                  "circle-open": "circle-open"}
    groups: dict[str, list[Marker]] = {}
    for m in list(markers) + list(verified):
        groups.setdefault(m.kind, []).append(m)
    for kind, items in groups.items():
        colour, symbol, name = STYLE.get(kind, STYLE["verified"])
        fig.add_trace(_trace("scatter3d", 
            x=[m.metrics[i] for m in items], y=[m.metrics[j] for m in items], z=[m.metrics[k] for m in items],
            mode="markers+text" if kind != "verified" else "markers", name=name, text=[m.label for m in items],
            textfont=dict(size=11, color=colour),
            marker=dict(color=colour, size=7, symbol=symbols_3d.get(symbol, "circle")),
            customdata=np.array([m.coefficients for m in items]), hovertemplate="%{text}<br>" + hover + "<extra></extra>"))
    if chosen is not None:
        colour, _, name = STYLE["chosen"]
        bars = {}
        if chosen.std is not None:
            bars = {f"error_{ax}": dict(type="data", array=_bars(chosen.std[[a]]), visible=True, thickness=2, color=colour)
                    for a, ax in zip(triple, "xyz")}
        fig.add_trace(_trace("scatter3d", 
            x=[chosen.predicted[i]], y=[chosen.predicted[j]], z=[chosen.predicted[k]], mode="markers", name=name,
            marker=dict(color=colour, size=10, symbol="circle-open", line=dict(width=4)),
            customdata=[chosen.coefficients], hovertemplate="chosen (predicted)<br>" + hover + "<extra></extra>", **bars))
        if chosen.measured is not None:
            colour, _, name = STYLE["chosen_measured"]
            fig.add_trace(_trace("scatter3d", 
                x=[chosen.measured[i]], y=[chosen.measured[j]], z=[chosen.measured[k]], mode="markers", name=name,
                marker=dict(color=colour, size=8, symbol="cross"), customdata=[chosen.coefficients],
                hovertemplate="chosen (measured)<br>" + hover + "<extra></extra>"))
    _layout(fig, f"Front: {tasks[i]}, {tasks[j]}, {tasks[k]}", height=HEIGHT + 40)
    fig.update_layout(scene=dict(
        xaxis=dict(title=dict(text=units.title(tasks[i], vals[i])), tickformat=units.tickformat(tasks[i], vals[i])),
        yaxis=dict(title=dict(text=units.title(tasks[j], vals[j])), tickformat=units.tickformat(tasks[j], vals[j])),
        zaxis=dict(title=dict(text=units.title(tasks[k], vals[k])), tickformat=units.tickformat(tasks[k], vals[k])),
    ), margin=dict(l=0, r=0, t=50, b=10))
    return fig


# --- parallel coordinates ------------------------------------------------------------------------
def parallel(result, minimums=None, chosen: Chosen | None = None, verified: Sequence[Marker] = (),
             units: Units | None = None) -> go.Figure:
    """One line per front point over all tasks; per-task minimums are drawn as constraint ranges.

    Lines outside a constraint range are greyed out (they are infeasible for the current
    minimums). The front is drawn pale so that the chosen merge, a thick vermillion line with a
    white halo drawn last, stands out; its ±2 std band is a fan of pale vermillion lines behind
    it; verified merges are orange. `minimums` is (T,) with NaN for "no bound" (a ceiling for
    metrics to minimise).
    """
    tasks = result.tasks
    units = units or units_for(tasks, None, result.senses)
    F = result.front_predicted
    everything = np.vstack([F] + [m.metrics[None, :] for m in verified]
                           + ([chosen.predicted[None, :]] if chosen is not None else []))
    band = _parallel_band(chosen, everything) if chosen is not None else None
    ranges = [_parallel_range(np.concatenate([everything[:, t]] + ([band[:, t]] if band is not None else [])))
              for t in range(len(tasks))]
    rows, colour_value = [F], [np.full(len(F), PARALLEL_LEVELS["front"])]
    if band is not None:
        rows.append(band)
        colour_value.append(np.full(len(band), PARALLEL_LEVELS["band"]))
    for m in verified:
        rows.append(_thick_line(m.metrics, ranges, 1))
        colour_value.append(np.full(len(rows[-1]), PARALLEL_LEVELS["verified"]))
    if chosen is not None:
        for level, band in (("halo", _thick_line(chosen.predicted, ranges, 4)),
                            ("chosen", _thick_line(chosen.predicted, ranges, 2))):
            rows.append(band)
            colour_value.append(np.full(len(band), PARALLEL_LEVELS[level]))
    data, colours = np.vstack(rows), np.concatenate(colour_value)
    floors = np.full(len(tasks), np.nan) if minimums is None else np.asarray(minimums, dtype=float)
    dims = []
    for t, task in enumerate(tasks):
        lo, hi = ranges[t]
        dim = dict(label=units.title(task, everything[:, t]), values=data[:, t], range=[lo, hi],
                   tickformat=units.tickformat(task, everything[:, t]))
        if np.isfinite(floors[t]):
            bound = float(np.clip(floors[t], lo, hi))
            dim["constraintrange"] = [bound, hi] if result.senses[t] > 0 else [lo, bound]
        dims.append(dim)
    fig = _figure(_trace("parcoords",
        dimensions=dims,
        line=dict(color=colours, cmin=0.0, cmax=1.0, showscale=False, colorscale=PARALLEL_COLOURS),
        unselected=dict(line=dict(color="#D9D9D9", opacity=0.25)),
        labelangle=0, labelside="top", labelfont=dict(size=12), tickfont=dict(size=11),
    ))
    _layout(fig, "Front over all tasks (predicted)<br><sup>pale blue: front points · vermillion: chosen "
                 f"(pale band: ±{BAND_STD:g} std) · orange: verified</sup>", legend_below=False)
    fig.update_layout(margin=dict(l=60, r=60, t=125, b=30))
    return fig


#: colour levels of the parallel-coordinates lines (drawn in this order: later lines lie on top)
PARALLEL_LEVELS = {"front": 0.0, "band": 0.375, "verified": 0.5, "halo": 0.75, "chosen": 1.0}
PARALLEL_COLOURS = [[0.0, "#B9DDF3"], [0.24, "#B9DDF3"],  # a pale Okabe-Ito sky blue: the front recedes
                    [0.25, "#F3C9A6"], [0.49, "#F3C9A6"],  # a pale vermillion: the chosen line's ±2 std
                    [0.5, OKABE_ITO["orange"]], [0.74, OKABE_ITO["orange"]],
                    [0.75, "#FFFFFF"], [0.99, "#FFFFFF"], [1.0, OKABE_ITO["vermillion"]]]
PARALLEL_AXIS_PX = HEIGHT - 165  # about the drawn length of an axis (the height less the margins)


PARALLEL_BAND_LINES = 21


def _parallel_band(chosen: Chosen, everything: np.ndarray) -> np.ndarray | None:
    """The chosen line shifted by f·2 std for f from -1 to 1 (a fan of lines that reads as a band).

    An unknown std draws no band on that axis; a huge one is cut a quarter of the axis' span beyond
    the other lines, so it cannot squash the axis.
    """
    if chosen.std is None:
        return None
    half = np.nan_to_num(_bars(chosen.std), nan=0.0)
    lo, hi = everything.min(axis=0), everything.max(axis=0)
    span = np.maximum(hi - lo, 1e-3)
    f = np.linspace(-1.0, 1.0, PARALLEL_BAND_LINES)[:, None]
    return np.clip(chosen.predicted[None, :] + f * half[None, :], lo - 0.25 * span, hi + 0.25 * span)


def _parallel_range(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    return (lo - 1e-3, hi + 1e-3) if not hi > lo else (lo, hi)


def _thick_line(values: np.ndarray, ranges, half_width_px: int) -> np.ndarray:
    """One line as a band of copies shifted by half pixels (parcoords draws every line 1 px wide).

    Copies are clipped to the axis range, so the band never widens the axes; the middle copy is
    the exact value.
    """
    span = np.array([hi - lo for lo, hi in ranges])
    lo, hi = np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])
    shifts = [k / 2 for k in range(-2 * half_width_px, 2 * half_width_px + 1) if k != 0] + [0]  # half pixels
    return np.vstack([np.clip(values + k * span / PARALLEL_AXIS_PX, lo, hi) for k in shifts])


# --- radar -------------------------------------------------------------------------------------
def scale_to_expert(metrics: np.ndarray, experts: np.ndarray, senses: np.ndarray) -> np.ndarray:
    """Each task's metric as a fraction of its expert's (1 = as good as the expert on that task)."""
    m, e = np.asarray(metrics, dtype=float), np.asarray(experts, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.asarray(senses) > 0, m / e, e / m)
    return np.where(np.isfinite(out), out, np.nan)


def radar(tasks: Sequence[str], experts: np.ndarray, senses: np.ndarray, chosen: Chosen | None = None,
          markers: Sequence[Marker] = ()) -> go.Figure:
    """The chosen merge against base, task arithmetic and the experts, scaled to each expert's metric."""
    tasks = list(tasks)
    theta = tasks + tasks[:1]
    fig = _figure()

    def add(values, name, colour, dash="solid", fill=None, symbol="circle"):
        r = scale_to_expert(values, experts, senses)
        fig.add_trace(_trace("scatterpolar", 
            r=np.append(r, r[0]), theta=theta, name=name, mode="lines+markers", fill=fill,
            line=dict(color=colour, dash=dash, width=2.5), marker=dict(symbol=symbol, size=8, color=colour),
            opacity=0.9, hovertemplate="%{theta}: %{r:.1%} of the expert<extra>" + name + "</extra>"))

    add(np.asarray(experts, dtype=float), "fine-tuned experts (each on its own task)", STYLE["expert"][0],
        dash="dash", symbol="diamond")
    for m in markers:
        if m.kind in ("base", "task_arithmetic"):
            colour, symbol, _ = STYLE[m.kind]
            add(m.metrics, m.label, colour, dash="dot" if m.kind == "base" else "dashdot", symbol=symbol)
    if chosen is not None:
        if chosen.std is not None:
            _radar_band(fig, chosen, experts, senses, theta)
        add(chosen.predicted, "chosen merge (predicted)", STYLE["chosen"][0], fill="toself")
        if chosen.measured is not None:
            add(chosen.measured, "chosen merge (measured)", STYLE["verified"][0], symbol="star")
    _layout(fig, "Chosen merge vs references<br><sup>radius: fraction of each task's expert metric</sup>")
    fig.update_layout(polar=dict(radialaxis=dict(tickformat=".0%", angle=90, tickfont=dict(size=10)),
                                 angularaxis=dict(tickfont=dict(size=12))))
    return fig


def _radar_band(fig: go.Figure, chosen: Chosen, experts: np.ndarray, senses: np.ndarray, theta: list) -> None:
    """The chosen merge's ±2 std as a shaded ring: the upper ring, then the lower one backwards."""
    half = np.nan_to_num(_bars(chosen.std), nan=0.0)
    a = scale_to_expert(chosen.predicted - half, experts, senses)
    b = scale_to_expert(chosen.predicted + half, experts, senses)
    lo, hi = np.fmin(a, b), np.fmax(a, b)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    ring = np.concatenate([np.append(hi, hi[0]), np.append(lo, lo[0])[::-1]])
    fig.add_trace(_trace("scatterpolar",
        r=ring, theta=theta + theta[::-1], name=f"chosen merge {UNCERTAINTY_NAME}", mode="lines", fill="toself",
        fillcolor="rgba(213, 94, 0, 0.18)", line=dict(color=STYLE["chosen"][0], width=0), hoverinfo="skip"))


# --- surrogate landscape -------------------------------------------------------------------------
def landscape(result, task: int, axes: tuple[int, int], at: np.ndarray, chosen: Chosen | None = None,
              markers: Sequence[Marker] = (), verified: Sequence[Marker] = (), units: Units | None = None,
              resolution: int = 50) -> go.Figure:
    """One task's surrogate over two coefficients (others fixed at `at`), with the Pareto set overlaid.

    As in MAP's figure 1: the contour is the surrogate's prediction, the dots are the Pareto set
    (front coefficients) projected onto the two coefficients.
    """
    tasks = result.tasks
    units = units or units_for(tasks, None, result.senses)
    a, b = axes
    lo, hi = result.bounds[:, 0], result.bounds[:, 1]
    ga, gb = np.linspace(lo[a], hi[a], resolution), np.linspace(lo[b], hi[b], resolution)
    A, B = np.meshgrid(ga, gb)
    grid = np.repeat(np.asarray(at, dtype=float)[None, :], A.size, axis=0)
    grid[:, a], grid[:, b] = A.ravel(), B.ravel()
    Z = result.surrogates[tasks[task]].predict(grid).reshape(A.shape)
    name = tasks[task]
    fmt = units.tickformat(name, Z.ravel())
    fig = _figure(_trace("contour", 
        x=ga, y=gb, z=Z, colorscale=CONTINUOUS_SCALE, ncontours=18,
        contours=dict(showlabels=True, labelfont=dict(size=10, color="white"), labelformat=fmt),
        colorbar=dict(title=dict(text=units.title(name, Z.ravel()), side="right"), tickformat=fmt),
        hovertemplate=(f"c[{tasks[a]}] = %{{x:.3f}}<br>c[{tasks[b]}] = %{{y:.3f}}<br>"
                       f"predicted {name} = %{{z:{units.hoverformat(name, Z.ravel())}}}<extra></extra>"),
        name=f"surrogate of {name}"))
    P = result.front_coefficients
    fig.add_trace(_trace("scatter", 
        x=P[:, a], y=P[:, b], mode="markers", name="Pareto set (front coefficients)",
        marker=dict(color="white", size=5, line=dict(color=OKABE_ITO["black"], width=1)),
        customdata=P, hovertemplate=_coefficient_hover(tasks) + "<extra>Pareto set</extra>"))
    colour, symbol, sname = STYLE["evaluated"]
    fig.add_trace(_trace("scatter", 
        x=result.samples[:, a], y=result.samples[:, b], mode="markers", name="evaluated points",
        marker=dict(color=colour, size=7, symbol="x"), customdata=result.samples,
        hovertemplate=_coefficient_hover(tasks) + "<extra>evaluated</extra>"))
    groups: dict[str, list[Marker]] = {}
    for m in list(markers) + list(verified):
        groups.setdefault(m.kind, []).append(m)
    for kind, items in groups.items():
        colour, symbol, sname = STYLE.get(kind, STYLE["verified"])
        fig.add_trace(_trace("scatter", 
            x=[m.coefficients[a] for m in items], y=[m.coefficients[b] for m in items], mode="markers", name=sname,
            text=[m.label for m in items], marker=dict(color=colour, size=12, symbol=symbol, line=dict(color="white", width=1)),
            customdata=np.array([m.coefficients for m in items]),
            hovertemplate="%{text}<br>" + _coefficient_hover(tasks) + "<extra></extra>"))
    if chosen is not None:
        colour, symbol, sname = STYLE["chosen"]
        fig.add_trace(_trace("scatter", 
            x=[chosen.coefficients[a]], y=[chosen.coefficients[b]], mode="markers", name="chosen merge",
            marker=dict(color=colour, size=18, symbol=symbol, line=dict(width=3)), customdata=[chosen.coefficients],
            hovertemplate="chosen<br>" + _coefficient_hover(tasks) + "<extra></extra>"))
    fixed = [t for t in range(len(tasks)) if t not in (a, b)]
    note = ", others fixed at the chosen point" if fixed else ""
    _layout(fig, f"Surrogate landscape of {name}{note}")
    fig.update_xaxes(title=coefficient_label(tasks[a]), range=[lo[a], hi[a]])
    fig.update_yaxes(title=coefficient_label(tasks[b]), range=[lo[b], hi[b]])
    fig.update_layout(legend=dict(y=-0.2))
    return fig


# --- surrogate quality ---------------------------------------------------------------------------
POOR_FIT_R2 = 0.8


def surrogate_quality(result, verified: Sequence[Marker] = (), units: Units | None = None,
                      threshold: float = POOR_FIT_R2) -> go.Figure:
    """Per task: left-out prediction vs measured metric at the evaluated points, titled with R² (LOO).

    Each evaluated point is drawn at the prediction of the fit made without it (`loo_predictions_`,
    with ±2 `loo_std_` bars), the same predictions the title's R² is computed from: in-sample
    predictions would look better than the surrogate is. Verified merges, measured after the
    fit, are drawn as orange stars at the full fit's prediction (±2 std): the honest check.
    """
    tasks = result.tasks
    units = units or units_for(tasks, None, result.senses)
    n = len(tasks)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    titles = []
    for t in tasks:
        r2 = float(result.surrogates[t].r2_cv_)
        flag = " ⚠ poor fit" if not (r2 >= threshold) else ""
        titles.append(f"{t}<br>R² (LOO) = {r2:.2f}{flag}")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=0.16 if rows > 1 else 0.1, figure=go.Figure(_validate=False))
    P, PS = loo_predictions(result)
    vC = np.array([m.coefficients for m in verified]) if verified else np.empty((0, n))
    vM = np.array([m.metrics for m in verified]) if verified else np.empty((0, n))
    vP, vS = result.predict(vC, return_std=True) if len(vC) else (np.empty((0, n)), np.empty((0, n)))
    for t, task in enumerate(tasks):
        r, c = t // cols + 1, t % cols + 1
        obs, pred = result.observed[:, t], P[:, t]
        allv = np.concatenate([obs, pred, vM[:, t], vP[:, t]])
        allv = allv[np.isfinite(allv)]
        lo, hi = float(np.min(allv)), float(np.max(allv))
        pad = 0.05 * (hi - lo if hi > lo else 1.0)
        fig.add_trace(_trace("scatter", x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", showlegend=False,
                                 line=dict(color=GREY, dash="dash", width=1), hoverinfo="skip"), row=r, col=c)
        fig.add_trace(_trace("scatter", 
            x=obs, y=pred, mode="markers", name=f"evaluated points (left-out prediction ±{BAND_STD:g} std)",
            showlegend=t == 0, legendgroup="evaluated",
            marker=dict(color=STYLE["evaluated"][0], size=7), customdata=result.samples,
            error_y=dict(type="data", array=_bars(PS[:, t]), visible=True, thickness=1, width=0,
                         color=STYLE["evaluated"][0]),
            hovertemplate=f"measured %{{x:{units.hoverformat(task, allv)}}}<br>predicted without it "
                          f"%{{y:{units.hoverformat(task, allv)}}}<extra></extra>"),
            row=r, col=c)
        if len(vC):
            fig.add_trace(_trace("scatter", 
                x=vM[:, t], y=vP[:, t], mode="markers", name="verified merges", showlegend=t == 0, legendgroup="verified",
                marker=dict(color=STYLE["verified"][0], size=13, symbol="star", line=dict(color="black", width=0.5)),
                error_y=dict(type="data", array=_bars(vS[:, t]), visible=True, thickness=1.5, width=4,
                             color=STYLE["verified"][0]),
                customdata=vC,
                hovertemplate=f"measured %{{x:{units.hoverformat(task, allv)}}}<br>predicted %{{y:{units.hoverformat(task, allv)}}}<extra>verified</extra>"),
                row=r, col=c)
        fmt = units.tickformat(task, allv)
        unit = " (%)" if units.is_fraction(task, allv) else ""
        fig.update_xaxes(title=dict(text=f"measured{unit}", font=dict(size=11)), tickformat=fmt, row=r, col=c,
                         range=[lo - pad, hi + pad])
        fig.update_yaxes(title=dict(text=f"predicted, left out{unit}", font=dict(size=11)), tickformat=fmt, row=r, col=c,
                         range=[lo - pad, hi + pad])
    for k, t in enumerate(tasks):  # poor fits get a vermillion title
        if not (float(result.surrogates[t].r2_cv_) >= threshold):
            fig.layout.annotations[k].font = dict(color=OKABE_ITO["vermillion"], size=12)
    for ann in fig.layout.annotations[: len(tasks)]:
        if ann.font is None or ann.font.color is None:
            ann.font = dict(size=12)
    _layout(fig, "Surrogate quality: left-out prediction vs measured metric per task", height=max(HEIGHT, 300 * rows + 80))
    fig.update_layout(margin=dict(t=100))
    fig.update_layout(legend=dict(y=-0.12 if rows > 1 else -0.22))
    return fig


def loo_predictions(result) -> tuple[np.ndarray, np.ndarray]:
    """(n, T) left-out predictions and their std at the evaluated points (NaN where a surrogate has none)."""
    n = len(result.samples)
    P, S = np.full((n, len(result.tasks)), np.nan), np.full((n, len(result.tasks)), np.nan)
    for t, task in enumerate(result.tasks):
        s = result.surrogates[task]
        pred, std = getattr(s, "loo_predictions_", None), getattr(s, "loo_std_", None)
        if pred is not None and len(pred) == n:
            P[:, t] = pred
        if std is not None and len(std) == n:
            S[:, t] = std
    return P, S


def all_views(result, chosen: Chosen, minimums=None, markers: Sequence[Marker] = (), verified: Sequence[Marker] = (),
              units: Units | None = None, pair=(0, 1), triple=None, landscape_task: int = 0,
              landscape_axes=(0, 1), evaluated=None, quality: go.Figure | None = None) -> dict[str, go.Figure]:
    """Every view for one state of the explorer (the app's tabs and the report's sections).

    `quality` does not depend on the chosen point: pass the one built for this fit to reuse it.
    """
    tasks = result.tasks
    units = units or units_for(tasks, None, result.senses)
    figs = {"front_2d": front_2d(result, pair, chosen, markers, verified, units, evaluated)}
    if triple is not None and len(tasks) >= 3:
        figs["front_3d"] = front_3d(result, triple, chosen, markers, verified, units, evaluated)
    figs["parallel"] = parallel(result, minimums, chosen, verified, units)
    expert_values = expert_diagonal(markers, len(tasks))
    if expert_values is not None:
        figs["radar"] = radar(tasks, expert_values, result.senses, chosen, markers)
    figs["landscape"] = landscape(result, landscape_task, landscape_axes, chosen.coefficients, chosen, markers,
                                  verified, units)
    figs["quality"] = quality if quality is not None else surrogate_quality(result, verified, units)
    return figs


def expert_diagonal(markers: Sequence[Marker], n_tasks: int) -> np.ndarray | None:
    """Each expert's metric on its own task, from expert markers (coefficients = one-hot)."""
    values = np.full(n_tasks, np.nan)
    for m in markers:
        if m.kind == "expert":
            k = int(np.argmax(m.coefficients))
            values[k] = m.metrics[k]
    return values if np.all(np.isfinite(values)) else None
