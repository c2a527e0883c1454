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
  so workers on other machines need no access to the store file (they do read the spec, the
  checkpoints, the evaluators' code and data at the same paths as the driver; a worker that sees
  other files is refused by the experiment key). Actors are SPREAD over the alive nodes. A point
  whose actor, or whole node, dies is sent again first, to the actors left or a fresh one where
  the cluster still has room, so only points in flight are re-run. Waits are bounded: a lost node
  is noticed by Ray or by a poll of `ray.nodes()`, a head that stops answering ends the run after
  `cluster_timeout_s` with what is stored. Values depend only on the coefficients, so the results
  are the same whichever executor ran, and whichever node measured what.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter, deque
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

    def measure(self, coefficients: list[float], tasks: list[str], examples: dict | None = None) -> tuple:
        """(experiment key, task identities, [(task, value, seconds)], [(task, per-example scores, seconds)]):
        `tasks` measured on their full sets and the examples `examples[task]` (indices) scored, at `coefficients`."""
        exp = self._exp()
        c = np.asarray(coefficients, dtype=float)
        values = list(exp.engine.measure(c, tasks)) if tasks else []
        scored = list(exp.engine.score_examples(c, examples, merged=bool(tasks))) if examples else []
        return exp.key, dict(exp.task_identities), values, scored

    def node(self) -> str:
        """The Ray node this worker runs on (answered once it is placed and started)."""
        import ray

        return ray.get_runtime_context().get_node_id()


class RayExecutor:
    """Spread evaluations over a Ray cluster (or a local Ray instance).

    address: Ray address (None: connect to a running local cluster or start one; "auto" likewise).
    num_workers: actors to start (default: one per GPU, else one per `cpus_per_worker` CPUs, at most
        as many as the nodes' memory holds; asking for more than fits starts what fits, with a message).
    gpus_per_worker: default 1 when the run's device is cuda, else 0.
    max_retries: how often one point may be re-sent after its actor died.
    init_kwargs: passed to `ray.init` when this executor starts Ray.
    poll_s: how often a run waiting on results checks for dead nodes and the head (seconds).
    cluster_timeout_s: how long a head that does not answer, or a run where no worker can start,
        is waited for before the run stops with an ExplorerError (seconds).

    After a run, `history` holds (coefficients, node id, "measured" | "lost", time.monotonic()) per
    point sent: which node measured what, and when a point was found lost.

    Workers run on the experiment's device kind (so results are keyed for what measured them: on a
    head node without a GPU, pass --device cuda to use the cluster's GPUs), load pickled checkpoints
    only when the experiment trusts them, and only the driver writes the store.
    """

    def __init__(self, address: str | None = None, num_workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: float = 1.0, max_retries: int = 3, threads_per_worker: int | None = 1,
                 init_kwargs: dict | None = None, poll_s: float = 2.0, cluster_timeout_s: float = 60.0):
        self.address, self.num_workers, self.gpus_per_worker = address, num_workers, gpus_per_worker
        self.cpus_per_worker, self.max_retries = cpus_per_worker, max_retries
        self.threads_per_worker, self.init_kwargs = threads_per_worker, dict(init_kwargs or {})
        if not cluster_timeout_s > 0 or not poll_s > 0:
            raise SpecError(f"--ray-timeout must be a positive number of seconds, got {cluster_timeout_s}")
        self.poll_s, self.cluster_timeout_s = poll_s, cluster_timeout_s
        self.restarts = 0
        self.message: str | None = None
        self.history: list[tuple[tuple, str | None, str, float]] = []  # (coefficients, node id, "measured" | "lost", time.monotonic())

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise SpecError("the ray executor needs Ray: pip install 'merge-explorer[ray]'") from None
        if not ray.is_initialized():
            kwargs = {"address": self.address, "include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            # Ray ends a driver whose head is gone after this long; our own watch must speak first
            os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(int(self.cluster_timeout_s * 2 + 60)))
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
        # SPREAD: workers go round the alive nodes (not all on the first one with room)
        options = {"num_cpus": self.cpus_per_worker, "num_gpus": per_gpu, "max_restarts": 0, "scheduling_strategy": "SPREAD"}
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
        lost_errors = _lost_errors(ray)
        watch = ClusterWatch(ray, self.poll_s, self.cluster_timeout_s)

        plans: dict[int, tuple] = {}  # point index -> what its worker was sent (experiment.plan)

        queue = deque(range(len(pending)))
        attempts = [0] * len(pending)
        starting: dict = {}  # readiness ref -> actor not yet placed
        idle: list = []
        running: dict = {}  # object ref -> (point index, actor)
        node_of: dict = {}  # actor -> node id
        failed_starts = 0

        def spawn():
            actor = remote_cls.options(**options).remote(*args)
            starting[actor.node.remote()] = actor

        def lose(i, actor, why):
            """The point's worker (or its node) is gone: re-send the point first, to a fresh actor."""
            c = pending[i][0]
            self.history.append((tuple(c.tolist()), node_of.get(actor), "lost", time.monotonic()))
            attempts[i] += 1
            if attempts[i] > self.max_retries:
                raise ExplorerError(f"evaluation at c={np.round(c, 4).tolist()} lost its Ray worker {attempts[i]} times "
                                    f"(last: {why}); giving up")
            self.restarts += 1
            queue.appendleft(i)
            if watch.head_answers():  # with the head gone, Ray calls would block: the watch ends the run instead
                _kill(ray, actor)
                spawn()  # placed wherever the cluster still has room; never waited for if it has none

        for _ in range(n_workers):
            spawn()
        try:
            while queue or running:
                while queue and idle:
                    i = queue.popleft()
                    c, kind = pending[i]
                    tasks, jobs = plans[i] = experiment.plan(c, kind)
                    if not (tasks or jobs):  # stored meanwhile (another run on the same store)
                        yield c
                        continue
                    actor = idle.pop()
                    examples = {t: idx for t, (_, idx) in jobs.items()}
                    running[actor.measure.remote(c.tolist(), tasks, examples)] = (i, actor)
                refs = list(running) + list(starting)
                if refs:
                    done, _ = ray.wait(refs, num_returns=1, timeout=self.poll_s)
                else:  # every worker lost while the head did not answer: wait for it, or for the timeout
                    done = []
                    time.sleep(self.poll_s)
                if not done:
                    dead = watch.dead_nodes()  # raises ClusterLost when the head has been gone too long
                    for ref, (i, actor) in list(running.items()):
                        if node_of.get(actor) in dead:
                            del running[ref]
                            lose(i, actor, f"node {node_of[actor][:8]} died")
                    if watch.head_ok and not (running or starting or idle):
                        spawn()
                    if not running and queue and not idle and watch.head_ok and watch.stalled():
                        raise ExplorerError(
                            f"no Ray worker could start in {self.cluster_timeout_s:.0f} s: the cluster has no free "
                            f"{'GPU' if options['num_gpus'] else 'CPU'} or memory for one; finished evaluations are "
                            "stored, run the same command again to resume")
                    continue
                watch.progress()
                ref = done[0]
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        node_of[actor] = ray.get(ref)
                    except lost_errors:  # died while starting (its node went away): try once more elsewhere
                        failed_starts += 1
                        if failed_starts > self.max_retries * max(1, n_workers):
                            raise ExplorerError("Ray workers keep dying while they start; see the Ray logs") from None
                        spawn()
                        continue
                    idle.append(actor)
                    continue
                i, actor = running.pop(ref)
                c, kind = pending[i]
                try:
                    key, identities, values, scored = ray.get(ref)
                except lost_errors as exc:
                    lose(i, actor, type(exc).__name__)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)  # the worker's own exception, without Ray's traceback text
                    if isinstance(cause, ExplorerError):
                        raise cause from None
                    raise
                if key != experiment.key or any(identities.get(t) != experiment.task_identities[t]
                                                for t, _, _ in [*values, *scored]):
                    raise ExplorerError(
                        "a Ray worker sees other checkpoints, evaluator code, data files or device than the driver "
                        f"(experiment {key[:12]} vs {experiment.key[:12]}); give every node the same files"
                    )
                experiment.record(c, kind, values, scored, plans[i][1])
                self.history.append((tuple(c.tolist()), node_of.get(actor), "measured", time.monotonic()))
                idle.append(actor)
                yield c
        finally:
            if watch.head_answers():  # Ray calls would wait on a head that is gone
                for actor in idle + [a for _, a in running.values()] + list(starting.values()):
                    _kill(ray, actor)  # killing an actor ends its running task
            line = self.placement_summary()
            if line:
                print(f"merge-explorer: {line}", file=sys.stderr)

    def placement_summary(self) -> str | None:
        """One line: points measured per node, and points re-sent after their worker or node was lost."""
        measured = [node for _, node, outcome, _ in self.history if outcome == "measured"]
        if not measured:
            return None
        counts = Counter(measured)
        nodes = ", ".join(f"{n} on node {node[:8]}" for node, n in counts.most_common())
        lost = sum(outcome == "lost" for _, _, outcome, _ in self.history)
        return f"ray: {len(measured)} points measured on {len(counts)} node(s) ({nodes}); {lost} re-sent after their worker or node was lost"


