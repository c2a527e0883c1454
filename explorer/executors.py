"""Executors: where the evaluations of an experiment run.

Evaluations at different coefficient vectors are independent, so they can be spread over
processes, GPUs and machines. An executor has one method, `run(experiment, pending)`, which
measures every (coefficients, kind) pair in `pending`, stores the results in the experiment's
store, and yields once per finished point (the runner's progress bar counts the yields).

- `InProcessExecutor` (default): the experiment's own engine, one point after the other.
- `RayExecutor` (extra `merge-explorer[ray]`): one actor per GPU of a node or Ray cluster (or per
  CPU slot when there is no GPU). Each actor builds the engine once (base, task vectors, model and
  the evaluators' cached data) and measures points sent to it. Actors write each result into the
  same store (SQLite, committed per task) when they can reach it, and the driver writes the
  returned values too: the store's key (experiment, task, coefficients) makes that idempotent, so
  nothing is duplicated. A point whose actor dies is sent again to a fresh actor, so nothing is
  lost. Values depend only on the coefficients, so the results are the same whichever executor ran.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import ExplorerError, SpecError

EXECUTORS = ("inprocess", "ray")


class InProcessExecutor:
    """Measure points one after the other with the experiment's own engine."""

    def run(self, experiment, pending: Sequence[tuple[np.ndarray, str]]) -> Iterator[np.ndarray]:
        for c, kind in pending:
            experiment.evaluate(c, kind)
            yield np.asarray(c, dtype=float)


