"""How sure the surrogates are about one point: its ± std, and why they do not vouch for it.

A prediction without its uncertainty invites trust it has not earned. The CLI, the exports and
the app all say the same things here: each predicted metric with its std (metric units), and a
point the surrogates cannot vouch for flagged in one line naming the task at fault.
"""
from __future__ import annotations

import numpy as np

from explorer.core.decision import Decision, as_vector


def plus_minus(value: float, std: float | None, digits: int = 4) -> str:
    """'0.9123 ± 0.0150' ('0.9123 ± ?' when the std is unknown or unbounded)."""
    if value is None or not np.isfinite(value):
        return "—"
    if std is None or not np.isfinite(std):
        return f"{value:.{digits}f} ± ?"
    return f"{value:.{digits}f} ± {std:.{digits}f}"


def not_vouched_reason(tasks, std, trust_std, trusted: bool) -> str | None:
    """One line, 'not vouched for: std 0.0342 on task mid (vouched for up to 0.0200)', or None.

    The task named is the one whose std most exceeds its threshold. A point within every
    threshold that is still not trusted lies farther from the measured points than the
    left-out errors cover (the trust radius).
    """
    if trusted:
        return None
    std = np.nan_to_num(np.asarray(std, dtype=float), nan=np.inf)
    if np.all(std <= np.asarray(trust_std, dtype=float)):
        return "not vouched for: farther from the measured points than the surrogates' left-out errors cover"
    limit = np.asarray(trust_std, dtype=float)
    ratio = std / np.maximum(limit, 1e-300)
    k = int(np.argmax(ratio))
    if ratio[k] > 1:
        shown = "unbounded" if not np.isfinite(std[k]) else f"{std[k]:.4f}"
        return f"not vouched for: std {shown} on task {tasks[k]} (vouched for up to {limit[k]:.4f})"
    return "not vouched for: farther from the measured points than the surrogates' left-out errors cover"


def decision_reason(result, decision: Decision) -> str | None:
    """`not_vouched_reason` for a decision of `result` (None when the surrogates vouch for it)."""
    std = decision.std if decision.std is not None else result.predict(decision.coefficients, return_std=True)[1][0]
    return not_vouched_reason(result.tasks, std, result.trust_std, decision.trusted)


def decision_at(result, coefficients, minimums=None) -> Decision:
    """The decision for any point of the box (a clicked or polished one), judged on its predictions.

    `trusted`: the point lies within the trust radius of a measured point (`result.vouched`).
    """
    c = np.asarray(coefficients, dtype=float).ravel()
    mean, std = result.predict(c, return_std=True)
    predicted, std = mean[0], std[0]
    floors = as_vector(minimums or None, result.tasks, np.nan, "minimums")
    miss = np.where(np.isfinite(floors), np.maximum((floors - predicted) * result.senses, 0.0), 0.0)
    return Decision(-1, c, predicted, bool(np.all(miss <= 1e-12)), miss, std, bool(result.vouched(c)[0]))


def surrogate_family(surrogate) -> str:
    """"quadratic" (MAP's quadratic in a link) or "kriging" (quadratic + Gaussian-process residual)."""
    return str(getattr(surrogate, "family_", "quadratic"))


FAMILY_HELP = "quadratic = MAP's quadratic in a link; kriging = quadratic mean + Gaussian-process residual"
