"""What the app server was started with, and what it allows: arguments, environment, spec refusals."""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from explorer.errors import SpecError
from explorer.experiment.spec import load_spec

REPO_ROOT = Path(__file__).resolve().parent.parent.parent  # explorer/app_state/arguments.py -> the repository
DEFAULT_SPEC = REPO_ROOT / "examples" / "demo.yaml"
SPEC_ENV = "MERGE_EXPLORER_SPEC"
STORE_ENV = "MERGE_EXPLORER_STORE"
PRESENT_ENV = "MERGE_EXPLORER_PRESENT"
WORKSPACE_ENV = "MERGE_EXPLORER_WORKSPACE"
TRUST_PICKLE_ENV = "MERGE_EXPLORER_TRUST_PICKLE"
DOWNLOAD_LIMIT_ENV = "MERGE_EXPLORER_DOWNLOAD_LIMIT"
#: Largest merged checkpoint offered as a download: a download is built in the server's memory and
#: held by the browser session, so larger ones (language models) are written on the server instead.
DOWNLOAD_LIMIT_BYTES = 2 << 30
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


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


def file_signature(path: Path) -> tuple:
    """(path, mtime, size): a cache key that changes when the file is edited."""
    try:
        st = Path(path).stat()
        return str(Path(path).resolve()), st.st_mtime_ns, st.st_size
    except OSError:
        return str(path), 0, 0


@functools.lru_cache(maxsize=64)
def _asks_for_pickle(signature: tuple) -> bool:
    """Whether the spec file (this version of it: path, mtime, size) sets model.trust_pickle."""
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