class _Worker:
    """A Ray actor's body: one Experiment (and so one engine) per process, built lazily, once."""

    def __init__(self, spec_path: str, store_path: str, device: str | None, write_store: bool, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        os.environ["MERGE_EXPLORER_WORKER"] = "1"
        self.spec_path, self.store_path, self.device, self.write_store = spec_path, store_path, device, write_store
        self._experiment = None

    def _exp(self):
        if self._experiment is None:
            from .runner import Experiment

            store = self.store_path if self.write_store else os.path.join(os.getcwd(), f".worker-{os.getpid()}.sqlite")
            self._experiment = Experiment.from_file(self.spec_path, store_path=store, device=self.device)
        return self._experiment

    def ping(self) -> int:
        return os.getpid()

    def measure(self, coefficients: list[float], kind: str) -> list[tuple[str, float, float]]:
        exp = self._exp()
        c = np.asarray(coefficients, dtype=float)
        have = exp.stored(c)
        out = [(t, v, 0.0) for t, v in have.items()]
        missing = [t for t in exp.tasks if t not in have]
        for task, value, seconds in exp.engine.measure(c, missing):
            if self.write_store:
                exp.store.put(exp.key, exp.task_identities[task], task, c, value, seconds, kind)
            out.append((task, value, seconds))
        return out


class RayExecutor:
    """Spread evaluations over a Ray cluster (or a local Ray instance).

    address: Ray address (None: connect to a running local cluster or start one; "auto" likewise).
    num_workers: actors to start (default: one per GPU, else one per `cpus_per_worker` CPUs).
    gpus_per_worker: default 1 when the cluster has GPUs, else 0.
    write_store: actors write results into the experiment's store file themselves (needs the same
        filesystem as the driver; the driver writes them too in any case).
    max_retries: how often one point may be re-sent after its actor died.
    init_kwargs: passed to `ray.init` when this executor starts Ray.
    """

    def __init__(self, address: str | None = None, num_workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: float = 1.0, write_store: bool = True, max_retries: int = 3,
                 threads_per_worker: int | None = 1, init_kwargs: dict | None = None):
        self.address, self.num_workers, self.gpus_per_worker = address, num_workers, gpus_per_worker
        self.cpus_per_worker, self.write_store, self.max_retries = cpus_per_worker, write_store, max_retries
        self.threads_per_worker, self.init_kwargs = threads_per_worker, dict(init_kwargs or {})
        self.restarts = 0

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise SpecError("the ray executor needs Ray: pip install 'merge-explorer[ray]'") from None
        if not ray.is_initialized():
            kwargs = {"address": self.address, "include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(**{k: v for k, v in kwargs.items() if v is not None})
        return ray

    def _actor_options(self, ray) -> tuple[int, dict]:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        per_gpu = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if self.num_workers:
            n = self.num_workers
        elif per_gpu:
            n = max(1, int(gpus // per_gpu))
        else:
            n = max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))
        return n, {"num_cpus": self.cpus_per_worker, "num_gpus": per_gpu, "max_restarts": 0}

    def run(self, experiment, pending: Sequence[tuple[np.ndarray, str]]) -> Iterator[np.ndarray]:
        if experiment.spec_path is None:
            raise SpecError("the ray executor needs an experiment loaded from a spec file (Experiment.from_file)")
        pending = unique_points(pending)  # a point listed twice (design corner and reference) runs once, as its first kind
        if not pending:
            return
        ray = self._ray()
        n_workers, options = self._actor_options(ray)
        n_workers = min(n_workers, len(pending))
        remote_cls = ray.remote(_Worker)
        device = experiment.device if experiment.device else ("cuda" if options["num_gpus"] else "cpu")
        args = (str(experiment.spec_path), str(experiment.store.path), device, self.write_store, self.threads_per_worker)

        def spawn():
            return remote_cls.options(**options).remote(*args)

        queue = deque(range(len(pending)))
        attempts = [0] * len(pending)
        idle = [spawn() for _ in range(n_workers)]
        running: dict = {}  # object ref -> (point index, actor)
        try:
            while queue or running:
                while queue and idle:
                    i = queue.popleft()
                    actor = idle.pop()
                    c, kind = pending[i]
                    running[actor.measure.remote(c.tolist(), kind)] = (i, actor)
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                i, actor = running.pop(ref)
                c, kind = pending[i]
                try:
                    values = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):  # ActorDiedError included
                    attempts[i] += 1
                    if attempts[i] > self.max_retries:
                        raise ExplorerError(f"evaluation at c={np.round(c, 4).tolist()} lost its worker {attempts[i]} times; giving up")
                    self.restarts += 1
                    queue.appendleft(i)  # re-run this point first, on a fresh actor
                    idle.append(spawn())
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
                    if isinstance(cause, ExplorerError):
                        raise cause from None
                    raise
                for task, value, seconds in values:
                    experiment.store.put(experiment.key, experiment.task_identities[task], task, c, value, seconds, kind)
                idle.append(actor)
                yield c
        finally:
            for ref, (_, actor) in running.items():
                ray.cancel(ref, force=True)
            for actor in idle + [a for _, a in running.values()]:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - an actor already gone is fine
                    pass


def unique_points(points: Iterable[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
    """Points with equal store keys collapsed to the first (whose kind is the one stored)."""
    from .store import coefficient_key

    seen, out = set(), []
    for c, kind in points:
        key = coefficient_key(c)
        if key not in seen:
            seen.add(key)
            out.append((np.asarray(c, dtype=float), kind))
    return out


def make_executor(name: str | None = None, **options):
    """'inprocess' (default) or 'ray' (options are RayExecutor's)."""
    if name in (None, "inprocess", "local"):
        return InProcessExecutor()
    if name == "ray":
        return RayExecutor(**options)
    raise SpecError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def evaluate_points(experiment, points: Iterable[tuple[np.ndarray, str]], executor=None, bar=None) -> None:
    """Measure the points the store lacks through `executor` (default in-process), updating `bar`."""
    pending = [(c, k) for c, k in unique_points(points) if len(experiment.stored(c)) < len(experiment.tasks)]
    executor = executor or InProcessExecutor()
    for _ in executor.run(experiment, pending):
        if bar:
            bar.update(1)
