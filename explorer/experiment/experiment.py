"""A spec bound to a store (`Experiment`) and the loaded model side of it (`Engine`).

`Experiment` knows its content key, the identity of every task, which evaluations the store has,
the fit and the front (cached in the store); `Engine` holds checkpoints -> task vectors -> the
model a merge is written into -> the evaluators. The evaluation loop is explorer.experiment.loop.
Everything heavy (checkpoints, task vectors, the model, the evaluators' cached data) is built
once per `Experiment`, lazily: reading results back from the store (pick, export's coefficients,
the app's views) needs no model at all.
"""
from __future__ import annotations

import inspect
import time
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from explorer.core.adaptive import default_initial, inside_box, loop_budget
from explorer.core.design import (
    coefficient_key,
    default_budget,
    n_quadratic_terms,
    normalize_bounds,
    sample_design,
    strength_stratified_design,
)
from explorer.core.explore import default_design
from explorer.core.result import ExploreResult, fit_result
from explorer.core.sampling import check_examples, corrected_means, example_order, examples_for, shared_variance
from explorer.core.surrogate import front_scale
from explorer.errors import EvaluationError, ExplorerError, SpecError
from explorer.experiment import front_cache
from explorer.experiment.families.registry import lookup as lookup_family
from explorer.experiment.holdout import HeldOutPlan, held_out_metrics, plan_held_out
from explorer.experiment.identity import (
    digest,
    evaluator_precision,
    evaluator_version,
    param_files,
    previous_versions,
    resolve_callable,
)
from explorer.experiment.loop import run_adaptive, run_design
from explorer.experiment.spec import Spec, load_spec, resolve
from explorer.experiment.store import FIT_KINDS, Store
from explorer.merging.checkpoints import checkpoint_files, content_hash
from explorer.merging.devices import device_kind
from explorer.merging.lora import check_adapter_folder
from explorer.merging.methods.registry import get_method, merge_parameters

DEFAULT_STORE = Path("cache") / "store.sqlite"


def _is_base(coefficients) -> bool:
    return not np.any(np.asarray(coefficients, dtype=float))


