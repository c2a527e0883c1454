"""Executors: where the evaluations of an experiment run.

Evaluations at different coefficient vectors are independent, so they can be spread over
processes, GPUs and machines. An executor has one method, `run(experiment, pending)`, which
measures every (coefficients, kind) pair in `pending`, stores the results in the experiment's
store, and yields once per finished point (the runner's progress bar counts the yields).

- `InProcessExecutor` (default): the experiment's own engine, one point after the other.
- `RayExecutor` (extra `merge-explorer[ray]`): one actor per GPU of a node or Ray cluster (or per
  CPU slot when there is no GPU), no more than the nodes' memory holds. Each actor builds the
  engine once (base, task vectors, model and the evaluators' cached data) and measures points sent
  to it; it returns the values and the driver alone writes them to the store (committed per task),
  so workers on other machines need no access to the store file. A point whose actor dies is sent
  again to a fresh actor, so nothing is lost. Values depend only on the coefficients, so the
  results are the same whichever executor ran.
"""
from __future__ import annotations

import os
import sys
from collections import deque
from typing import Iterator, Sequence

import numpy as np

from explorer.errors import ExplorerError, SpecError
from explorer.experiment.experiment import Experiment
from explorer.experiment.loop import InProcessExecutor, unique_points
from explorer.experiment.spec import resolve
from explorer.experiment.store import MEMORY
from explorer.merging.checkpoints import checkpoint_files

EXECUTORS = ("inprocess", "ray")


RUNTIME_BYTES = 512 << 20  # a worker process before any checkpoint: Python, torch, the evaluator's code


def float32_bytes(path) -> int:
    """Bytes a checkpoint takes once loaded and converted to float32 (safetensors: from its header).

    Other formats count their file size, as if they already were float32.
    """
    import json
    import struct

    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
    total = 0
    for f in checkpoint_files(path):
        try:
            if f.suffix != ".safetensors":
                raise ValueError("not safetensors")
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(min(n, 100 << 20)))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, stop = info["data_offsets"]
                nbytes = stop - begin
                per = sizes.get(info["dtype"])
                total += nbytes * 4 // per if per else nbytes
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            total += f.stat().st_size
    return total


def worker_memory_bytes(experiment) -> int:
    """What one worker holds at its peak: every checkpoint in float32 ((T+1) of them) plus the T
    task vectors (float32, the size of the base), on top of the runtime."""
    spec, spec_dir = experiment.spec, experiment.spec_dir
    base = float32_bytes(resolve(spec_dir, spec.model.base))
    experts = sum(float32_bytes(resolve(spec_dir, spec.tasks[t].checkpoint)) for t in experiment.tasks)
    return RUNTIME_BYTES + base + experts + len(experiment.tasks) * base


