"""The experiment handle: one loaded experiment shared by all browser sessions, and the per-process workspace.

Objects shared by all browser sessions of one server process (`Workspace`, `ExperimentHandle`) are
thread-safe: a lock serialises everything that writes a merge into the model (runs, verification,
merged checkpoints), and SQLite's WAL lets the page read the store while a run writes to it.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from explorer.app_state.arguments import DEFAULT_SPEC, REPO_ROOT, file_signature
from explorer.app_state.jobs import Cancelled, Job, ProgressExecutor
from explorer.core.decision import Decision
from explorer.core.polish import polish
from explorer.errors import ExplorerError, SpecError
from explorer.experiment.families.registry import lookup
from explorer.experiment.spec import load_spec, resolve
from explorer.experiment.store import CHECK_KINDS
from explorer.merging.methods.registry import get_method, method_names
from explorer.figures import Marker

DEMO_COMMAND = "merge-explorer demo"
#: Where, under the workspace, checkpoints over the download limit are written.
SERVER_EXPORTS_DIR = "merged-checkpoints"


class ExperimentHandle:
    """One loaded experiment shared by all sessions: the model is built at most once (lazily)."""

    def __init__(self, experiment):
        self.experiment = experiment
        self.lock = threading.Lock()  # whoever writes a merge into the model holds it
        self.job: Job | None = None
        self._job_lock = threading.Lock()
        self._siblings: dict[str, tuple[int, object]] = {}  # method -> (stored rows, its result)

    @property
    def method_title(self) -> str:
        """This experiment's merge method as a stakeholder reads it ("TSV-M", "task arithmetic")."""
        return get_method(self.experiment.spec.merge.method).title

    def sibling_fronts(self) -> list[tuple[str, object]]:
        """(title, result) of every other merge method whose run on these checkpoints is in the store
        (`merge-explorer compare` writes them): their fronts are drawn beside this one. Read-only,
        and refit only when a sibling's stored points changed."""
        from explorer.experiment.experiment import Experiment  # imports torch: loaded when first needed

        exp, out = self.experiment, []
        for method in method_names():
            if method == exp.spec.merge.method:
                continue
            try:
                sibling = Experiment(exp.spec.with_method(method), exp.spec_dir, exp.store, exp.device, exp.spec_path)
                rows = exp.store.count(sibling.key)
                if rows == 0:
                    continue
                cached = self._siblings.get(method)
                if cached is None or cached[0] != rows:
                    self._siblings[method] = cached = (rows, sibling.result())
            except ExplorerError:  # too few points of that method yet, or its spec is refused: not shown
                continue
            out.append((get_method(method).title, cached[1]))
        return out

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    # --- store snapshots ---------------------------------------------------------------------
    def snapshot(self):
        """(C, M, kinds, fingerprint) of every complete stored point; the fingerprint keys the fit cache."""
        C, M, kinds = self.experiment.measured()
        fitted = np.array([k not in CHECK_KINDS for k in kinds], dtype=bool)  # verify/polish do not change the fit
        Cf, Mf = C[fitted] if len(C) else C, M[fitted] if len(M) else M
        digest = hashlib.sha256()
        digest.update(self.experiment.key.encode())
        order = np.lexsort(Cf.T[::-1]) if len(Cf) else np.zeros(0, dtype=int)
        digest.update(np.ascontiguousarray(np.round(Cf[order], 10)).tobytes())
        digest.update(np.ascontiguousarray(Mf[order]).tobytes())
        kinds_f = [k for k in kinds if k not in CHECK_KINDS]
        digest.update(json.dumps([kinds_f[i] for i in order]).encode())
        return C, M, kinds, digest.hexdigest()

    def examples_note(self) -> str | None:
        """A line for the page when points were measured on part of the tasks' examples, else None."""
        _, _, _, how = self.experiment.measured_examples()
        n, total = how["examples"], how["n_total"]
        parts = []
        for j, task in enumerate(self.experiment.tasks):
            sub = (n[:, j] > 0) & (n[:, j] < total[:, j]) if len(n) else np.zeros(0, dtype=bool)
            if np.any(sub):
                lo, hi, of = int(n[sub, j].min()), int(n[sub, j].max()), int(total[sub, j].max())
                parts.append(f"{task} on {lo:,}{'' if lo == hi else f'–{hi:,}'} of {of:,}")
        if not parts:
            return None
        return ("Points measured on part of each task's examples (" + "; ".join(parts) + "): their sampling noise "
                "is in the front's ± std. Picks you verify or polish are measured on every example.")

    def fit(self):
        """Surrogates and front from the store (raises SpecError when too few points)."""
        return self.experiment.result()

    def progress(self, budget: int | None = None) -> tuple[int, int]:
        """(points measured, points in all) of the run `start_run(budget)` does (Experiment.progress)."""
        return self.experiment.progress(budget)

    def markers(self, C: np.ndarray, M: np.ndarray, kinds: Sequence[str]) -> tuple[list[Marker], list[Marker]]:
        """(reference markers: base, experts, task arithmetic; verified markers) from a snapshot."""
        tasks = self.experiment.tasks
        t = len(tasks)
        refs, verified = [], []
        index = {tuple(np.round(c, 10)): k for k, c in enumerate(C)}
        base = index.get(tuple(np.zeros(t)))
        if base is not None:
            refs.append(Marker("base", "base", C[base], M[base]))
        for i, task in enumerate(tasks):
            k = index.get(tuple(np.round(np.eye(t)[i], 10)))
            if k is not None:
                refs.append(Marker(f"expert: {task}", "expert", C[k], M[k]))
        senses = self.experiment.senses
        equal = [k for k in range(len(C)) if np.ptp(C[k]) < 1e-12 and C[k, 0] > 0]
        if equal:
            best = max(equal, key=lambda k: float(np.mean(M[k] * senses)))
            refs.append(Marker(f"task arithmetic (λ={C[best, 0]:.2f})", "task_arithmetic", C[best], M[best]))
        for k, kind in enumerate(kinds):
            if kind in ("verify", "polish"):  # runner.CHECK_KINDS: measured to check a choice
                verified.append(Marker("verified" if kind == "verify" else "polish step", "verified", C[k], M[k]))
        return refs, verified

    # --- background runs -----------------------------------------------------------------------
    def start_run(self, budget: int | None = None) -> Job:
        """Start (or return the running) evaluation of the design in a thread writing to the store."""
        with self._job_lock:
            if self.busy:
                return self.job
            done, total = self.progress(budget)
            job = Job("run", total=total)
            job.done = job.done_at_start = done

            def work():
                try:
                    with self.lock:
                        self.experiment.run(budget=budget, progress=False, executor=ProgressExecutor(job))
                except Cancelled:
                    job.error = "stopped: finished evaluations are stored; start again to resume"
                except ExplorerError as exc:
                    job.error = str(exc)
                except Exception as exc:  # noqa: BLE001 - reported on the page, not as a traceback
                    job.error = f"{type(exc).__name__}: {exc}"
                finally:
                    job.finished = True

            job.thread = threading.Thread(target=work, name=f"merge-explorer-run-{self.experiment.key[:8]}", daemon=True)
            self.job = job
            job.thread.start()
            return job

    # --- the model side ------------------------------------------------------------------------
    def verify(self, coefficients: np.ndarray) -> np.ndarray:
        """Measure the real merged model at `coefficients`, store it (kind 'verify'), return (T,)."""
        if self.busy:
            raise SpecError("an evaluation run is in progress; verify when it has finished")
        with self.lock:
            return self.experiment.evaluate(np.asarray(coefficients, dtype=float), kind="verify")

    def polish(self, result, weights=None, minimums=None, budget: int = 12, progress=None):
        """Polish the pick for these preferences with at most `budget` real evaluations, each stored
        (kind 'polish': resumable, never fitted); returns explorer.polish.Polished."""
        if self.busy:
            raise SpecError("an evaluation run is in progress; polish when it has finished")
        exp = self.experiment
        with self.lock:
            return polish(result, lambda c: dict(zip(exp.tasks, exp.evaluate(c, "polish"))), weights,
                          minimums or None, budget, progress)

    def stored(self, coefficients: np.ndarray) -> np.ndarray | None:
        have = self.experiment.stored(np.asarray(coefficients, dtype=float))
        if len(have) < len(self.experiment.tasks):
            return None
        return np.array([have[t] for t in self.experiment.tasks])

    def export_text_files(self, result, decision: Decision, weights=None, minimums=None) -> dict[str, bytes]:
        """coefficients.json and mergekit.yaml exactly as `merge-explorer export` writes them."""
        from explorer.export import export  # imports torch: loaded when first needed

        with tempfile.TemporaryDirectory(prefix="merge-explorer-export-") as tmp:
            c = decision.coefficients
            paths = export(self.experiment, result, decision, tmp, weights, minimums, checkpoint=False,
                           measured=self.experiment.stored_metrics(c), test_split=self.experiment.held_out(c))
            return {p.name: p.read_bytes() for p in paths.values()}

    def merged_checkpoint_size(self) -> int:
        """Bytes of tensor data in the merged checkpoint (the base's tensors in its dtypes), read from
        the loaded engine, else from the base's safetensors headers, else its file sizes: no weights load."""
        from explorer.merging.checkpoints import checkpoint_files  # imports torch: loaded when first needed
        from explorer.merging.safetensors_file import read_header  # imports torch: loaded when first needed

        exp = self.experiment
        if exp.loaded:
            return sum(t.numel() * t.element_size() for t in exp.engine.base.values())
        files = checkpoint_files(resolve(exp.spec_dir, exp.spec.model.base))
        if all(f.suffix == ".safetensors" for f in files):
            return sum(e.nbytes for f in files for e in read_header(f).values())
        return sum(f.stat().st_size for f in files)

    def server_export_dir(self, coefficients: np.ndarray, root: Path) -> Path:
        """The folder under `root` that holds the merged checkpoint at `coefficients`, named by the
        experiment and a hash of its key and the coefficients (the same choice, the same folder)."""
        exp = self.experiment
        c = [float(v) for v in np.asarray(coefficients, dtype=float)]
        digest = hashlib.sha256(json.dumps([exp.key, c]).encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", exp.spec.name).strip(".-") or "merge"
        return Path(root).resolve() / SERVER_EXPORTS_DIR / f"{name}-{digest}"

    @staticmethod
    def server_checkpoint(folder: Path) -> Path | None:
        """The merged checkpoint inside a written server export folder (merged/ or merged.safetensors)."""
        for name in ("merged", "merged.safetensors"):
            if (folder / name).exists():
                return folder / name
        return None

    def write_merged_on_server(self, coefficients: np.ndarray, root: Path, text_files: Mapping[str, bytes]) -> Path:
        """Write the merged checkpoint at `coefficients` under `root` (for checkpoints over the download
        limit), as the family exports it: a Hugging Face folder `merged/` for hf_causal_lm (streamed to
        disk tensor by tensor), `merged.safetensors` otherwise, beside `text_files` (coefficients.json,
        mergekit.yaml). Written into a hidden partial folder and renamed, so a crash leaves no half
        checkpoint under the final name; an existing folder for the same choice is reused. Returns the
        checkpoint's path."""
        from explorer.export import write_merged  # imports torch: loaded when first needed

        c = np.asarray(coefficients, dtype=float)
        final = self.server_export_dir(c, root)
        done = self.server_checkpoint(final) if final.is_dir() else None
        if done is not None:
            return done
        if self.busy:
            raise SpecError("an evaluation run is in progress; write the checkpoint when it has finished")
        tmp = final.parent / f".{final.name}.partial"
        try:
            with self.lock:
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
                for name, data in text_files.items():
                    (tmp / name).write_bytes(data)
                write_merged(self.experiment, c, tmp)
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SpecError(f"{final}: could not write the merged checkpoint ({exc.strerror or exc})") from None
        return self.server_checkpoint(final)

    @property
    def checkpoint_is_one_file(self) -> bool:
        """Whether the family writes the merge as one file (merged.safetensors) a browser can download;
        model folders (hf_causal_lm) are written on the server."""
        return not lookup(self.experiment.spec.model.family).artifact.endswith("/")

    def merged_checkpoint(self, coefficients: np.ndarray) -> bytes:
        """merged.safetensors bytes, as `merge-explorer export` writes them (builds the model once)."""
        from explorer.export import write_merged  # imports torch: loaded when first needed

        with self.lock, tempfile.TemporaryDirectory(prefix="merge-explorer-export-") as tmp:
            return write_merged(self.experiment, np.asarray(coefficients, dtype=float), Path(tmp))["merged"].read_bytes()


class Workspace:
    """Per server process: loaded experiments by spec file, and the demo build job."""

    MAX_OPEN = 2  # engines kept for the pages of this server (e.g. two people on two experiments)

    def __init__(self):
        self._lock = threading.Lock()
        self._handles: dict[tuple, ExperimentHandle] = {}
        self.demo_job: Job | None = None

    def open(self, spec: Path, store: Path | None = None, trust_pickle: bool = False,
             read_only: bool = False) -> ExperimentHandle:
        """The shared handle for a spec (reloaded when the spec file changes); raises ExplorerError.

        `trust_pickle` is the server's --trust-pickle (as the CLI's flag: pickled checkpoints load);
        `read_only` opens the store read-only, so nothing is written to it, not even the front cache
        (present mode).
        """
        from explorer.experiment.experiment import Experiment  # imports torch: loaded when first needed

        key = (file_signature(spec), str(store) if store else None, bool(trust_pickle), bool(read_only))
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = ExperimentHandle(Experiment.from_file(spec, store_path=store, trust_pickle=trust_pickle,
                                                               read_only=read_only))
                self._handles[key] = handle
            self._handles.pop(key)
            self._handles[key] = handle  # most recently shown last
            self._drop_unshown()
            return handle

    def _drop_unshown(self) -> None:
        """Keep the engines pages show now: the newest MAX_OPEN handles and any with a run in progress.

        A handle holds a built model and task vectors (gigabytes for ViT-B/32); one a page still
        holds stays alive with that page, and is simply opened again if shown again.
        """
        keys = list(self._handles)
        newest = keys[-1]
        for key in keys[:-1]:
            stale = key[0][0] == newest[0][0] and key[1] == newest[1]  # an older version of the same spec file
            if (stale or key in keys[:-self.MAX_OPEN]) and not self._handles[key].busy:
                del self._handles[key]

    def start_demo_build(self, log_dir: Path | None = None) -> Job:
        """`merge-explorer demo --no-progress` in a subprocess (builds the zoo, then runs its design)."""
        with self._lock:
            if self.demo_job is not None and self.demo_job.running:
                return self.demo_job
            log_dir = Path(log_dir or REPO_ROOT / "cache")
            log_dir.mkdir(parents=True, exist_ok=True)
            log = log_dir / "demo-build.log"
            job = Job("demo", log_path=log)
            with open(log, "w") as fh:
                job.process = subprocess.Popen([sys.executable, "-m", "explorer.cli", "demo", "--no-progress"],
                                               cwd=str(REPO_ROOT), stdout=fh, stderr=subprocess.STDOUT)
            self.demo_job = job
            return job


_PROCESS_WORKSPACE: Workspace | None = None
_PROCESS_LOCK = threading.Lock()


def process_workspace() -> Workspace:
    """The one Workspace of this server process: the app's sessions share it, and the launcher
    (scripts/serve.py) opens the experiment into it before the server listens, so that the first
    visitor finds it loaded."""
    global _PROCESS_WORKSPACE
    with _PROCESS_LOCK:
        if _PROCESS_WORKSPACE is None:
            _PROCESS_WORKSPACE = Workspace()
        return _PROCESS_WORKSPACE


def demo_ready(spec: Path = DEFAULT_SPEC) -> tuple[bool, str]:
    """Whether the demo spec and its zoo exist; otherwise a message saying how to build them."""
    if not Path(spec).is_file():
        return False, (f"The demo spec {spec} is not there yet. Build the demo zoo and run its design with "
                       f"`{DEMO_COMMAND}` (a few minutes on a laptop CPU), or open another spec.")
    try:
        s, d = load_spec(spec)
        missing = [p for p in [resolve(d, s.model.base), *(resolve(d, t.checkpoint) for t in s.tasks.values())]
                   if not p.exists()]
    except ExplorerError as exc:
        return False, str(exc)
    if missing:
        return False, (f"The demo zoo is not built yet ({missing[0].name} is missing). Build it and run its design "
                       f"with `{DEMO_COMMAND}` (a few minutes on a laptop CPU), or press the button below.")
    return True, ""