class Engine:
    """The loaded model side of an experiment: base, task vectors, model, merger, evaluators."""

    def __init__(self, experiment: "Experiment"):
        spec, spec_dir = experiment.spec, experiment.spec_dir
        # the family's module (explorer/families/) loads the model, the task vectors and the merger
        lookup_family(spec.model.family).load_engine(self, experiment)
        self.spec, self.spec_dir = spec, spec_dir
        self.evaluators = {t: self.evaluator(t) for t in experiment.tasks}

    def _call(self, task: str, params: dict | None = None) -> tuple[Callable, dict]:
        ts = self.spec.tasks[task]
        fn = resolve_callable(ts.evaluator, f"tasks.{task}.evaluator")
        kwargs = dict(ts.params if params is None else params)
        try:
            if "spec_dir" in inspect.signature(fn).parameters:
                kwargs["spec_dir"] = str(self.spec_dir)
        except (TypeError, ValueError):
            pass
        return fn, kwargs

    def evaluator(self, task: str, params: dict | None = None) -> Callable:
        """The task's evaluator as a function of the model, with the spec's params (or `params`)."""
        fn, kwargs = self._call(task, params)
        return lambda model: fn(model, **kwargs)

    def takes_indices(self, task: str) -> bool:
        """Whether the task's evaluator can score a subset of its examples: it takes `indices` and
        says its set size (`evaluate.n_examples(model, **params)`), see docs/ARCHITECTURE.md."""
        fn, _ = self._call(task)
        try:
            takes = "indices" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes = False
        return takes and callable(getattr(fn, "n_examples", None))

    def n_examples(self, task: str) -> int | None:
        """The size of the task's evaluation set, as its evaluator reports it (None: these params
        cannot be measured on a subset, e.g. a per-token loss)."""
        fn, kwargs = self._call(task)
        try:
            n = fn.n_examples(self.model, **kwargs)
        except (ValueError, RuntimeError, OSError, TypeError) as exc:
            raise EvaluationError(f"evaluator of task {task!r} could not say its number of examples "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
        if n is None:
            return None
        n = int(n)
        if n < 1:
            raise EvaluationError(f"evaluator of task {task!r} reports {n} examples")
        return n

    def score_examples(self, coefficients: np.ndarray, indices: dict[str, np.ndarray],
                       merged: bool = False) -> Iterator[tuple[str, np.ndarray, float]]:
        """Merge at `coefficients` (once; not again when `merged`) and yield (task, per-example scores,
        seconds) for the examples `indices[task]` of each task (explorer.core.sampling)."""
        if not merged:
            self.merger.apply(coefficients)
        for task, idx in indices.items():
            fn, kwargs = self._call(task)
            start = time.perf_counter()
            try:
                scores = np.asarray(fn(self.model, **kwargs, indices=np.asarray(idx, dtype=np.int64)), dtype=float)
            except EvaluationError:
                raise
            except (ValueError, RuntimeError, OSError, TypeError) as exc:
                raise EvaluationError(f"evaluator of task {task!r} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
            if scores.shape != (len(idx),):
                raise EvaluationError(f"evaluator of task {task!r} returned {scores.size} per-example scores for "
                                      f"{len(idx)} examples; nothing was stored")
            if not np.all(np.isfinite(scores)):
                raise EvaluationError(f"evaluator of task {task!r} returned a non-finite per-example score at "
                                      f"c={np.round(coefficients, 4).tolist()}; nothing was stored")
            yield task, scores, time.perf_counter() - start

    def measure(self, coefficients: np.ndarray, tasks: Iterable[str],
                evaluators: dict[str, Callable] | None = None) -> Iterator[tuple[str, float, float]]:
        """Merge at `coefficients` (once) and yield (task, metric, seconds) for each task
        (with `evaluators` instead of the spec's, e.g. the held-out split's)."""
        evaluators = evaluators or self.evaluators
        self.merger.apply(coefficients)
        for task in tasks:
            start = time.perf_counter()
            try:
                value = float(evaluators[task](self.model))
            except EvaluationError:
                raise
            except (ValueError, RuntimeError, OSError, TypeError) as exc:
                raise EvaluationError(f"evaluator of task {task!r} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
            if not np.isfinite(value):
                raise EvaluationError(
                    f"evaluator of task {task!r} returned {value} at c={np.round(coefficients, 4).tolist()}; nothing was stored"
                )
            yield task, value, time.perf_counter() - start


class Experiment:
    """A validated spec bound to a store: knows its content key and which evaluations exist."""

    def __init__(self, spec: Spec, spec_dir: Path, store: Store | None = None, device: str | None = None,
                 spec_path: Path | None = None, read_only: bool = False):
        """read_only: open the default store read-only (a `store` given is used as it was opened)."""
        self.spec, self.spec_dir, self.device, self.spec_path = spec, Path(spec_dir), device, spec_path
        self.tasks = list(spec.tasks)
        self.bounds = normalize_bounds(spec.bounds, len(self.tasks))
        self._check_paths()
        self.store = store or Store(resolve(self.spec_dir, spec.store) if spec.store else Path.cwd() / DEFAULT_STORE,
                                    read_only=read_only)
        self.senses = np.array([1.0 if spec.tasks[t].maximise() else -1.0 for t in self.tasks])
        self.device_kind = device_kind(device or spec.device)
        cache = self.store.hash_cache()
        self.checkpoint_hashes = {
            "base": content_hash(resolve(self.spec_dir, spec.model.base), cache),
            **{t: content_hash(resolve(self.spec_dir, spec.tasks[t].checkpoint), cache) for t in self.tasks},
        }
        model = {
            "family": spec.model.family, "architecture": spec.model.architecture, "prefix": spec.model.merge_prefix,
            "checkpoints": [self.checkpoint_hashes["base"]] + [self.checkpoint_hashes[t] for t in self.tasks],
            **self._family_identity(),
        }
        if spec.model.experts_format != "full":  # LoRA experts: another model than full ones (same keys as before otherwise)
            model["experts_format"] = spec.model.experts_format
        merge = self.merge_parameters()
        revision = get_method(merge["method"]).revision  # a method's changed definition is another merge
        self.key = digest({**model, "merge": merge, **({"method_revision": revision} if revision > 1 else {})})
        # the checkpoints without the merge method: experiments sharing it share the base (c = 0 is θ₀)
        self.model_key = digest(model)
        self.task_identities = {t: self.task_identity(t, cache) for t in self.tasks}
        # results stored under an earlier identity of the same evaluator are served too (its code moved)
        self.previous_identities = {t: [self.task_identity(t, cache, version=v) for v in previous_versions(
            resolve_callable(spec.tasks[t].evaluator, f"tasks.{t}.evaluator"))] for t in self.tasks}
        # Written with the first stored evaluation: opening (or failing) leaves the store untouched.
        self.store.register_experiment(self.key, spec.name, {
            "tasks": self.tasks, "spec_path": str(spec_path) if spec_path else None,
            "bounds": self.bounds.tolist(), "merge": self.merge_parameters(), "senses": self.senses.tolist(),
            "metrics": {t: spec.tasks[t].metric for t in self.tasks}, "model_key": self.model_key,
        }, defer=True)
        if self.store.count(self.key):
            self.store.flush()  # a known experiment: keep the file hashes, so the next open reads no checkpoint

    def _family_identity(self) -> dict:
        """What a registered family adds to the content key (e.g. the base's config and tokenizer files)."""
        family = lookup_family(self.spec.model.family)
        identity = getattr(family, "identity", None)
        return {"family_files": identity(self)} if identity else {}

    @classmethod
    def from_file(cls, path: str | Path, store_path: str | Path | None = None, device: str | None = None,
                  trust_pickle: bool = False, read_only: bool = False, method: str | None = None) -> "Experiment":
        """`trust_pickle` overrides the spec's `model.trust_pickle` (the CLI's --trust-pickle); `read_only`
        opens the store read-only (nothing is written: reading results back, pick, present mode)."""
        spec, spec_dir = load_spec(path)
        if method is not None:  # the same checkpoints merged by another method (`merge-explorer compare`)
            spec = spec.with_method(method)
        if trust_pickle:
            spec = spec.model_copy(update={"model": spec.model.model_copy(update={"trust_pickle": True})})
        store = Store(store_path, read_only=read_only) if store_path else None
        return cls(spec, spec_dir, store, device, Path(path).resolve(), read_only)

    @property
    def cache_dir(self) -> Path:
        """Where work derived from the checkpoints is kept (preprocessed experts): beside the spec's
        store, also for a process that writes no store (a Ray worker)."""
        store = self.store.path if not self.store.memory else (
            resolve(self.spec_dir, self.spec.store) if self.spec.store else Path.cwd() / DEFAULT_STORE)
        return Path(store).parent / "preprocessed"

    def path(self, path: str | None) -> Path | None:
        """A path named in the spec, made absolute against the spec's directory."""
        return resolve(self.spec_dir, path)

    def _check_paths(self) -> None:
        checkpoint_files(resolve(self.spec_dir, self.spec.model.base))
        for t in self.tasks:
            path = resolve(self.spec_dir, self.spec.tasks[t].checkpoint)
            if self.spec.model.experts_format == "peft":
                check_adapter_folder(path, f"tasks.{t}.checkpoint")
            checkpoint_files(path)

    def merge_parameters(self) -> dict:
        """The merge method and the parameters it reads (part of the content key and of exports)."""
        return merge_parameters(self.spec.merge)

    def task_identity(self, task: str, cache=None, params: dict | None = None, version: str | None = None) -> str:
        """What a task's metric depends on besides the merged weights (with the spec's params, or `params`).

        The evaluator and its version (an explicit `version` attribute, else a hash of its module's
        source; `version` replaces it), its params and the contents of every file they name, its data
        fingerprint, the device kind and the precision it computes in. Change any of these and the
        task's stored results are no longer served; other tasks keep theirs.
        """
        ts = self.spec.tasks[task]
        params = ts.params if params is None else params
        fn = resolve_callable(ts.evaluator, f"tasks.{task}.evaluator")
        fingerprint = None
        if hasattr(fn, "fingerprint"):
            kwargs = dict(params)
            try:
                if "spec_dir" in inspect.signature(fn.fingerprint).parameters:
                    kwargs["spec_dir"] = str(self.spec_dir)
            except (TypeError, ValueError):
                pass
            try:
                fingerprint = fn.fingerprint(**kwargs)
            except ExplorerError:
                raise
            except Exception as exc:  # noqa: BLE001 - the user's evaluator: its error names their data
                raise SpecError(f"tasks.{task}.params: the evaluator's fingerprint failed "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        return digest({
            "evaluator": ts.evaluator, "params": params, "metric": ts.metric, "fingerprint": fingerprint,
            "files": param_files(params, self.spec_dir, cache),
            "version": version or evaluator_version(fn, ts.evaluator),
            "device": self.device_kind,
            "precision": evaluator_precision(fn, self.device_kind, f"tasks.{task}.evaluator"),
        })

    # --- model side -------------------------------------------------------------------------
    @cached_property
    def engine(self) -> Engine:
        return Engine(self)

    @property
    def loaded(self) -> bool:
        """Whether the model side is in memory (reading results back never loads it)."""
        return "engine" in self.__dict__

    def release(self) -> None:
        """Drop the loaded model side (checkpoints, task vectors, model); results stay in the store."""
        self.__dict__.pop("engine", None)

    # --- evaluations ------------------------------------------------------------------------
    def stored(self, coefficients) -> dict[str, float]:
        """The metrics already in the store at `coefficients` (possibly for only some tasks)."""
        out = {}
        for t in self.tasks:
            for identity in (self.task_identities[t], *self.previous_identities[t]):
                v = self.store.get(self.key, identity, coefficients)
                if v is not None:
                    out[t] = v
                    break
        if len(out) < len(self.tasks) and _is_base(coefficients):
            out = {**self.shared_base(), **out}
        return out

    def observed(self, coefficients) -> dict[str, float]:
        """Like `stored`, plus the mean over the examples scored so far where only a subsample was."""
        out = {**{t: float(np.mean(scores)) for t, (scores, _) in self._stored_samples(coefficients).items()},
               **self.stored(coefficients)}
        return {t: out[t] for t in self.tasks if t in out}

    def shared_base(self) -> dict[str, float]:
        """The base's (c = 0, θ₀ whatever the merge method) metrics as another merge method of the same
        checkpoints measured them (`merge-explorer compare`): measured once, served to every method."""
        zeros = np.zeros(len(self.tasks))
        for other in self.store.experiments():
            if other["key"] == self.key or other["meta"].get("model_key") != self.model_key:
                continue
            have = {t: v for t in self.tasks if (v := self.store.get(other["key"], self.task_identities[t], zeros)) is not None}
            if len(have) == len(self.tasks):
                return have
        return {}

    def stored_metrics(self, coefficients) -> np.ndarray | None:
        """(T,) metrics at `coefficients` if the store has every task, else None."""
        have = self.stored(coefficients)
        return np.array([have[t] for t in self.tasks]) if len(have) == len(self.tasks) else None

    def held_out(self, coefficients, measure: bool = False) -> tuple[dict, dict]:
        """({task: test-split metric or None}, {task: note}) at `coefficients` (explorer.experiment.holdout);
        measure=True evaluates what the store lacks with this experiment's engine."""
        return held_out_metrics(self, coefficients, measure)

    @cached_property
    def held_out_plan(self) -> HeldOutPlan:
        return plan_held_out(self)

    # --- subsampled evaluation (explorer.core.sampling) ---------------------------------------
    @property
    def examples_setting(self):
        """The spec's `evaluation.examples`: "full", "auto" or a count."""
        return self.spec.evaluation.examples

    def subsampled(self, task: str) -> bool:
        """Whether points of `task` may be measured on part of its examples (the spec asks for it and
        the evaluator can; otherwise the full set, as before)."""
        return (self.examples_setting != "full" and self.engine.takes_indices(task)
                and self.n_examples(task) is not None)

    def n_examples(self, task: str) -> int | None:
        """The task's set size, as its evaluator reports it (checked against `evaluation.examples`)."""
        cache = self.__dict__.setdefault("_n_examples", {})
        if task not in cache:
            cache[task] = self.engine.n_examples(task)
            if cache[task] is not None:
                check_examples(self.examples_setting, cache[task], task)
        return cache[task]

    def example_order(self, task: str) -> np.ndarray:
        cache = self.__dict__.setdefault("_orders", {})
        if task not in cache:
            cache[task] = example_order(self.n_examples(task), self.task_identities[task])
        return cache[task]

    def check_examples(self) -> list[str]:
        """Check `evaluation.examples` against every task's set (one line naming the task at fault)
        before anything is measured; returns a line per task whose evaluator cannot subsample."""
        if self.examples_setting == "full":
            return []
        notes = []
        for t in self.tasks:
            if not self.engine.takes_indices(t):
                notes.append(f"task {t!r}: its evaluator takes no `indices`; measured on its full set")
            elif self.n_examples(t) is None:
                notes.append(f"task {t!r}: its evaluator cannot subsample these params; measured on its full set")
        return notes

    def _stored_samples(self, c) -> dict[str, tuple[np.ndarray, int]]:
        return {t: got for t in self.tasks
                if (got := self.store.get_samples(self.key, self.task_identities[t], c)) is not None}

    def complete(self, coefficients, kind: str = "design") -> bool:
        """Whether the store has every task at `coefficients` on as many examples as `kind` needs."""
        c = np.asarray(coefficients, dtype=float)
        have = self.stored(c)
        if len(have) == len(self.tasks):
            return True
        if self.examples_setting == "full" and kind in ("design", "adaptive", "reference"):
            samples = {}
        else:
            samples = self._stored_samples(c)
        for t in self.tasks:
            if t in have:
                continue
            if t not in samples:
                return False
            scores, n_total = samples[t]
            if len(scores) < examples_for(self.examples_setting, n_total, kind, t):
                return False
        return True

    def evaluate(self, coefficients, kind: str = "design") -> np.ndarray:
        """Metrics (T,) at `coefficients`, measuring and storing only what the store lacks.

        With `evaluation.examples` set, points of `kind` design, adaptive and reference are measured
        on a prefix of each task's example order (their metric is the mean over those examples);
        every other kind on the full set. Stored per-example scores are extended, never re-measured.
        """
        c = np.asarray(coefficients, dtype=float)
        plain, jobs = self.plan(c, kind)
        for item in self.engine.measure(c, plain) if plain else ():  # each task stored as it finishes:
            self.record(c, kind, [item], [], jobs)                    # a kill loses one evaluation at most
        if jobs:  # (the engine merges, and so loads the model, only when there is something to score)
            for item in self.engine.score_examples(c, {t: idx for t, (_, idx) in jobs.items()}, merged=bool(plain)):
                self.record(c, kind, [], [item], jobs)
        return self._metrics_from_store(c)

    def plan(self, coefficients, kind: str = "design") -> tuple[list[str], dict[str, tuple[int, np.ndarray]]]:
        """What measuring `coefficients` as `kind` still needs: (tasks to measure on their full sets,
        {task: (examples stored so far, indices of the examples to score next)}). Executors send this
        to wherever the point is measured and hand what comes back to `record`. Refused (SpecError)
        on a read-only store that lacks something."""
        c = np.asarray(coefficients, dtype=float)
        have = self.stored(c)
        missing = [t for t in self.tasks if t not in have]
        if not missing:
            return [], {}
        samples = self._stored_samples(c)
        plain, jobs = [], {}
        for t in missing:
            scores = samples[t][0] if t in samples else np.zeros(0)
            if t not in samples and not self.subsampled(t):
                plain.append(t)
                continue
            n_total = samples[t][1] if t in samples else self.n_examples(t)
            need = examples_for(self.examples_setting, n_total, kind, t)
            if len(scores) < need:
                jobs[t] = (len(scores), self.example_order(t)[len(scores):need])
        if (plain or jobs) and self.store.read_only:
            t = (plain or list(jobs))[0]
            raise SpecError(f"{self.store.path} is open read-only and lacks task {t!r} at "
                            f"c={np.round(c, 4).tolist()}; nothing was measured")
        return plain, jobs

    def record(self, coefficients, kind: str, values, scored, jobs: dict[str, tuple[int, np.ndarray]]) -> None:
        """Store a plan's results: `values` [(task, value, seconds)] measured on full sets, `scored`
        [(task, per-example scores, seconds)] for the plan's `jobs`, appended to the scores stored
        when the plan was made (scores another run stored meanwhile are kept, not doubled)."""
        c = np.asarray(coefficients, dtype=float)
        for task, value, seconds in values:
            self.store.put(self.key, self.task_identities[task], task, c, value, seconds, kind)
        if not scored:
            return
        samples = self._stored_samples(c)
        for task, new, seconds in scored:
            start, idx = jobs[task]
            old = samples[task][0] if task in samples else np.zeros(0)
            if len(new) != len(idx):
                raise EvaluationError(f"evaluator of task {task!r} returned {len(new)} per-example scores for "
                                      f"{len(idx)} examples; nothing was stored")
            if len(old) != start:  # extended by another run since the plan: its scores stand
                continue
            n_total = samples[task][1] if task in samples else self.n_examples(task)
            self.store.put_samples(self.key, self.task_identities[task], task, c, np.concatenate([old, new]), n_total,
                                   seconds, kind)

    def _metrics_from_store(self, coefficients) -> np.ndarray:
        """Metrics (T,) at `coefficients` from the store alone: full-set values, else the mean of the
        stored per-example scores (KeyError naming a task the store has nothing of)."""
        c = np.asarray(coefficients, dtype=float)
        have = self.stored(c)
        samples = self._stored_samples(c) if len(have) < len(self.tasks) else {}
        out = []
        for t in self.tasks:
            if t in have:
                out.append(have[t])
            elif t in samples:
                out.append(float(np.mean(samples[t][0].astype(np.float32), dtype=np.float64)))
            else:
                raise KeyError(f"task {t!r} has no stored result at c={np.round(c, 4).tolist()}")
        return np.array(out)

    def design(self, budget: int | None = None) -> np.ndarray:
        return sample_design(self.bounds, len(self.tasks), budget if budget is not None else self.spec.budget, self.spec.seed)

    def progress(self, budget: int | None = None) -> tuple[int, int]:
        """(points measured, points in all) of the run `run(budget)` does, so that a progress bar and
        a "continue" button follow the same design as the run (adaptive from 4 tasks on)."""
        C, _, kinds = self.measured()
        have = {coefficient_key(c) for c in C}
        references = self.reference_points()
        t = len(self.tasks)
        if default_design(t) != "adaptive":
            points = {coefficient_key(c) for c in [*self.design(budget), *references]}  # corners are references too
            return len(points & have), len(points)
        budget = budget if budget is not None else (self.spec.budget or default_budget(t))
        initial = min(default_initial(t), budget)
        loop = loop_budget(budget, initial)
        # the base and the experts are corners of the start design when the box holds them: counted once
        start = {coefficient_key(c) for c in strength_stratified_design(self.bounds, t, initial, self.spec.seed)}
        extra = [c for c in references if coefficient_key(c) not in start]
        total = loop + len(extra) + 1  # + the closing task-arithmetic reference (finish)
        # a run that reached its closing point is complete, also when it stopped early (converged)
        if any(k == "reference" and np.ptp(c) < 1e-12 and c[0] > 0 for c, k in zip(C, kinds)):
            return total, total
        fitted = int(np.sum(inside_box(C, self.bounds) & np.isin(kinds, FIT_KINDS))) if len(C) else 0
        return min(fitted, loop) + sum(coefficient_key(c) in have for c in extra), total

    def run(self, budget: int | None = None, progress: bool = True, executor=None, adaptive: bool | None = None,
            **adaptive_options) -> ExploreResult:
        """Evaluate the design (resuming from the store), the reference points, then fit.

        adaptive: a smaller design, then rounds of points near the front (explorer.experiment.loop);
        None: adaptive from `explorer.core.explore.ADAPTIVE_FROM_TASKS` tasks on.
        """
        if adaptive is None:
            adaptive = default_design(len(self.tasks)) == "adaptive"
        if adaptive:
            return run_adaptive(self, budget, progress, executor, **adaptive_options)
        return run_design(self, budget, progress, executor)

    def finish(self) -> ExploreResult:
        """Fit, then measure the best plain task-arithmetic point (all cᵢ = λ) as a reference."""
        result = self.result()
        lam, _ = result.best_task_arithmetic()
        if np.isfinite(lam):
            self.evaluate(np.full(len(self.tasks), lam), "reference")
            result.extra["references"] = self.references()
        return result

    def reference_points(self) -> list[np.ndarray]:
        """Base (c = 0) and each expert alone (c = eᵢ): the markers every view compares against."""
        t = len(self.tasks)
        return [np.zeros(t)] + [np.eye(t)[i] for i in range(t)]

    def measured(self, kinds: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """All points with every task measured: (coefficients (n, T), metrics (n, T), kinds)."""
        C, M, found, _ = self.measured_examples(kinds)
        return C, M, found

    def measured_examples(self, kinds: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
        """`measured` plus how each value was measured: {"examples": (n, T) examples scored,
        "n_total": (n, T) the tasks' set sizes (0 where unknown: a full-set measurement) and
        "noise_variance": (n, T) the known sampling variance of each value (0 on the full set) and
        "shared_variance": (T,) the variance of the level error the subsampled values share}."""
        by_point: dict[str, dict] = {}
        ids = {v: k for k, v in self.task_identities.items()}
        ids.update({v: k for k, vs in self.previous_identities.items() for v in vs if v not in ids})
        for row in self.store.evaluations(self.key):
            if row["task_identity"] not in ids:
                continue
            entry = by_point.setdefault(coefficient_key(row["coefficients"]), {"c": row["coefficients"], "v": {}, "kind": row["kind"]})
            entry["v"][ids[row["task_identity"]]] = row["value"]
        by_task: dict[str, list[dict]] = {}
        for row in self.store.samples(self.key):  # per-example scores: subsampled points, and anchors
            if row["task_identity"] == self.task_identities.get(row["task"]):
                by_task.setdefault(row["task"], []).append(row)
        level = np.zeros(len(self.tasks))  # per task, the level error subsampled values share
        for task, found in by_task.items():
            # a subsample's shared error corrected by points measured on longer prefixes (core.sampling)
            scores, n_total = [r["scores"] for r in found], max(r["n_total"] for r in found)
            values, variances = corrected_means(scores, n_total)
            level[self.tasks.index(task)] = shared_variance(scores, n_total)
            for row, value, variance in zip(found, values, variances):
                entry = by_point.setdefault(coefficient_key(row["coefficients"]),
                                            {"c": row["coefficients"], "v": {}, "kind": row["kind"]})
                if len(row["scores"]) >= row["n_total"]:
                    continue  # the full set's value is in the evaluations
                entry["v"][task] = float(value)
                entry.setdefault("n", {})[task] = (len(row["scores"]), row["n_total"], float(variance))
        base = coefficient_key(np.zeros(len(self.tasks)))
        if base not in by_point or len(by_point[base]["v"]) < len(self.tasks):  # measured by another method's run
            shared = self.shared_base()
            if shared:
                entry = by_point.setdefault(base, {"c": [0.0] * len(self.tasks), "v": {}, "kind": "design"})
                entry["v"] = {**shared, **entry["v"]}
        rows = [e for e in by_point.values() if len(e["v"]) == len(self.tasks) and (kinds is None or e["kind"] in kinds)]
        rows.sort(key=lambda e: coefficient_key(e["c"]))  # independent of which executor finished first
        t = len(self.tasks)
        if not rows:
            empty = np.empty((0, t))
            return empty, empty, [], {"examples": empty, "n_total": empty, "noise_variance": empty,
                                      "shared_variance": np.zeros(t)}
        C = np.array([r["c"] for r in rows], dtype=float)
        M = np.array([[r["v"][t] for t in self.tasks] for r in rows], dtype=float)
        how = np.array([[r.get("n", {}).get(t, (0, 0, 0.0)) for t in self.tasks] for r in rows], dtype=float)
        info = {"examples": how[..., 0].astype(int), "n_total": how[..., 1].astype(int), "noise_variance": how[..., 2],
                "shared_variance": level}
        return C, M, [r["kind"] for r in rows], info

    def tell(self, coefficients: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        """Store what the adaptive rounds predicted (mean, std (k, T), metric units) for points they are
        about to measure, so the fit can calibrate its std on them once measured (`told_front_scale`)."""
        ids = [self.task_identities[t] for t in self.tasks]
        self.store.put_told(self.key, [(ids[i], c, m[i], sd[i]) for c, m, sd in zip(coefficients, mean, std)
                                       for i in range(len(ids))])

    def told_front_scale(self, C: np.ndarray, M: np.ndarray, kinds, noise) -> np.ndarray:
        """Per task, `surrogate.front_scale` from the adaptive points among (C, M) and what they were told."""
        told = self.store.told(self.key)
        ids = [self.task_identities[t] for t in self.tasks]
        pairs = np.full(M.shape + (2,), np.nan)
        for r, (c, kind) in enumerate(zip(C, kinds)):
            if kind == "adaptive":
                key = coefficient_key(c)
                for i, identity in enumerate(ids):
                    pairs[r, i] = told.get((identity, key), (np.nan, np.nan))
        return front_scale(M, pairs[..., 0], pairs[..., 1], noise)

    def result(self, front_points: int = 1000) -> ExploreResult:
        """Fit surrogates to the stored design points and compute the front (no model needed)."""
        C, M, kinds, how = self.measured_examples(FIT_KINDS)
        inside = np.all((C >= self.bounds[:, 0] - 1e-12) & (C <= self.bounds[:, 1] + 1e-12), axis=1) if len(C) else []
        C, M = C[inside], M[inside]
        kinds = [k for k, keep in zip(kinds, inside) if keep]
        noise = how["noise_variance"][inside] if len(C) else None
        scale = self.told_front_scale(C, M, kinds, noise) if len(C) else None
        noise = noise if noise is not None and np.any(noise > 0) else None
        on_front = np.array([k == "adaptive" for k in kinds], dtype=bool) if len(kinds) else None
        need = n_quadratic_terms(len(self.tasks))
        if len(C) < need:
            raise SpecError(
                f"experiment {self.spec.name!r} has {len(C)} complete evaluations; a quadratic surrogate needs {need}: "
                f"run `merge-explorer run` first"
            )
        shared = how["shared_variance"] if noise is not None else None
        noise_option = {} if noise is None else {"noise_variance": np.round(noise, 12).tolist(),
                                                 "shared_variance": np.round(shared, 12).tolist()}
        fit_key = front_cache.front_digest(C, M, self.bounds, self.senses, self.spec.seed, front_points,
                                           on_front=None if on_front is None else on_front.tolist(),
                                           front_scale=None if scale is None else np.round(scale, 12).tolist(), **noise_option)
        front, surrogates = front_cache.load_fit(self.store, fit_key)
        if surrogates is None:  # the front search may leave state on the surrogates: restore both or neither
            front = None
        result = fit_result(self.tasks, C, M, self.bounds, [s > 0 for s in self.senses], self.spec.seed,
                            front_points=front_points, front=front, surrogates=surrogates, front_samples=on_front,
                            noise_variance=noise, shared_variance=shared, front_scale=scale)
        if front is None or surrogates is None:
            front_cache.save_fit(self.store, fit_key, result, self.key)
        result.extra["references"] = self.references()
        return result

    def references(self) -> dict[str, np.ndarray]:
        """Measured base, experts and best task arithmetic, where the store has them."""
        out = {}
        t = len(self.tasks)
        base = self.observed(np.zeros(t))
        if len(base) == t:
            out["base"] = np.array([base[k] for k in self.tasks])
        experts = [self.observed(np.eye(t)[i]).get(self.tasks[i]) for i in range(t)]
        if all(v is not None for v in experts):
            out["experts"] = np.array(experts)
        C, M, kinds = self.measured()
        equal = [i for i in range(len(C)) if np.ptp(C[i]) < 1e-12 and C[i, 0] > 0]
        if equal:
            best = max(equal, key=lambda i: float(np.mean(M[i] * self.senses)))
            out["task_arithmetic"] = M[best]
            out["task_arithmetic_lambda"] = np.array([C[best, 0]])
        return out
