"""What a stored result depends on besides the merged weights: the evaluator, its code, its data.

Every evaluation in the store is keyed by the experiment's content key and a task identity; the
identity covers the evaluator's path and version (an explicit `version` attribute, else a hash
of its module's source), its params and the bytes of every file they name, its data
fingerprint, the device kind and the precision it computes in.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

from explorer.errors import SpecError
from explorer.merging.checkpoints import file_digest


def resolve_callable(path: str, what: str = "callable"):
    """Import `package.module:function`, with errors that name the part that failed."""
    if ":" not in path:
        raise SpecError(f"{what} {path!r} must look like 'package.module:function'")
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{what} {path!r}: cannot import module {module_name!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{what} {path!r} is not callable")
    return obj


def digest(obj) -> str:
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


def previous_versions(fn) -> tuple[str, ...]:
    """Versions an evaluator had before (its `previous_versions` attribute): the store serves results
    measured under them, e.g. the source hash of a suite whose code moved without changing what it measures."""
    return tuple(str(v) for v in getattr(fn, "previous_versions", ()) or ())
