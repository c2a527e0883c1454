"""A standalone HTML report of a choice: the plots and the chosen point, viewable without Python.

plotly.js is embedded once (inline), so the file opens offline in any browser and can be mailed
to stakeholders; the figures stay interactive (hover, zoom).
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Mapping, Sequence

import plotly.graph_objects as go

SECTION_TITLES = {
    "front_2d": "Pareto front (two tasks)",
    "front_3d": "Pareto front (three tasks)",
    "parallel": "All tasks: parallel coordinates of the front",
    "radar": "Chosen merge against the references",
    "landscape": "Surrogate landscape",
    "quality": "How far to trust the surrogates",
}

_CSS = """
body { font-family: Inter, Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1a1a1a;
       padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.95rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.7rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.meta { color: #555; font-size: 0.9rem; }
.glance { font-size: 1.0rem; padding-left: 1.2rem; } .glance li { margin: 0.2rem 0; }
.note { background: #fff4e0; border-left: 4px solid #E69F00; padding: 0.5rem 0.8rem; margin: 0.5rem 0; }
"""


def _table(rows: Sequence[Mapping]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    headers = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for h in headers:
            v = r.get(h)
            text = "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def report_html(title: str, figures: Mapping, rows: Sequence[Mapping], notes: Sequence[str] = (),
                meta: Mapping[str, str] | None = None, summary: Sequence[str] = ()) -> str:
    """The report as one HTML string: title, the chosen merge at a glance (`summary`, one line per
    task), its table, notes, then each figure."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    info = {"generated": time.strftime("%Y-%m-%d %H:%M"), **(meta or {})}
    parts.append('<p class="meta">' + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in info.items())
                 + "</p>")
    parts.append("<h2>Chosen merge</h2>")
    if summary:
        parts.append('<ul class="glance">' + "".join(f"<li>{html.escape(line)}</li>" for line in summary) + "</ul>")
    parts.append(_table(rows))
    for note in notes:
        parts.append(f'<div class="note">{html.escape(note)}</div>')
    first = True
    for name, fig in figures.items():
        parts.append(f"<h2>{html.escape(SECTION_TITLES.get(name, name))}</h2>")
        fig = go.Figure(fig.to_dict())  # validated here: the builders skip validation for speed
        parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False,
                                 config={"displaylogo": False, "responsive": True}, div_id=f"fig-{name}"))
        first = False
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(path: str | Path, title: str, figures: Mapping, rows: Sequence[Mapping], notes: Sequence[str] = (),
                 meta: Mapping[str, str] | None = None, summary: Sequence[str] = ()) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(report_html(title, figures, rows, notes, meta, summary), encoding="utf-8")
    return p
