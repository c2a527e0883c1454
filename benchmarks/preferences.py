"""The benchmark's fixed preferences: the same seeded weight vectors for every method and every run.

Shared by the main benchmark (benchmarks/run.py) and the scaling table (benchmarks/scaling.py).
"""
from __future__ import annotations

import numpy as np

N_PREFERENCES = 10


def preferences(t: int, n: int = N_PREFERENCES, seed: int = 0) -> np.ndarray:
    """Equal weights, then seeded Dirichlet(1) weight vectors: the same for every method."""
    rng = np.random.default_rng([seed, t, 10])
    return np.vstack([np.ones(t) / t, rng.dirichlet(np.ones(t), n - 1)])