def plan_workers(requested: int | None, slots: int, per_worker: int, node_memory: Sequence[float]) -> tuple[int, str | None]:
    """(workers to start, a one-line message or None): the requested count (default: one per slot),
    capped by how many workers of `per_worker` bytes the nodes' memory holds."""
    fits = sum(int(m // per_worker) for m in node_memory) if node_memory else None
    gib = per_worker / 2**30
    want = requested if requested else slots
    if fits is None or want <= fits:
        return max(1, want), None
    if fits < 1:
        return 1, (f"each worker needs about {gib:.1f} GiB (checkpoints in float32 x (T+1) + task vectors) and no "
                   f"node has that much free for Ray ({max(node_memory) / 2**30:.1f} GiB at most): starting 1 worker anyway")
    if requested:
        return fits, (f"asked for {requested} workers, but each needs about {gib:.1f} GiB (checkpoints in float32 "
                      f"x (T+1) + task vectors) and the cluster's memory fits {fits}: starting {fits}")
    return fits, None


class _Worker:
    """A Ray actor's body: one Experiment (and so one engine) per process, built lazily, once.

    It never writes the store (on a multi-node cluster the driver's file may not even be there):
    it keys its experiment in a private in-memory store, measures, and returns the values with the
    experiment key and task identities it computed, which the driver checks against its own before
    storing anything.
    """

    def __init__(self, spec_path: str, device: str | None, trust_pickle: bool, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        os.environ["MERGE_EXPLORER_WORKER"] = "1"
        self.spec_path, self.device, self.trust_pickle = spec_path, device, trust_pickle
        self._experiment = None

    def _exp(self):
        if self._experiment is None:
            self._experiment = Experiment.from_file(self.spec_path, store_path=MEMORY, device=self.device,
                                                    trust_pickle=self.trust_pickle)
        return self._experiment

    def measure(self, coefficients: list[float], tasks: list[str]) -> tuple[str, dict, list[tuple[str, float, float]]]:
        """(experiment key, task identities, [(task, value, seconds)]) for `tasks` at `coefficients`."""
        exp = self._exp()
        c = np.asarray(coefficients, dtype=float)
        values = list(exp.engine.measure(c, tasks))
        return exp.key, dict(exp.task_identities), values


class RayExecutor:
    """Spread evaluations over a Ray cluster (or a local Ray instance).

    address: Ray address (None: connect to a running local cluster or start one; "auto" likewise).
    num_workers: actors to start (default: one per GPU, else one per `cpus_per_worker` CPUs, at most
        as many as the nodes' memory holds; asking for more than fits starts what fits, with a message).
    gpus_per_worker: default 1 when the run's device is cuda, else 0.
    max_retries: how often one point may be re-sent after its actor died.
    init_kwargs: passed to `ray.init` when this executor starts Ray.

    Workers run on the experiment's device kind (so results are keyed for what measured them: on a
    head node without a GPU, pass --device cuda to use the cluster's GPUs), load pickled checkpoints
    only when the experiment trusts them, and only the driver writes the store.
    """

    def __init__(self, address: str | None = None, num_workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: float = 1.0, max_retries: int = 3, threads_per_worker: int | None = 1,
                 init_kwargs: dict | None = None):
        self.address, self.num_workers, self.gpus_per_worker = address, num_workers, gpus_per_worker
        self.cpus_per_worker, self.max_retries = cpus_per_worker, max_retries
        self.threads_per_worker, self.init_kwargs = threads_per_worker, dict(init_kwargs or {})
        self.restarts = 0
        self.message: str | None = None

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

    def _actor_options(self, ray, experiment) -> tuple[int, dict]:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        cuda = experiment.device_kind == "cuda"
        if cuda and not gpus:
            raise SpecError("the run's device is cuda but the Ray cluster has no GPU; pass --device cpu")
        per_gpu = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if cuda else 0.0)
        slots = max(1, int(gpus // per_gpu)) if per_gpu else max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))
        per_worker = worker_memory_bytes(experiment)
        node_memory = [float(n["Resources"].get("memory", 0)) for n in ray.nodes() if n.get("Alive")]
        n, self.message = plan_workers(self.num_workers, slots, per_worker, [m for m in node_memory if m > 0])
        if self.message:
            print(f"merge-explorer: {self.message}", file=sys.stderr)
        options = {"num_cpus": self.cpus_per_worker, "num_gpus": per_gpu, "max_restarts": 0}
        if any(m >= per_worker for m in node_memory):
            options["memory"] = per_worker  # Ray places no more workers on a node than its memory holds
        return n, options

    def run(self, experiment, pending: Sequence[tuple[np.ndarray, str]]) -> Iterator[np.ndarray]:
        if experiment.spec_path is None:
            raise SpecError("the ray executor needs an experiment loaded from a spec file (Experiment.from_file)")
        pending = unique_points(pending)  # a point listed twice (design corner and reference) runs once, as its first kind
        if not pending:
            return
        ray = self._ray()
        n_workers, options = self._actor_options(ray, experiment)
        n_workers = min(n_workers, len(pending))
        remote_cls = ray.remote(_Worker)
        device = experiment.device or (experiment.spec.device if experiment.spec.device != "auto" else experiment.device_kind)
        args = (str(experiment.spec_path), device, bool(experiment.spec.model.trust_pickle), self.threads_per_worker)

        def spawn():
            return remote_cls.options(**options).remote(*args)

        def missing(c):
            have = experiment.stored(c)
            return [t for t in experiment.tasks if t not in have]

        queue = deque(range(len(pending)))
        attempts = [0] * len(pending)
        idle = [spawn() for _ in range(n_workers)]
        running: dict = {}  # object ref -> (point index, actor)
        try:
            while queue or running:
                while queue and idle:
                    i = queue.popleft()
                    c, kind = pending[i]
                    tasks = missing(c)
                    if not tasks:  # stored meanwhile (another run on the same store)
                        yield c
                        continue
                    actor = idle.pop()
                    running[actor.measure.remote(c.tolist(), tasks)] = (i, actor)
                if not running:
                    continue
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                i, actor = running.pop(ref)
                c, kind = pending[i]
                try:
                    key, identities, values = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):  # ActorDiedError included
                    attempts[i] += 1
                    if attempts[i] > self.max_retries:
                        raise ExplorerError(f"evaluation at c={np.round(c, 4).tolist()} lost its worker {attempts[i]} times; giving up")
                    self.restarts += 1
                    queue.appendleft(i)  # re-run this point first, on a fresh actor
                    idle.append(spawn())
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)  # the worker's own exception, without Ray's traceback text
                    if isinstance(cause, ExplorerError):
                        raise cause from None
                    raise
                if key != experiment.key or any(identities.get(t) != experiment.task_identities[t] for t, _, _ in values):
                    raise ExplorerError(
                        "a Ray worker sees other checkpoints, evaluator code, data files or device than the driver "
                        f"(experiment {key[:12]} vs {experiment.key[:12]}); give every node the same files"
                    )
                for task, value, seconds in values:
                    experiment.store.put(experiment.key, experiment.task_identities[task], task, c, value, seconds, kind)
                idle.append(actor)
                yield c
        finally:
            for actor in idle + [a for _, a in running.values()]:  # killing an actor ends its running task
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - an actor already gone is fine
                    pass


def make_executor(name: str | None = None, **options):
    """'inprocess' (default) or 'ray' (options are RayExecutor's)."""
    if name in (None, "inprocess", "local"):
        return InProcessExecutor()
    if name == "ray":
        return RayExecutor(**options)
    raise SpecError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
