"""The chosen point: the decision for the current preferences, and how the figures draw it."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from explorer.core.decision import Decision
from explorer.figures import Chosen
from explorer.vouch import decision_at


def choose(result, weights: Mapping[str, float], minimums: Mapping[str, float], picked: np.ndarray | None = None) -> Decision:
    """The decision for the current preferences, or a clicked point (`picked`) judged against them."""
    if picked is None:
        return result.decide(weights, minimums or None)
    return decision_at(result, picked, minimums)


def chosen_view(decision: Decision, measured: np.ndarray | None) -> Chosen:
    return Chosen(decision.coefficients, decision.predicted, measured, std=decision.std, trusted=decision.trusted)
