"""The benchmark's fixed preferences: the same seeded weight vectors for every method and every run
(`explorer.core.decision.preference_set`, which `merge-explorer compare` uses too).

Shared by the main benchmark (benchmarks/run.py) and the scaling table (benchmarks/scaling.py).
"""
from __future__ import annotations

import numpy as np

from explorer.core.decision import preference_set

N_PREFERENCES = 10


def preferences(t: int, n: int = N_PREFERENCES, seed: int = 0) -> np.ndarray:
    """Equal weights, then seeded Dirichlet(1) weight vectors: the same for every method."""
    return preference_set(t, n, seed)
