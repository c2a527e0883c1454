"""Running a spec: checkpoints -> task vectors -> in-place merges -> evaluations through the store.

Everything heavy (checkpoints, task vectors, the model, the evaluators' cached data) is built
once per `Experiment`, lazily: reading results back from the store (pick, export's coefficients,
the app's views) needs no model at all.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .checkpoints import content_hash, file_digest
from .design import normalize_bounds, sample_design
from .errors import EvaluationError, ExplorerError, SpecError
from .explore import ExploreResult, fit_result
from .families import lookup as lookup_family
from .models import device_kind, resolve_callable
from .spec import Spec, load_spec, resolve
from .store import Store, coefficient_key

DEFAULT_STORE = Path("cache") / "store.sqlite"
FIT_KINDS = ("design", "adaptive")
#: Points measured to check a choice (verify, and each step of a polish): shown, never fitted.
CHECK_KINDS = ("verify", "polish")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def param_files(params, spec_dir: Path, cache=None, where: str = "") -> dict[str, str]:
    """{param path: content digest} of every param value that names an existing file.

    Strings anywhere in the params (nested lists and mappings included) are tried as paths
    relative to the spec's directory; class-name lists, templates and data lists are files whose
    contents a metric depends on, so their bytes belong to the task's identity.
    """
    out: dict[str, str] = {}
    if isinstance(params, dict):
        for k, v in params.items():
            out.update(param_files(v, spec_dir, cache, f"{where}.{k}" if where else str(k)))
    elif isinstance(params, (list, tuple)):
        for i, v in enumerate(params):
            out.update(param_files(v, spec_dir, cache, f"{where}[{i}]"))
    elif isinstance(params, str) and params.strip() and len(params) < 4096 and "\0" not in params:
        try:
            path = Path(params).expanduser()
            path = path if path.is_absolute() else spec_dir / path
            is_file = path.is_file()
        except (OSError, ValueError, RuntimeError):  # not a path (too long, unknown ~user, ...)
            is_file = False
        if is_file:
            out[where] = file_digest(path.resolve(), cache)
    return out


def evaluator_version(fn, path: str) -> str:
    """The evaluator's `version` attribute, else the SHA-256 of its source: the module the spec names
    and the module that defines the function (a re-export changes when either does)."""
    version = getattr(fn, "version", None)
    if version is not None:
        return f"version:{version}"
    names = dict.fromkeys([path.split(":", 1)[0], getattr(fn, "__module__", None) or ""])
    h = hashlib.sha256()
    for name in names:
        module = sys.modules.get(name)
        source = getattr(module, "__file__", None)
        try:
            h.update(Path(source).read_bytes() if source else f"builtin:{name}".encode())
        except OSError:
            h.update(f"module:{name}:{getattr(module, '__version__', '?')}".encode())
    return "source:" + h.hexdigest()


def evaluator_precision(fn, device: str, what: str) -> str:
    """The number format the evaluator computes in on `device` (its `precision` attribute: a string,
    or a function of the device kind), float32 when it declares none (the engine merges in float32)."""
    precision = getattr(fn, "precision", None)
    if callable(precision):
        try:
            precision = precision(device)
        except Exception as exc:  # noqa: BLE001 - the user's hook
            raise SpecError(f"{what}: its precision({device!r}) failed ({type(exc).__name__}: {exc})") from None
    return str(precision) if precision is not None else "float32"


class Engine:
    """The loaded model side of an experiment: base, task vectors, model, merger, evaluators."""

    def __init__(self, experiment: "Experiment"):
        spec, spec_dir = experiment.spec, experiment.spec_dir
        # the family's module (explorer/families/) loads the model, the task vectors and the merger
        lookup_family(spec.model.family).load_engine(self, experiment)
        self.evaluators = {t: self._evaluator(spec, spec_dir, t) for t in experiment.tasks}

    @staticmethod
    def _evaluator(spec: Spec, spec_dir: Path, task: str) -> Callable:
        ts = spec.tasks[task]
        fn = resolve_callable(ts.evaluator, f"tasks.{task}.evaluator")
        kwargs = dict(ts.params)
        try:
            if "spec_dir" in inspect.signature(fn).parameters:
                kwargs["spec_dir"] = str(spec_dir)
        except (TypeError, ValueError):
            pass
        return lambda model: fn(model, **kwargs)

    def measure(self, coefficients: np.ndarray, tasks: Iterable[str]) -> Iterator[tuple[str, float, float]]:
        """Merge at `coefficients` (once) and yield (task, metric, seconds) for each task."""
        self.merger.apply(coefficients)
        for task in tasks:
            start = time.perf_counter()
            try:
                value = float(self.evaluators[task](self.model))
            except EvaluationError:
                raise
            except (ValueError, RuntimeError, OSError, TypeError) as exc:
                raise EvaluationError(f"evaluator of task {task!r} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
            if not np.isfinite(value):
                raise EvaluationError(
                    f"evaluator of task {task!r} returned {value} at c={np.round(coefficients, 4).tolist()}; nothing was stored"
                )
            yield task, value, time.perf_counter() - start

    def merged_state_dict(self, coefficients) -> dict:
        return self.merger.merged_state_dict(coefficients, self.base)


class Experiment:
    """A validated spec bound to a store: knows its content key and which evaluations exist."""

    def __init__(self, spec: Spec, spec_dir: Path, store: Store | None = None, device: str | None = None,
                 spec_path: Path | None = None):
        self.spec, self.spec_dir, self.device, self.spec_path = spec, Path(spec_dir), device, spec_path
        self.tasks = list(spec.tasks)
        self.bounds = normalize_bounds(spec.bounds, len(self.tasks))
        self._check_paths()
        self.store = store or Store(resolve(self.spec_dir, spec.store) if spec.store else Path.cwd() / DEFAULT_STORE)
        self.senses = np.array([1.0 if spec.tasks[t].maximise() else -1.0 for t in self.tasks])
        self.device_kind = device_kind(device or spec.device)
        cache = self.store.hash_cache()
        self.checkpoint_hashes = {
            "base": content_hash(resolve(self.spec_dir, spec.model.base), cache),
            **{t: content_hash(resolve(self.spec_dir, spec.tasks[t].checkpoint), cache) for t in self.tasks},
        }
        self.key = _digest({
            "family": spec.model.family, "architecture": spec.model.architecture, "prefix": spec.model.merge_prefix,
            "checkpoints": [self.checkpoint_hashes["base"]] + [self.checkpoint_hashes[t] for t in self.tasks],
            "merge": self.merge_parameters(),
            **self._family_identity(),
        })
        self.task_identities = {t: self._task_identity(t, cache) for t in self.tasks}
        # Written with the first stored evaluation: opening (or failing) leaves the store untouched.
        self.store.register_experiment(self.key, spec.name, {
            "tasks": self.tasks, "spec_path": str(spec_path) if spec_path else None,
            "bounds": self.bounds.tolist(), "merge": self.merge_parameters(), "senses": self.senses.tolist(),
            "metrics": {t: spec.tasks[t].metric for t in self.tasks},
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
                  trust_pickle: bool = False) -> "Experiment":
        """`trust_pickle` overrides the spec's `model.trust_pickle` (the CLI's --trust-pickle)."""
        spec, spec_dir = load_spec(path)
        if trust_pickle:
            spec = spec.model_copy(update={"model": spec.model.model_copy(update={"trust_pickle": True})})
        store = Store(store_path) if store_path else None
        return cls(spec, spec_dir, store, device, Path(path).resolve())

    def _check_paths(self) -> None:
        from .checkpoints import checkpoint_files

        checkpoint_files(resolve(self.spec_dir, self.spec.model.base))
        for t in self.tasks:
            checkpoint_files(resolve(self.spec_dir, self.spec.tasks[t].checkpoint))

    def merge_parameters(self) -> dict:
        m = self.spec.merge
        if m.method == "task_arithmetic":
            return {"method": m.method}
        if m.method == "ties":
            return {"method": m.method, "density": m.density}
        return {"method": m.method, "density": m.density, "seed": m.seed}

    def _task_identity(self, task: str, cache=None) -> str:
        """What a task's metric depends on besides the merged weights.

        The evaluator and its version (an explicit `version` attribute, else a hash of its module's
        source), its params and the contents of every file they name, its data fingerprint, the
        device kind and the precision it computes in. Change any of these and the task's stored
        results are no longer served; other tasks keep theirs.
        """
        ts = self.spec.tasks[task]
        fn = resolve_callable(ts.evaluator, f"tasks.{task}.evaluator")
        fingerprint = None
        if hasattr(fn, "fingerprint"):
            kwargs = dict(ts.params)
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
        return _digest({
            "evaluator": ts.evaluator, "params": ts.params, "metric": ts.metric, "fingerprint": fingerprint,
            "files": param_files(ts.params, self.spec_dir, cache),
            "version": evaluator_version(fn, ts.evaluator),
            "device": self.device_kind,
            "precision": evaluator_precision(fn, self.device_kind, f"tasks.{task}.evaluator"),
        })

    # --- model side -------------------------------------------------------------------------
    @cached_property
    def engine(self) -> Engine:
        return Engine(self)

    # --- evaluations ------------------------------------------------------------------------
    def stored(self, coefficients) -> dict[str, float]:
        """The metrics already in the store at `coefficients` (possibly for only some tasks)."""
        out = {}
        for t in self.tasks:
            v = self.store.get(self.key, self.task_identities[t], coefficients)
            if v is not None:
                out[t] = v
        return out

    def evaluate(self, coefficients, kind: str = "design") -> np.ndarray:
        """Metrics (T,) at `coefficients`, measuring and storing only what the store lacks."""
        c = np.asarray(coefficients, dtype=float)
        have = self.stored(c)
        missing = [t for t in self.tasks if t not in have]
        if missing:
            for task, value, seconds in self.engine.measure(c, missing):
                self.store.put(self.key, self.task_identities[task], task, c, value, seconds, kind)
                have[task] = value
        return np.array([have[t] for t in self.tasks])

    def design(self, budget: int | None = None) -> np.ndarray:
        return sample_design(self.bounds, len(self.tasks), budget if budget is not None else self.spec.budget, self.spec.seed)

    def progress(self, budget: int | None = None) -> tuple[int, int]:
        """(points measured, points in all) of the run `run(budget)` does, so that a progress bar and
        a "continue" button follow the same design as the run (adaptive from 4 tasks on)."""
        from .explore import default_design

        C, _, kinds = self.measured()
        have = {coefficient_key(c) for c in C}
        references = self.reference_points()
        if default_design(len(self.tasks)) != "adaptive":
            points = list(self.design(budget)) + references
            return sum(coefficient_key(c) in have for c in points), len(points)
        from .adaptive import default_budget, default_initial, inside_box, loop_budget

        t = len(self.tasks)
        budget = budget if budget is not None else (self.spec.budget or default_budget(t))
        loop = loop_budget(budget, min(default_initial(t), budget))
        total = loop + len(references) + 1  # + the closing task-arithmetic reference (finish)
        # a run that reached its closing point is complete, also when it stopped early (converged)
        if any(k == "reference" and np.ptp(c) < 1e-12 and c[0] > 0 for c, k in zip(C, kinds)):
            return total, total
        fitted = int(np.sum(inside_box(C, self.bounds) & np.isin(kinds, FIT_KINDS))) if len(C) else 0
        return min(fitted, loop) + sum(coefficient_key(c) in have for c in references), total

    def run(self, budget: int | None = None, progress: bool = True, executor=None, adaptive: bool | None = None,
            **adaptive_options) -> ExploreResult:
        """Evaluate the design (resuming from the store), the reference points, then fit.

        adaptive: a smaller design, then rounds of points near the front (see explorer.adaptive);
        None: adaptive from `explorer.explore.ADAPTIVE_FROM_TASKS` tasks on.
        """
        from .explore import default_design

        if adaptive is None:
            adaptive = default_design(len(self.tasks)) == "adaptive"
        if adaptive:
            from .adaptive import run_adaptive

            return run_adaptive(self, budget, progress, executor, **adaptive_options)
        design = self.design(budget)
        references = self.reference_points()
        points = [(c, "design") for c in design] + [(c, "reference") for c in references]
        pending = [(c, k) for c, k in points if len(self.stored(c)) < len(self.tasks)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(points), initial=len(points) - len(pending), desc="evaluations", unit="pt",
                       dynamic_ncols=True)
        try:
            if executor is None:
                for c, kind in pending:
                    self.evaluate(c, kind)
                    if bar:
                        bar.update(1)
            else:
                for _ in executor.run(self, pending):
                    if bar:
                        bar.update(1)
        finally:
            if bar:
                bar.close()
        return self.finish()

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
        by_point: dict[str, dict] = {}
        ids = {v: k for k, v in self.task_identities.items()}
        for row in self.store.evaluations(self.key):
            if row["task_identity"] not in ids:
                continue
            entry = by_point.setdefault(coefficient_key(row["coefficients"]), {"c": row["coefficients"], "v": {}, "kind": row["kind"]})
            entry["v"][ids[row["task_identity"]]] = row["value"]
        rows = [e for e in by_point.values() if len(e["v"]) == len(self.tasks) and (kinds is None or e["kind"] in kinds)]
        rows.sort(key=lambda e: coefficient_key(e["c"]))  # independent of which executor finished first
        if not rows:
            return np.empty((0, len(self.tasks))), np.empty((0, len(self.tasks))), []
        C = np.array([r["c"] for r in rows], dtype=float)
        M = np.array([[r["v"][t] for t in self.tasks] for r in rows], dtype=float)
        return C, M, [r["kind"] for r in rows]

    def result(self, front_points: int = 1000) -> ExploreResult:
        """Fit surrogates to the stored design points and compute the front (no model needed)."""
        C, M, kinds = self.measured(FIT_KINDS)
        inside = np.all((C >= self.bounds[:, 0] - 1e-12) & (C <= self.bounds[:, 1] + 1e-12), axis=1) if len(C) else []
        C, M = C[inside], M[inside]
        on_front = np.array([k == "adaptive" for k in kinds], dtype=bool)[inside] if len(kinds) else None
        from .design import n_quadratic_terms

        need = n_quadratic_terms(len(self.tasks))
        if len(C) < need:
            raise SpecError(
                f"experiment {self.spec.name!r} has {len(C)} complete evaluations; a quadratic surrogate needs {need}: "
                f"run `merge-explorer run` first"
            )
        from . import front_cache  # the front is cached in the store by content: reading results back refits none

        digest = front_cache.front_digest(C, M, self.bounds, self.senses, self.spec.seed, front_points,
                                          on_front=None if on_front is None else on_front.tolist())
        front, surrogates = front_cache.load_fit(self.store, digest)
        if surrogates is None:  # the front search may leave state on the surrogates: restore both or neither
            front = None
        result = fit_result(self.tasks, C, M, self.bounds, [s > 0 for s in self.senses], self.spec.seed,
                            front_points=front_points, front=front, surrogates=surrogates, front_samples=on_front)
        if front is None or surrogates is None:
            front_cache.save_fit(self.store, digest, result, self.key)
        result.extra["references"] = self.references()
        return result

    def references(self) -> dict[str, np.ndarray]:
        """Measured base, experts and best task arithmetic, where the store has them."""
        out = {}
        t = len(self.tasks)
        base = self.stored(np.zeros(t))
        if len(base) == t:
            out["base"] = np.array([base[k] for k in self.tasks])
        experts = [self.stored(np.eye(t)[i]).get(self.tasks[i]) for i in range(t)]
        if all(v is not None for v in experts):
            out["experts"] = np.array(experts)
        C, M, kinds = self.measured()
        equal = [i for i in range(len(C)) if np.ptp(C[i]) < 1e-12 and C[i, 0] > 0]
        if equal:
            best = max(equal, key=lambda i: float(np.mean(M[i] * self.senses)))
            out["task_arithmetic"] = M[best]
            out["task_arithmetic_lambda"] = np.array([C[best, 0]])
        return out
