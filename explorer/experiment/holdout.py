"""Held-out test-split metrics of a chosen merge: the choice itself was made on validation data.

Choosing the best of many merges by their validation metrics flatters the winner, so an export
also measures it on data no choice has seen: every task whose evaluator takes a `split`
parameter (the CLIP suite's does) is evaluated again with split="test". Those results go to the
store under the task's test-split identity (kind "test"), so they are measured once, resumable,
readable without a model, and never mixed with the validation results the surrogates fit.
The experiment measures them with its own engine and its own store; callers hand the values to
the export.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from explorer.errors import SpecError
from explorer.experiment.identity import resolve_callable

SPLIT_PARAM = "split"
TEST_SPLIT = "test"
NO_SPLIT = "no test split (its evaluator takes no `split` parameter)"
ALREADY_TEST = "no separate test split: the spec already evaluates this task on split='test'"


@dataclass
class HeldOutPlan:
    """Which tasks have a test split: their params and store identities there, and a note for the others."""

    params: dict[str, dict] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _takes_split(evaluator: str) -> bool:
    try:
        return SPLIT_PARAM in inspect.signature(resolve_callable(evaluator, "evaluator")).parameters
    except (TypeError, ValueError):
        return False


def plan_held_out(experiment) -> HeldOutPlan:
    """The test-split params and identity of every task that has one (no model is loaded)."""
    plan = HeldOutPlan()
    cache = experiment.store.hash_cache()
    for t in experiment.tasks:
        ts = experiment.spec.tasks[t]
        if not _takes_split(ts.evaluator):
            plan.notes[t] = NO_SPLIT
        elif ts.params.get(SPLIT_PARAM) == TEST_SPLIT:
            plan.notes[t] = ALREADY_TEST
        else:
            params = {**ts.params, SPLIT_PARAM: TEST_SPLIT}
            try:
                plan.identities[t] = experiment.task_identity(t, cache, params=params)
            except SpecError as exc:  # e.g. a dataset folder without a test/ sub-folder: that task has none
                plan.notes[t] = f"no test split ({str(exc).split(': ', 1)[-1]})"
                continue
            plan.params[t] = params
    return plan


def held_out_metrics(experiment, coefficients, measure: bool = False) -> tuple[dict, dict]:
    """({task: test-split metric or None}, {task: note}) at `coefficients`.

    measure=False reads the store only (no model is loaded); measure=True evaluates what is missing
    with the experiment's engine and stores it (kind "test").
    """
    c = np.asarray(coefficients, dtype=float)
    plan = experiment.held_out_plan
    store, key = experiment.store, experiment.key
    have = {t: v for t, identity in plan.identities.items() if (v := store.get(key, identity, c)) is not None}
    missing = [t for t in plan.identities if t not in have]
    if measure and missing:
        engine = experiment.engine
        evaluators = {t: engine.evaluator(t, plan.params[t]) for t in missing}
        for task, value, seconds in engine.measure(c, missing, evaluators):
            store.put(key, plan.identities[task], task, c, value, seconds, "test")
            have[task] = value
    values = {t: (float(have[t]) if t in have else None) for t in experiment.tasks}
    notes = dict(plan.notes)
    for t in plan.identities:
        if t not in have:
            notes[t] = "not measured yet (`merge-explorer export` measures it)"
    return values, notes
