"""Held-out test-split metrics of a chosen merge: the choice itself was made on validation data.

Choosing the best of many merges by their validation metrics flatters the winner, so an export
also measures it on data no choice has seen: every task whose evaluator takes a `split`
parameter (the CLIP suite's does) is evaluated again with split="test". Those results go to the
store under the task's test-split identity (kind "test"), so they are measured once, resumable,
readable without a model, and never mixed with the validation results the surrogates fit.
"""
from __future__ import annotations

import copy
import inspect

import numpy as np

from .errors import SpecError

SPLIT_PARAM = "split"
TEST_SPLIT = "test"
NO_SPLIT = "no test split (its evaluator takes no `split` parameter)"
ALREADY_TEST = "no separate test split: the spec already evaluates this task on split='test'"
_CACHE_ATTR = "_holdout_split"


def _takes_split(evaluator: str) -> bool:
    from .models import resolve_callable

    try:
        return SPLIT_PARAM in inspect.signature(resolve_callable(evaluator, "evaluator")).parameters
    except (TypeError, ValueError):
        return False


def _build(experiment):
    """(test-split Experiment or None, {task: note} for the tasks it does not cover)."""
    from .runner import Experiment

    spec = experiment.spec
    notes: dict[str, str] = {}
    split_tasks = []
    for t in experiment.tasks:
        ts = spec.tasks[t]
        if not _takes_split(ts.evaluator):
            notes[t] = NO_SPLIT
        elif ts.params.get(SPLIT_PARAM) == TEST_SPLIT:
            notes[t] = ALREADY_TEST
        else:
            split_tasks.append(t)
    while split_tasks:
        tasks = {t: (ts.model_copy(update={"params": {**ts.params, SPLIT_PARAM: TEST_SPLIT}}) if t in split_tasks else ts)
                 for t, ts in spec.tasks.items()}
        try:
            held = Experiment(spec.model_copy(update={"tasks": tasks}), experiment.spec_dir, experiment.store,
                              experiment.device, experiment.spec_path)
        except SpecError as exc:  # e.g. a dataset folder without a test/ sub-folder: that task has none
            bad = next((t for t in split_tasks if f"tasks.{t}." in str(exc)), None)
            if bad is None:
                raise
            notes[bad] = f"no test split ({str(exc).split(': ', 1)[-1]})"
            split_tasks.remove(bad)
            continue
        return held, split_tasks, notes
    return None, [], notes


def holdout(experiment):
    """(test-split Experiment or None, tasks it measures, {task: note} for the others); cached per experiment."""
    cached = experiment.__dict__.get(_CACHE_ATTR)
    if cached is None:
        cached = _build(experiment)
        experiment.__dict__[_CACHE_ATTR] = cached
    return cached


def _share_engine(experiment, held) -> None:
    """The test-split experiment evaluates the same merged model: reuse the loaded engine."""
    if "engine" in held.__dict__:
        return
    from .runner import Engine

    engine = copy.copy(experiment.engine)
    engine.evaluators = {t: Engine._evaluator(held.spec, held.spec_dir, t) for t in held.tasks}
    held.__dict__["engine"] = engine


def held_out_metrics(experiment, coefficients, measure: bool = False) -> tuple[dict, dict]:
    """({task: test-split metric or None}, {task: note}) at `coefficients`.

    measure=False reads the store only (no model is loaded); measure=True evaluates what is missing
    and stores it (kind "test").
    """
    c = np.asarray(coefficients, dtype=float)
    held, tasks, notes = holdout(experiment)
    values = {t: None for t in experiment.tasks}
    if held is None:
        return values, dict(notes)
    have = held.stored(c)
    missing = [t for t in tasks if t not in have]
    if measure and missing:
        _share_engine(experiment, held)
        for task, value, seconds in held.engine.measure(c, missing):
            held.store.put(held.key, held.task_identities[task], task, c, value, seconds, "test")
            have[task] = value
    notes = dict(notes)
    for t in tasks:
        values[t] = float(have[t]) if t in have else None
        if t not in have:
            notes[t] = "not measured yet (`merge-explorer export` measures it)"
    return values, notes
