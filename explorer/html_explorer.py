"""The explorer as one offline HTML file: sliders that move the choice in the browser, no server.

Stakeholders are rarely on the machine that ran the experiment. The surrogates' front is a table,
so the choice can be made in the page: the file embeds the front (predictions, std, coefficients,
which points are vouched for), the measured references and verified points, plotly.js once (the
copy shipped inside the plotly package: no network), and a small script
(`templates/explorer.js`) that minimises the same achievement function as `pick`
(explorer.core.decision), summing in numpy's order, so the file and `pick` choose the same point.

    merge-explorer export SPEC --html explorer.html
"""
from __future__ import annotations

import html
import json
import re
import time
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np

from explorer.app_state.handle import ExperimentHandle
from explorer.app_state.tables import slider_range, slider_step
from explorer.core.decision import RHO
from explorer.experiment.store import CHECK_KINDS
from explorer.figures import BAND_STD, STYLE, frontier_2d, label_offsets, units_for
from explorer.merging.methods import get_method
from explorer.version import __version__
from explorer.vouch import surrogate_family

#: A front whose embedded table is larger than this is thinned to the points choices come from.
MAX_EMBED_BYTES = 20 * 2**20
#: The page's plot area in pixels at 1280×800 (measured in Chromium): where reference labels are placed.
PLOT_AREA_PX = (468, 351)
PREDICTION_NOTE = ("Predictions are predictions: every value on the front comes from surrogates fitted to the "
                   "measured points, with its ± std. Only the base, the experts, task arithmetic and the verified "
                   "merges were measured. Measure the chosen merge (merge-explorer verify or export) before relying "
                   "on it.")


def _rows(a: np.ndarray) -> list:
    """Floats as JSON numbers (repr round-trips exactly); `_clean` turns NaN and ±inf into null."""
    return np.asarray(a, dtype=float).tolist()


def _clean(value):
    """NaN and ±inf as None (JSON null): no Python literal (nan, None) reaches the page."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def explorer_data(experiment, result, weights: Mapping[str, float] | None = None,
                  minimums: Mapping[str, float] | None = None, max_bytes: int = MAX_EMBED_BYTES) -> dict:
    """Everything the page shows and decides on, as plain JSON-able data.

    The candidates of `ExploreResult.decide` (vouched-for points, or all when none is) are always
    embedded, with the ideal and nadir of the whole front that scale the tasks, so thinning never
    changes a choice; the other front points are drawn for context and dropped first.
    """
    tasks, senses = list(result.tasks), np.asarray(result.senses, dtype=float)
    metrics = {t: experiment.spec.tasks[t].metric for t in tasks}
    units = units_for(tasks, metrics, senses)
    F, S = np.asarray(result.front_predicted, float), np.asarray(result.front_std, float)
    X, trusted = np.asarray(result.front_coefficients, float), np.asarray(result.front_trusted, bool)
    candidates = np.flatnonzero(trusted) if trusted.any() else np.arange(len(F))
    goodness = F * senses
    C, M, kinds = experiment.measured()
    refs, verified = ExperimentHandle(experiment).markers(C, M, kinds)
    fitted = sum(k not in CHECK_KINDS for k in kinds)
    hashes = experiment.checkpoint_hashes
    notes: list[str] = []

    def front_part(rows: np.ndarray) -> dict:
        return {"index": rows.tolist(), "coefficients": _rows(X[rows]), "predicted": _rows(F[rows]),
                "std": _rows(S[rows]), "trusted": trusted[rows].tolist()}

    shown = np.arange(len(F))
    data = {
        "experiment": experiment.spec.name, "experiment_key": experiment.key,
        "created": time.strftime("%Y-%m-%d %H:%M %Z"), "version": __version__,
        "method": get_method(experiment.spec.merge.method).title,
        "tasks": tasks, "senses": senses.tolist(), "metrics": metrics,
        "percent": [bool(units.is_fraction(t)) for t in tasks],
        "bounds": _rows(result.bounds),
        "rho": RHO, "ideal": _rows(goodness.max(axis=0)), "nadir": _rows(goodness.min(axis=0)),
        "trust_std": _rows(result.trust_std), "band_std": BAND_STD,
        "sliders": [_slider(result, i, units.is_fraction(t)) for i, t in enumerate(tasks)],
        "references": [{"label": m.label, "kind": m.kind, "coefficients": _rows(m.coefficients),
                        "metrics": _rows(m.metrics)} for m in refs],
        "verified": [{"label": m.label, "kind": m.kind, "coefficients": _rows(m.coefficients),
                      "metrics": _rows(m.metrics)} for m in verified],
        "style": {k: list(v) for k, v in STYLE.items()},
        "checkpoints": [{"name": "base", "sha256": hashes["base"]}] + [{"name": t, "sha256": hashes[t]} for t in tasks],
        "evaluations": {"points": int(len(C)), "fitted": int(fitted), "checks": int(len(C) - fitted),
                        "task_evaluations": int(len(C) * len(tasks))},
        "surrogates": [{"task": t, "r2_cv": float(result.surrogates[t].r2_cv_),
                        "family": surrogate_family(result.surrogates[t])} for t in tasks],
        "vouched": {"front_points": int(len(F)), "vouched_for": int(trusted.sum()),
                    "choices_from": "vouched-for points" if trusted.any() else "all front points (none is vouched for)"},
        "preferences": {"weights": dict(weights or {}), "minimums": dict(minimums or {})},
        "prediction_note": PREDICTION_NOTE,
    }
    data["front"] = front_part(shown)
    data["edges"] = _edges(F, shown, candidates, senses)
    data["label_offsets"] = _label_offsets(F, S, refs, verified, data["band_std"])
    size = len(json.dumps(_clean(data)))
    if size > max_bytes:
        data["front"] = front_part(candidates)
        data["edges"] = _edges(F, candidates, candidates, senses)
        notes.append(f"The front ({len(F)} points, {size / 2**20:.1f} MB) is too large to embed in full "
                     f"(limit {max_bytes / 2**20:.1f} MB): only the {len(candidates)} points choices come from are "
                     f"embedded; the choice is the same as `pick`'s.")
    data["notes"] = notes
    return _clean(data)


def _slider(result, i: int, percent: bool) -> dict:
    """The minimum slider of task i, as the app draws it (percent for accuracies)."""
    scale = 100.0 if percent else 1.0
    lo, hi = (round(scale * v, 8) for v in slider_range(result, i))
    return {"lo": lo, "hi": hi, "step": slider_step(lo, hi), "scale": scale}


def _edges(F: np.ndarray, shown: np.ndarray, candidates: np.ndarray, senses: np.ndarray) -> dict:
    """Per pair of tasks 'i,j': positions (in the embedded front) of the 2-D frontier of the candidates."""
    position = {int(r): k for k, r in enumerate(shown)}
    out = {}
    T = F.shape[1]
    for i in range(T):
        for j in range(i + 1, T):
            edge = candidates[frontier_2d(F[candidates][:, [i, j]], senses[[i, j]])]
            out[f"{i},{j}"] = [position[int(r)] for r in edge if int(r) in position]
    return out


def _axis_range(values: np.ndarray, bars: np.ndarray) -> tuple[float, float]:
    """The page's fixed axis range (explorer.js `range`): every value and ± bar, padded by 6 %."""
    lo, hi = np.nanmin(values - bars), np.nanmax(values + bars)
    pad = max(0.06 * (hi - lo), 1e-9)
    return float(lo - pad), float(hi + pad)


