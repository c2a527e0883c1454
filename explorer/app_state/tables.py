"""Text and tables for the page: the chosen merge, the polish, the sliders' ranges, reads at a glance, the report."""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from explorer.app_state.jobs import format_seconds
from explorer.core.decision import Decision
from explorer.figures import Marker, expert_diagonal
from explorer.report import report_html


# --- the chosen merge and its polish ------------------------------------------------------------
def polish_rows(tasks: Sequence[str], result, polished) -> list[dict]:
    """Measured vs predicted at the surrogate pick (the polish's first point) and at the polished point."""
    start, best = polished.coefficients[0], polished.coefficients[polished.best_index]
    (p0, p1), (s0, s1) = result.predict(np.vstack([start, best]), return_std=True)
    m0, m1 = polished.measured[0], polished.measured[polished.best_index]
    return [{"task": t, "predicted (pick)": round(float(p0[i]), 4), "± std (pick)": round(float(s0[i]), 4),
             "measured (pick)": round(float(m0[i]), 4), "predicted (polished)": round(float(p1[i]), 4),
             "± std (polished)": round(float(s1[i]), 4), "measured (polished)": round(float(m1[i]), 4),
             "gain": round(float(m1[i] - m0[i]), 4)} for i, t in enumerate(tasks)]


def polish_progress_text(done: int, total: int, started: float) -> str:
    """'polishing: 3 / 12 evaluations, about 40 s left'."""
    left = (time.time() - started) / max(done, 1) * max(total - done, 0)
    return f"polishing: {done} / {total} evaluations" + (f", about {format_seconds(left)} left" if done < total else "")


def polish_summary(polished) -> str:
    """One line: how many evaluations, and whether the polish beat the pick, as measured."""
    n = len(polished.coefficients)
    if polished.best_index == 0:
        return f"{n} real evaluations: none beat the surrogate pick as measured, so the pick is kept."
    return (f"{n} real evaluations: achievement (measured, lower is better) {polished.scores[0]:.4f} → "
            f"{polished.scores[polished.best_index]:.4f}; the chosen merge is now the polished point.")


def slider_range(result, task_index: int) -> tuple[float, float]:
    """The range of a task's minimum slider: its predicted span on the front (rounded outwards)."""
    v = result.front_predicted[:, task_index]
    lo, hi = float(np.min(v)), float(np.max(v))
    if not hi > lo:
        lo, hi = lo - 1e-3, hi + 1e-3
    step = slider_step(lo, hi)
    return float(np.floor(lo / step) * step), float(np.ceil(hi / step) * step)


def slider_step(lo: float, hi: float) -> float:
    span = max(hi - lo, 1e-9)
    return float(10 ** np.floor(np.log10(span / 200)))


def poor_fits(result, threshold: float = 0.8) -> dict[str, float]:
    """Tasks whose surrogate's cross-validated R² is below `threshold` (or undefined)."""
    return {t: float(s.r2_cv_) for t, s in result.surrogates.items() if not (float(s.r2_cv_) >= threshold)}


def choice_rows(tasks: Sequence[str], metrics: Mapping[str, str], decision: Decision,
                measured: np.ndarray | None, minimums: Mapping[str, float],
                fractions: Sequence[bool] | None = None) -> list[dict]:
    """The chosen-point table: one row per task. Tasks in `fractions` (accuracies) read in percent,
    their ± std and minimum too, as on the sliders and in the lines above the table; other metrics
    in their own units. A value that is unknown is None (shown as —), never nan."""
    rows = []
    std = decision.std if decision.std is not None else np.full(len(tasks), np.nan)
    fractions = list(fractions) if fractions is not None else [False] * len(tasks)

    def shown(i: int, v, signed: bool = False):
        if v is None or not np.isfinite(v):
            return None
        if fractions[i]:
            return f"{100 * float(v):{'+' if signed else ''}.2f} %"
        return round(float(v), 4)

    for i, t in enumerate(tasks):
        row = {"task": f"{t} ({metrics.get(t, 'metric')})", "coefficient": round(float(decision.coefficients[i]), 4),
               "predicted": shown(i, decision.predicted[i]), "± std": shown(i, std[i])}
        if measured is not None:
            row["measured"] = shown(i, measured[i])
            row["measured − predicted"] = shown(i, measured[i] - decision.predicted[i], signed=True)
        row["minimum"] = shown(i, minimums[t]) if t in minimums else None
        rows.append(row)
    return rows


