"""Share links: the preferences (importances, minimums, a picked point) as URL query parameters."""
from __future__ import annotations

from typing import Mapping, Sequence
from urllib.parse import quote, unquote

import numpy as np

WEIGHT_RANGE = (0.0, 10.0)  # the importance sliders' range


def encode_preferences(tasks: Sequence[str], weights: Mapping[str, float] | None,
                       minimums: Mapping[str, float] | None, experiment_key: str | None = None,
                       picked: np.ndarray | None = None) -> dict[str, str]:
    """Query parameters for a choice: w=task:2,other:1 & min=task:0.85 (& exp=key prefix, pick=c1,c2)."""
    def pairs(values: Mapping[str, float]) -> str:
        return ",".join(f"{quote(t, safe='')}:{_short(values[t])}" for t in tasks if t in values)

    out = {}
    if weights:
        out["w"] = pairs(weights)
    if minimums:
        out["min"] = pairs(minimums)
    if experiment_key:
        out["exp"] = experiment_key[:12]
    if picked is not None:
        out["pick"] = ",".join(_short(float(c), 6) for c in picked)
    return out


def _short(value: float, digits: int = 4) -> str:
    return f"{float(value):.{digits}g}"


def decode_preferences(params: Mapping[str, str], tasks: Sequence[str], bounds=None,
                       metric_ranges: Mapping[str, tuple[float, float]] | None = None
                       ) -> tuple[dict, dict, np.ndarray | None, list[str]]:
    """(weights, minimums, picked coefficients or None, problems) from query parameters.

    A share link is input from anyone: every value is checked, and what is malformed, non-finite,
    outside its range (weights: `WEIGHT_RANGE`; minimums: `metric_ranges[task]`, the sliders'
    range, when given) or, for `pick`, of the wrong length or outside the box `bounds` (T, 2), is
    skipped and reported in `problems` (one line each, shown to the user), never raised.
    """
    problems: list[str] = []

    def parse(name: str) -> dict[str, float]:
        text = params.get(name)
        out: dict[str, float] = {}
        if not text:
            return out
        for part in str(text).split(","):
            task, sep, value = part.rpartition(":")
            task = unquote(task)
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not sep or task not in tasks:
                problems.append(f"ignored {name}={_clip_text(part)} from the link: no such task "
                                f"(tasks are {', '.join(tasks)})")
            elif not np.isfinite(number):
                problems.append(f"ignored {name}={_clip_text(part)} from the link: not a finite number")
            else:
                out[task] = number
        return out

    weights = {}
    for t, w in parse("w").items():
        if WEIGHT_RANGE[0] <= w <= WEIGHT_RANGE[1]:
            weights[t] = w
        else:
            problems.append(f"ignored w={t}:{_short(w)} from the link: an importance lies in "
                            f"[{WEIGHT_RANGE[0]:g}, {WEIGHT_RANGE[1]:g}]")
    minimums = {}
    for t, v in parse("min").items():
        lo, hi = (metric_ranges or {}).get(t, (-np.inf, np.inf))
        if lo <= v <= hi:
            minimums[t] = v
        else:
            problems.append(f"ignored min={t}:{_short(v)} from the link: outside the front's range "
                            f"[{_short(lo)}, {_short(hi)}] for {t}")
    picked = _decode_pick(params.get("pick"), len(tasks), bounds, problems)
    return weights, minimums, picked, problems


def _decode_pick(text, n_tasks: int, bounds, problems: list[str]) -> np.ndarray | None:
    if not text:
        return None
    try:
        c = np.array([float(x) for x in str(text).split(",")])
    except ValueError:
        problems.append(f"ignored pick={_clip_text(text)} from the link: not numbers")
        return None
    if c.shape != (n_tasks,):
        problems.append(f"ignored pick= from the link: {len(c)} coefficients for {n_tasks} tasks")
    elif not np.all(np.isfinite(c)):
        problems.append("ignored pick= from the link: a coefficient is not a finite number")
    elif bounds is not None and not np.all((c >= np.asarray(bounds)[:, 0] - 1e-9) & (c <= np.asarray(bounds)[:, 1] + 1e-9)):
        box = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in np.asarray(bounds))
        problems.append(f"ignored pick= from the link: coefficients outside the explored box ({box})")
    else:
        return c
    return None


def _clip_text(text, limit: int = 40) -> str:
    text = repr(str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"