def _label_offsets(F: np.ndarray, S: np.ndarray, refs, verified, band: float) -> dict:
    """Per ordered pair of tasks 'i,j', the pixel offset of each reference's label (figures.label_offsets:
    where it hides no marker) in the page's plot area."""
    if not refs:
        return {}
    M = np.array([m.metrics for m in list(refs) + list(verified)], dtype=float)
    bars = np.vstack([np.nan_to_num(band * S, nan=0.0), np.zeros_like(M)])
    values = np.vstack([F, M])
    out = {}
    T = F.shape[1]
    for i in range(T):
        for j in range(T):
            if i == j:
                continue
            xr, yr = _axis_range(values[:, i], bars[:, i]), _axis_range(values[:, j], bars[:, j])
            anchors = np.array([[m.metrics[i], m.metrics[j]] for m in refs], dtype=float)
            offsets = label_offsets(anchors, [m.label for m in refs], values[:, [i, j]], xr, yr, PLOT_AREA_PX)
            out[f"{i},{j}"] = [[round(dx, 1), round(dy, 1)] for dx, dy in offsets]
    return out


def _asset(name: str) -> str:
    return resources.files("explorer").joinpath("templates", name).read_text(encoding="utf-8")


def _script_json(data: dict) -> str:
    """JSON safe inside <script>: no '</' or '<!--' can close or open anything."""
    return json.dumps(data, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def explorer_html(data: dict) -> str:
    """The page: template + data + explorer.js + plotly.js (embedded once, offline)."""
    from plotly.offline import get_plotlyjs

    parts = {"TITLE": html.escape(f"merge-explorer: {data['experiment']}"), "DATA": _script_json(data),
             "EXPLORER_JS": _asset("explorer.js"), "PLOTLY_JS": get_plotlyjs().replace("</script", "<\\/script")}
    return re.sub(r"\{\{(TITLE|DATA|EXPLORER_JS|PLOTLY_JS)\}\}", lambda m: parts[m.group(1)], _asset("explorer.html"))


def write_explorer_html(path: str | Path, experiment, result, weights=None, minimums=None,
                        max_bytes: int = MAX_EMBED_BYTES) -> tuple[Path, dict]:
    """Write the file (umask permissions, like every export); returns (path, the embedded data)."""
    data = explorer_data(experiment, result, weights, minimums, max_bytes)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(explorer_html(data), encoding="utf-8")
    return p, data


def explorer_bytes(experiment, result, weights=None, minimums=None) -> bytes:
    """The file's bytes, for the app's download button."""
    return explorer_html(explorer_data(experiment, result, weights, minimums)).encode("utf-8")
