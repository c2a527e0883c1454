"""Checking what an evaluation returned, and the sense of each metric (maximised or minimised)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from explorer.errors import EvaluationError, SpecError


def task_senses(tasks: Sequence[str], higher_is_better) -> np.ndarray:
    """+1 for metrics to maximise, -1 for metrics to minimise, in task order."""
    if isinstance(higher_is_better, Mapping):
        missing = [t for t in tasks if t not in higher_is_better]
        if missing:
            raise SpecError(f"higher_is_better has no entry for task {missing[0]!r}")
        flags = [bool(higher_is_better[t]) for t in tasks]
    elif isinstance(higher_is_better, (bool, np.bool_)):
        flags = [bool(higher_is_better)] * len(tasks)
    else:
        flags = [bool(x) for x in higher_is_better]
        if len(flags) != len(tasks):
            raise SpecError(f"higher_is_better has {len(flags)} entries for {len(tasks)} tasks")
    return np.where(flags, 1.0, -1.0)


def check_metrics(values: Mapping[str, float], tasks: Sequence[str], where: np.ndarray) -> np.ndarray:
    """Validate one evaluation result: every task present and finite."""
    if not isinstance(values, Mapping):
        raise EvaluationError(f"evaluate must return a {{task: float}} mapping, got {type(values).__name__}")
    out = np.empty(len(tasks))
    for i, task in enumerate(tasks):
        if task not in values:
            raise EvaluationError(f"evaluation at c={np.round(where, 4).tolist()} returned no metric for task {task!r}")
        v = float(values[task])
        if not np.isfinite(v):
            raise EvaluationError(f"evaluation of task {task!r} at c={np.round(where, 4).tolist()} returned {v}")
        out[i] = v
    return out
