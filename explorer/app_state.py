"""Engine-side helpers for the app: arguments, share links, background runs, the chosen point.

Nothing here imports streamlit, so every piece is testable on its own and the app stays a thin
view (widgets, layout, calls). Objects shared by all browser sessions of one server process
(`Workspace`, `ExperimentHandle`) are thread-safe: a lock serialises everything that writes a
merge into the model (runs, verification, merged checkpoints), and SQLite's WAL lets the page
read the store while a run writes to it.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote, unquote

import numpy as np

from explorer.core.decision import Decision
from explorer.errors import ExplorerError, SpecError
from explorer.figures import Chosen, Marker

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "examples" / "demo.yaml"
SPEC_ENV = "MERGE_EXPLORER_SPEC"
STORE_ENV = "MERGE_EXPLORER_STORE"
DEMO_COMMAND = "merge-explorer demo"


PRESENT_ENV = "MERGE_EXPLORER_PRESENT"
WORKSPACE_ENV = "MERGE_EXPLORER_WORKSPACE"
TRUST_PICKLE_ENV = "MERGE_EXPLORER_TRUST_PICKLE"
DOWNLOAD_LIMIT_ENV = "MERGE_EXPLORER_DOWNLOAD_LIMIT"
#: Largest merged checkpoint offered as a download: a download is built in the server's memory and
#: held by the browser session, so larger ones (language models) are written on the server instead.
DOWNLOAD_LIMIT_BYTES = 2 << 30
#: Where, under the workspace, checkpoints over the download limit are written.
SERVER_EXPORTS_DIR = "merged-checkpoints"
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


# --- arguments and what the server allows ---------------------------------------------------------
@dataclass(frozen=True)
class AppArgs:
    """What the server was started with. A spec is code (its evaluator is imported, `trust_pickle`
    unpickles), so the operator decides which specs a visitor can open: the one named at start,
    and in normal mode any under `workspace`; `present` opens no other and measures nothing."""

    spec: Path
    store: Path | None
    is_default: bool  # True when no spec was given (the demo)
    present: bool = False  # read-only stakeholder mode
    workspace: Path = field(default_factory=Path.cwd)
    trust_pickle: bool = False
    download_limit: int = DOWNLOAD_LIMIT_BYTES  # bytes; a larger merged checkpoint is written on the server


def parse_size(text: str, what: str = "--download-limit") -> int:
    """Bytes from '2GiB', '500MB', '1.5 GB' or a plain number of bytes; one-line error otherwise."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _SIZE_UNITS:
        raise SpecError(f"{what} {text!r}: not a size (write e.g. 2GiB, 500MB or a number of bytes)")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _flag(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def app_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AppArgs:
    """`streamlit run app.py -- [--spec S] [--store DB] [--present] [--workspace DIR] [--trust-pickle]
    [--download-limit SIZE]`.

    Each option may also come from the environment ($MERGE_EXPLORER_SPEC, ..._STORE, ..._PRESENT,
    ..._WORKSPACE, ..._TRUST_PICKLE, ..._DOWNLOAD_LIMIT); without a spec the demo spec is shown. The
    workspace defaults to the directory the server was started in; the download limit to 2 GiB.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--spec")
    parser.add_argument("--store")
    parser.add_argument("--present", action="store_true")
    parser.add_argument("--workspace")
    parser.add_argument("--trust-pickle", action="store_true")
    parser.add_argument("--download-limit")
    known, _ = parser.parse_known_args(argv)
    limit = known.download_limit or environ.get(DOWNLOAD_LIMIT_ENV)
    spec = known.spec or environ.get(SPEC_ENV)
    store = known.store or environ.get(STORE_ENV)
    workspace = known.workspace or environ.get(WORKSPACE_ENV)
    return AppArgs(Path(spec).expanduser().resolve() if spec else DEFAULT_SPEC,
                   Path(store).expanduser().resolve() if store else None, spec is None,
                   present=known.present or _flag(environ.get(PRESENT_ENV)),
                   workspace=Path(workspace).expanduser().resolve() if workspace else Path.cwd().resolve(),
                   trust_pickle=known.trust_pickle or _flag(environ.get(TRUST_PICKLE_ENV)),
                   download_limit=DOWNLOAD_LIMIT_BYTES if not limit else
                   parse_size(limit, "--download-limit" if known.download_limit else f"${DOWNLOAD_LIMIT_ENV}"))


@functools.lru_cache(maxsize=64)
def _asks_for_pickle(signature: tuple) -> bool:
    """Whether the spec file (this version of it: path, mtime, size) sets model.trust_pickle."""
    from explorer.experiment.spec import load_spec

    spec, _ = load_spec(Path(signature[0]))
    return bool(spec.model.trust_pickle)


def spec_refusal(path: Path, args: AppArgs) -> str | None:
    """Why this server will not open the spec at `path` (one line), or None when it may.

    The spec named at start is the operator's choice; any other must lie under the workspace
    (normal mode), and present mode opens no other. A spec with `model.trust_pickle: true` is
    refused unless the server was started with --trust-pickle. Raises ExplorerError for a spec
    that cannot be read.
    """
    path = Path(path).expanduser().resolve()
    if path != args.spec:
        if args.present:
            return (f"refused: {path.name}: present mode shows only the experiment the server was started with "
                    f"({args.spec.name})")
        if not path.is_relative_to(args.workspace):
            return (f"refused: {path} is outside the workspace {args.workspace}; a spec is code, so the app opens "
                    f"specs only there (start it with --workspace DIR to widen it)")
    if not args.trust_pickle and path.is_file() and _asks_for_pickle(file_signature(path)):
        return (f"refused: {path.name} sets model.trust_pickle: true, and unpickling a checkpoint runs its code; "
                f"start the app with --trust-pickle if you trust every checkpoint it names")
    return None


# --- share links: preferences in the URL --------------------------------------------------------
def encode_preferences(tasks: Sequence[str], weights: Mapping[str, float] | None,
                       minimums: Mapping[str, float] | None, experiment_key: str | None = None,
                       picked: np.ndarray | None = None) -> dict[str, str]:
    """Query parameters for a choice: w=task:2,other:1 & min=task:0.85 (& exp=key prefix, pick=c1,c2)."""
    def pairs(values: Mapping[str, float]) -> str:
        return ",".join(f"{quote(t, safe='')}:{_short(values[t])}" for t in tasks if t in values)

    out = {}
    if weights:
        out["w"] = pairs(weights)
    if minimums:
        out["min"] = pairs(minimums)
    if experiment_key:
        out["exp"] = experiment_key[:12]
    if picked is not None:
        out["pick"] = ",".join(_short(float(c), 6) for c in picked)
    return out


def _short(value: float, digits: int = 4) -> str:
    return f"{float(value):.{digits}g}"


WEIGHT_RANGE = (0.0, 10.0)  # the importance sliders' range


def decode_preferences(params: Mapping[str, str], tasks: Sequence[str], bounds=None,
                       metric_ranges: Mapping[str, tuple[float, float]] | None = None
                       ) -> tuple[dict, dict, np.ndarray | None, list[str]]:
    """(weights, minimums, picked coefficients or None, problems) from query parameters.

    A share link is input from anyone: every value is checked, and what is malformed, non-finite,
    outside its range (weights: `WEIGHT_RANGE`; minimums: `metric_ranges[task]`, the sliders'
    range, when given) or, for `pick`, of the wrong length or outside the box `bounds` (T, 2), is
    skipped and reported in `problems` (one line each, shown to the user), never raised.
    """
    problems: list[str] = []

    def parse(name: str) -> dict[str, float]:
        text = params.get(name)
        out: dict[str, float] = {}
        if not text:
            return out
        for part in str(text).split(","):
            task, sep, value = part.rpartition(":")
            task = unquote(task)
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if not sep or task not in tasks:
                problems.append(f"ignored {name}={_clip_text(part)} from the link: no such task "
                                f"(tasks are {', '.join(tasks)})")
            elif not np.isfinite(number):
                problems.append(f"ignored {name}={_clip_text(part)} from the link: not a finite number")
            else:
                out[task] = number
        return out

    weights = {}
    for t, w in parse("w").items():
        if WEIGHT_RANGE[0] <= w <= WEIGHT_RANGE[1]:
            weights[t] = w
        else:
            problems.append(f"ignored w={t}:{_short(w)} from the link: an importance lies in "
                            f"[{WEIGHT_RANGE[0]:g}, {WEIGHT_RANGE[1]:g}]")
    minimums = {}
    for t, v in parse("min").items():
        lo, hi = (metric_ranges or {}).get(t, (-np.inf, np.inf))
        if lo <= v <= hi:
            minimums[t] = v
        else:
            problems.append(f"ignored min={t}:{_short(v)} from the link: outside the front's range "
                            f"[{_short(lo)}, {_short(hi)}] for {t}")
    picked = _decode_pick(params.get("pick"), len(tasks), bounds, problems)
    return weights, minimums, picked, problems


def _decode_pick(text, n_tasks: int, bounds, problems: list[str]) -> np.ndarray | None:
    if not text:
        return None
    try:
        c = np.array([float(x) for x in str(text).split(",")])
    except ValueError:
        problems.append(f"ignored pick={_clip_text(text)} from the link: not numbers")
        return None
    if c.shape != (n_tasks,):
        problems.append(f"ignored pick= from the link: {len(c)} coefficients for {n_tasks} tasks")
    elif not np.all(np.isfinite(c)):
        problems.append("ignored pick= from the link: a coefficient is not a finite number")
    elif bounds is not None and not np.all((c >= np.asarray(bounds)[:, 0] - 1e-9) & (c <= np.asarray(bounds)[:, 1] + 1e-9)):
        box = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in np.asarray(bounds))
        problems.append(f"ignored pick= from the link: coefficients outside the explored box ({box})")
    else:
        return c
    return None


def _clip_text(text, limit: int = 40) -> str:
    text = repr(str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- experiments and their shared state ---------------------------------------------------------
def file_signature(path: Path) -> tuple:
    """(path, mtime, size): a cache key that changes when the file is edited."""
    try:
        st = Path(path).stat()
        return str(Path(path).resolve()), st.st_mtime_ns, st.st_size
    except OSError:
        return str(path), 0, 0


@dataclass
class Job:
    """A background evaluation (thread) or demo build (subprocess) whose progress the page polls."""

    kind: str  # "run" | "demo"
    started: float = field(default_factory=time.time)
    total: int = 0
    done_at_start: int = 0
    done: int = 0
    finished: bool = False
    error: str | None = None
    thread: threading.Thread | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        if self.process is not None and not self.finished:
            code = self.process.poll()
            if code is not None:
                self.finished = True
                if code != 0:
                    self.error = _last_line(self.log_path) or f"exited with status {code}"
        return not self.finished

    def eta_seconds(self) -> float | None:
        measured = self.done - self.done_at_start
        if measured <= 0:
            return None
        rate = (time.time() - self.started) / measured
        return rate * max(self.total - self.done, 0)

    def progress_text(self) -> str:
        if self.kind == "demo":
            return f"building the demo zoo and running its design: {time.time() - self.started:.0f} s elapsed"
        eta = self.eta_seconds()
        eta_text = f", about {format_seconds(eta)} left" if eta is not None else ", estimating time left…"
        return f"{self.done} / {self.total} points evaluated{eta_text if not self.finished else ''}"


def _last_line(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else None


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Cancelled(Exception):
    pass


class _ProgressExecutor:
    """An executor for `Experiment.run` that evaluates in order and counts finished points."""

    def __init__(self, job: Job):
        self.job = job

    def run(self, experiment, pending):
        self.job.done_at_start = self.job.total - len(pending)
        self.job.done = self.job.done_at_start
        self.job.started = time.time()
        for c, kind in pending:
            if self.job.cancel.is_set():
                raise _Cancelled()
            experiment.evaluate(c, kind)
            self.job.done += 1
            yield c


class ExperimentHandle:
    """One loaded experiment shared by all sessions: the model is built at most once (lazily)."""

    def __init__(self, experiment):
        self.experiment = experiment
        self.lock = threading.Lock()  # whoever writes a merge into the model holds it
        self.job: Job | None = None
        self._job_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    # --- store snapshots ---------------------------------------------------------------------
    def snapshot(self):
        """(C, M, kinds, fingerprint) of every complete stored point; the fingerprint keys the fit cache."""
        from explorer.experiment.store import CHECK_KINDS

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

    def fit(self):
        """Surrogates and front from the store (raises SpecError when too few points)."""
        return self.experiment.result()

    def progress(self, budget: int | None = None) -> tuple[int, int]:
        """(points measured, points in all) of the run `start_run(budget)` does (runner.progress)."""
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
                        self.experiment.run(budget=budget, progress=False, executor=_ProgressExecutor(job))
                except _Cancelled:
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
        from explorer.core.polish import polish

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
        from explorer.export import export

        with tempfile.TemporaryDirectory(prefix="merge-explorer-export-") as tmp:
            c = decision.coefficients
            paths = export(self.experiment, result, decision, tmp, weights, minimums, checkpoint=False,
                           measured=self.experiment.stored_metrics(c), test_split=self.experiment.held_out(c))
            return {p.name: p.read_bytes() for p in paths.values()}

    def merged_checkpoint_size(self) -> int:
        """Bytes of tensor data in the merged checkpoint (the base's tensors in its dtypes), read from
        the loaded engine, else from the base's safetensors headers, else its file sizes: no weights load."""
        from explorer.experiment.spec import resolve
        from explorer.merging.checkpoints import checkpoint_files
        from explorer.merging.safetensors_file import read_header

        exp = self.experiment
        if "engine" in exp.__dict__:
            return sum(t.numel() * t.element_size() for t in exp.engine.base.values())
        files = checkpoint_files(resolve(exp.spec_dir, exp.spec.model.base))
        if all(f.suffix == ".safetensors" for f in files):
            return sum(e.nbytes for f in files for e in read_header(f).values())
        return sum(f.stat().st_size for f in files)

    def server_export_dir(self, coefficients: np.ndarray, root: Path) -> Path:
        """The folder under `root` that holds the merged checkpoint at `coefficients`, named by the
        experiment and a hash of its key and the coefficients (the same choice, the same folder)."""
        import re

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
        import shutil

        from explorer.export import write_merged

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
        from explorer.experiment.families.registry import lookup

        return not lookup(self.experiment.spec.model.family).artifact.endswith("/")

    def merged_checkpoint(self, coefficients: np.ndarray) -> bytes:
        """merged.safetensors bytes, as `merge-explorer export` writes them (builds the model once)."""
        from explorer.export import write_merged

        with self.lock, tempfile.TemporaryDirectory(prefix="merge-explorer-export-") as tmp:
            return write_merged(self.experiment, np.asarray(coefficients, dtype=float), Path(tmp))["merged"].read_bytes()


class Workspace:
    """Per server process: loaded experiments by spec file, and the demo build job."""

    MAX_OPEN = 2  # engines kept for the pages of this server (e.g. two people on two experiments)

    def __init__(self):
        self._lock = threading.Lock()
        self._handles: dict[tuple, ExperimentHandle] = {}
        self.demo_job: Job | None = None

    def open(self, spec: Path, store: Path | None = None, trust_pickle: bool = False) -> ExperimentHandle:
        """The shared handle for a spec (reloaded when the spec file changes); raises ExplorerError.

        `trust_pickle` is the server's --trust-pickle (as the CLI's flag: pickled checkpoints load).
        """
        from explorer.experiment.experiment import Experiment

        key = (file_signature(spec), str(store) if store else None, bool(trust_pickle))
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = ExperimentHandle(Experiment.from_file(spec, store_path=store, trust_pickle=trust_pickle))
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


def demo_ready(spec: Path = DEFAULT_SPEC) -> tuple[bool, str]:
    """Whether the demo spec and its zoo exist; otherwise a message saying how to build them."""
    if not Path(spec).is_file():
        return False, (f"The demo spec {spec} is not there yet. Build the demo zoo and run its design with "
                       f"`{DEMO_COMMAND}` (a few minutes on a laptop CPU), or open another spec.")
    try:
        from explorer.experiment.experiment import Experiment  # noqa: F401
        from explorer.experiment.spec import load_spec, resolve

        s, d = load_spec(spec)
        missing = [p for p in [resolve(d, s.model.base), *(resolve(d, t.checkpoint) for t in s.tasks.values())]
                   if not p.exists()]
    except ExplorerError as exc:
        return False, str(exc)
    if missing:
        return False, (f"The demo zoo is not built yet ({missing[0].name} is missing). Build it and run its design "
                       f"with `{DEMO_COMMAND}` (a few minutes on a laptop CPU), or press the button below.")
    return True, ""


# --- the chosen point --------------------------------------------------------------------------
def choose(result, weights: Mapping[str, float], minimums: Mapping[str, float], picked: np.ndarray | None = None) -> Decision:
    """The decision for the current preferences, or a clicked point (`picked`) judged against them."""
    if picked is None:
        return result.decide(weights, minimums or None)
    from explorer.vouch import decision_at

    return decision_at(result, picked, minimums)


def chosen_view(decision: Decision, measured: np.ndarray | None) -> Chosen:
    return Chosen(decision.coefficients, decision.predicted, measured, std=decision.std, trusted=decision.trusted)


def polish_rows(tasks: Sequence[str], result, polished) -> list[dict]:
    """Measured vs predicted at the surrogate pick (the polish's first point) and at the polished point."""
    start, best = polished.coefficients[0], polished.coefficients[polished.best_index]
    (p0, p1), (s0, s1) = result.predict(np.vstack([start, best]), return_std=True)
    m0, m1 = polished.measured[0], polished.measured[polished.best_index]
    return [{"task": t, "predicted (pick)": round(float(p0[i]), 4), "± std (pick)": round(float(s0[i]), 4),
             "measured (pick)": round(float(m0[i]), 4), "predicted (polished)": round(float(p1[i]), 4),
             "± std (polished)": round(float(s1[i]), 4), "measured (polished)": round(float(m1[i]), 4),
             "gain": round(float(m1[i] - m0[i]), 4)} for i, t in enumerate(tasks)]


def polish_progress_text(done: int, total: int, started: float) -> str:
    """'polishing: 3 / 12 evaluations, about 40 s left'."""
    left = (time.time() - started) / max(done, 1) * max(total - done, 0)
    return f"polishing: {done} / {total} evaluations" + (f", about {format_seconds(left)} left" if done < total else "")


def polish_summary(polished) -> str:
    """One line: how many evaluations, and whether the polish beat the pick, as measured."""
    n = len(polished.coefficients)
    if polished.best_index == 0:
        return f"{n} real evaluations: none beat the surrogate pick as measured, so the pick is kept."
    return (f"{n} real evaluations: achievement (measured, lower is better) {polished.scores[0]:.4f} → "
            f"{polished.scores[polished.best_index]:.4f}; the chosen merge is now the polished point.")


def slider_range(result, task_index: int) -> tuple[float, float]:
    """The range of a task's minimum slider: its predicted span on the front (rounded outwards)."""
    v = result.front_predicted[:, task_index]
    lo, hi = float(np.min(v)), float(np.max(v))
    if not hi > lo:
        lo, hi = lo - 1e-3, hi + 1e-3
    step = slider_step(lo, hi)
    return float(np.floor(lo / step) * step), float(np.ceil(hi / step) * step)


def slider_step(lo: float, hi: float) -> float:
    span = max(hi - lo, 1e-9)
    return float(10 ** np.floor(np.log10(span / 200)))


def poor_fits(result, threshold: float = 0.8) -> dict[str, float]:
    """Tasks whose surrogate's cross-validated R² is below `threshold` (or undefined)."""
    return {t: float(s.r2_cv_) for t, s in result.surrogates.items() if not (float(s.r2_cv_) >= threshold)}


def choice_rows(tasks: Sequence[str], metrics: Mapping[str, str], decision: Decision,
                measured: np.ndarray | None, minimums: Mapping[str, float]) -> list[dict]:
    """The chosen-point table: one row per task."""
    rows = []
    std = decision.std if decision.std is not None else np.full(len(tasks), np.nan)
    for i, t in enumerate(tasks):
        row = {"task": f"{t} ({metrics.get(t, 'metric')})", "coefficient": round(float(decision.coefficients[i]), 4),
               "predicted": round(float(decision.predicted[i]), 4),
               "± std": round(float(std[i]), 4) if np.isfinite(std[i]) else None}
        if measured is not None:
            row["measured"] = round(float(measured[i]), 4)
            row["measured − predicted"] = round(float(measured[i] - decision.predicted[i]), 4)
        row["minimum"] = round(float(minimums[t]), 4) if t in minimums else None
        rows.append(row)
    return rows


#: Short column names for the chosen-merge table on the page (it shares the page with the plots).
CHOICE_HEADERS = {"coefficient": "c", "minimum": "min", "measured − predicted": "meas. − pred."}


def markdown_table(rows: list[dict], headers: Mapping[str, str] | None = None) -> str:
    """`rows` (dicts with the same keys) as a markdown pipe table; numbers with 4 decimals, None as —;
    `headers` renames columns for display (a narrow page column)."""
    if not rows:
        return ""
    keys = list(rows[0])
    headers = headers or {}

    def cell(v) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|")

    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    align = "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(keys))) + "|"  # text left, numbers right
    return "\n".join([line(headers.get(k, k) for k in keys), align, *(line(cell(r.get(k)) for k in keys) for r in rows)])


# --- reads at a glance -------------------------------------------------------------------------
@dataclass(frozen=True)
class References:
    """Measured reference values per task: the base, each expert on its own task, task arithmetic."""

    base: np.ndarray | None = None
    experts: np.ndarray | None = None
    task_arithmetic: np.ndarray | None = None

    @classmethod
    def from_markers(cls, markers: Sequence[Marker], n_tasks: int) -> "References":
        from explorer.figures import expert_diagonal

        by_kind = {m.kind: m.metrics for m in markers if m.kind in ("base", "task_arithmetic")}
        return cls(by_kind.get("base"), expert_diagonal(markers, n_tasks), by_kind.get("task_arithmetic"))


def glance_lines(tasks: Sequence[str], senses: Sequence[float], fractions: Sequence[bool], values: np.ndarray,
                 refs: References, measured: bool = False) -> list[str]:
    """One plain-language line per task comparing the chosen merge with the base, the expert and task arithmetic.

    e.g. "digits: 84.1 % (predicted) — +12.3 points over the base, 5.2 below the expert, keeps 70 % of
    the expert's gain; +3.1 over task arithmetic". Accuracies (`fractions`) read in percent and
    points; other metrics in their own units, with "better"/"worse" following the task's sense.
    A reference that was not measured is left out.
    """
    lines = []
    for i, task in enumerate(tasks):
        scale = 100.0 if fractions[i] else 1.0
        v = float(values[i])
        shown = f"{scale * v:.1f} %" if fractions[i] else f"{v:.4g}"
        parts = []
        first = [True]

        def versus(ref: float, name: str) -> str:
            d = scale * (v - ref)
            unit = " points" if fractions[i] and first[0] else ""
            first[0] = False
            if not fractions[i]:
                better = d * senses[i] >= 0
                return f"{abs(d):.3g} {'better' if better else 'worse'} than {name}"
            if abs(d) < 0.05:
                return f"level with {name}"
            return f"+{d:.1f}{unit} over {name}" if d > 0 else f"{-d:.1f}{unit} below {name}"

        if refs.base is not None:
            parts.append(versus(float(refs.base[i]), "the base"))
        if refs.experts is not None:
            parts.append(versus(float(refs.experts[i]), "the expert"))
            if refs.base is not None:
                parts.append(_gain_kept(v, float(refs.base[i]), float(refs.experts[i]), senses[i]))
        head = ", ".join(parts)
        if refs.task_arithmetic is not None:
            ta = versus(float(refs.task_arithmetic[i]), "task arithmetic")
            head = f"{head}; {ta}" if head else ta
        kind = "measured" if measured else "predicted"
        lines.append(f"{task}: {shown} ({kind})" + (f" — {head}" if head else ""))
    return lines


def _gain_kept(value: float, base: float, expert: float, sense: float) -> str:
    gain = (expert - base) * sense
    if not gain > 1e-12:
        return "the expert does not beat the base here"
    share = (value - base) * sense / gain
    if share <= 0:
        return "keeps none of the expert's gain"
    return f"keeps {100 * share:.0f} % of the expert's gain"


def report_bytes(title: str, figures: dict, rows: list[dict], notes: Sequence[str] = (),
                 meta: Mapping[str, str] | None = None, summary: Sequence[str] = ()) -> bytes:
    from explorer.report import report_html

    return report_html(title, figures, rows, notes, meta, summary).encode("utf-8")


def to_buffer(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
