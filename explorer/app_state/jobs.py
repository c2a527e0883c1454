"""Background jobs the page polls: an evaluation run (thread) or the demo build (subprocess)."""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


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


class Cancelled(Exception):
    """Raised inside a run when its job's `cancel` event is set (finished evaluations stay stored)."""


class ProgressExecutor:
    """An executor for `Experiment.run` that evaluates in order and counts finished points."""

    def __init__(self, job: Job):
        self.job = job

    def run(self, experiment, pending):
        self.job.done_at_start = self.job.total - len(pending)
        self.job.done = self.job.done_at_start
        self.job.started = time.time()
        for c, kind in pending:
            if self.job.cancel.is_set():
                raise Cancelled()
            experiment.evaluate(c, kind)
            self.job.done += 1
            yield c