#: Short column names for the chosen-merge table on the page (it shares the page with the plots).
CHOICE_HEADERS = {"coefficient": "c", "minimum": "min", "measured − predicted": "meas. − pred."}


def markdown_table(rows: list[dict], headers: Mapping[str, str] | None = None) -> str:
    """`rows` (dicts with the same keys) as a markdown pipe table; numbers with 4 decimals, None as —;
    `headers` renames columns for display (a narrow page column)."""
    if not rows:
        return ""
    keys = list(rows[0])
    headers = headers or {}

    def cell(v) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|")

    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    align = "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(keys))) + "|"  # text left, numbers right
    return "\n".join([line(headers.get(k, k) for k in keys), align, *(line(cell(r.get(k)) for k in keys) for r in rows)])


# --- reads at a glance -------------------------------------------------------------------------
@dataclass(frozen=True)
class References:
    """Measured reference values per task: the base, each expert on its own task, task arithmetic."""

    base: np.ndarray | None = None
    experts: np.ndarray | None = None
    task_arithmetic: np.ndarray | None = None

    @classmethod
    def from_markers(cls, markers: Sequence[Marker], n_tasks: int) -> "References":
        by_kind = {m.kind: m.metrics for m in markers if m.kind in ("base", "task_arithmetic")}
        return cls(by_kind.get("base"), expert_diagonal(markers, n_tasks), by_kind.get("task_arithmetic"))


def glance_lines(tasks: Sequence[str], senses: Sequence[float], fractions: Sequence[bool], values: np.ndarray,
                 refs: References, measured: bool = False) -> list[str]:
    """One plain-language line per task comparing the chosen merge with the base, the expert and task arithmetic.

    e.g. "digits: 84.1 % (predicted) — +12.3 points over the base, 5.2 below the expert, keeps 70 % of
    the expert's gain; +3.1 over task arithmetic". Accuracies (`fractions`) read in percent and
    points; other metrics in their own units, with "better"/"worse" following the task's sense.
    A reference that was not measured is left out.
    """
    lines = []
    for i, task in enumerate(tasks):
        scale = 100.0 if fractions[i] else 1.0
        v = float(values[i])
        shown = f"{scale * v:.1f} %" if fractions[i] else f"{v:.4g}"
        parts = []
        first = [True]

        def versus(ref: float, name: str) -> str:
            d = scale * (v - ref)
            unit = " points" if fractions[i] and first[0] else ""
            first[0] = False
            if not fractions[i]:
                better = d * senses[i] >= 0
                return f"{abs(d):.3g} {'better' if better else 'worse'} than {name}"
            if abs(d) < 0.05:
                return f"level with {name}"
            return f"+{d:.1f}{unit} over {name}" if d > 0 else f"{-d:.1f}{unit} below {name}"

        if refs.base is not None:
            parts.append(versus(float(refs.base[i]), "the base"))
        if refs.experts is not None:
            parts.append(versus(float(refs.experts[i]), "the expert"))
            if refs.base is not None:
                parts.append(_gain_kept(v, float(refs.base[i]), float(refs.experts[i]), senses[i]))
        head = ", ".join(parts)
        if refs.task_arithmetic is not None:
            ta = versus(float(refs.task_arithmetic[i]), "task arithmetic")
            head = f"{head}; {ta}" if head else ta
        kind = "measured" if measured else "predicted"
        lines.append(f"{task}: {shown} ({kind})" + (f" — {head}" if head else ""))
    return lines


def _gain_kept(value: float, base: float, expert: float, sense: float) -> str:
    gain = (expert - base) * sense
    if not gain > 1e-12:
        return "the expert does not beat the base here"
    share = (value - base) * sense / gain
    if share <= 0:
        return "keeps none of the expert's gain"
    return f"keeps {100 * share:.0f} % of the expert's gain"


def report_bytes(title: str, figures: dict, rows: list[dict], notes: Sequence[str] = (),
                 meta: Mapping[str, str] | None = None, summary: Sequence[str] = ()) -> bytes:
    return report_html(title, figures, rows, notes, meta, summary).encode("utf-8")


def to_buffer(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