class ClusterLost(ExplorerError):
    """The Ray head no longer answers: the run stops with what is stored."""


class ClusterWatch:
    """Bounded waits on a Ray cluster: which nodes died, whether the head still answers, whether a
    run has had no progress for too long.

    The head is checked with a plain TCP connection to its GCS port (a Ray call to a dead head
    blocks while Ray retries), so losing the whole cluster ends the run in about `timeout_s`.
    """

    def __init__(self, ray, poll_s: float, timeout_s: float):
        self.ray, self.poll_s, self.timeout_s = ray, poll_s, timeout_s
        self.gcs = ray.get_runtime_context().gcs_address
        self.last_progress = self.last_head = time.monotonic()
        self.head_ok = True

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def stalled(self) -> bool:
        return time.monotonic() - self.last_progress > self.timeout_s

    def head_answers(self) -> bool:
        host, _, port = self.gcs.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, self.poll_s * 2)):
                return True
        except OSError:
            return False

    def dead_nodes(self) -> set[str]:
        """Ids of the nodes Ray reports dead (none while the head does not answer)."""
        now = time.monotonic()
        self.head_ok = self.head_answers()
        if self.head_ok:
            self.last_head = now
        elif now - self.last_head > self.timeout_s:
            raise ClusterLost(f"the Ray cluster's head at {self.gcs} has not answered for {self.timeout_s:.0f} s; "
                              "finished evaluations are stored: run the same command again to resume")
        else:
            return set()
        return {n["NodeID"] for n in self.ray.nodes() if not n.get("Alive")}


def _lost_errors(ray) -> tuple:
    """Ray's exceptions for 'the process or node that ran this is gone' (not: the evaluation failed)."""
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ActorUnavailableError", "OwnerDiedError",
             "LocalRayletDiedError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _kill(ray, actor) -> None:
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
