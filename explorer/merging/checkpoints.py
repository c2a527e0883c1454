"""Loading checkpoints safely, hashing them by content, and checking them against the base.

Supported: `.safetensors` (single file, or sharded with a `*.safetensors.index.json`), torch
state dicts (`.pt`, `.pth`, `.bin`, `.ckpt`) loaded with `weights_only=True`, open_clip
checkpoints (a `state_dict` entry, a `module.` prefix), and Hugging Face model directories.
Pickled whole modules are refused unless the caller explicitly trusts the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from explorer.errors import CheckpointError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CONVERT_HINT = (
    "it holds a pickled module, which can run arbitrary code when loaded; convert it once where you trust it: "
    "python -c \"import torch, safetensors.torch as s; m = torch.load('IN', weights_only=False); "
    "s.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, 'OUT.safetensors')\", "
    "or pass --trust-pickle"
)


def _resolve_dir(path: Path) -> list[Path]:
    """The weight files of a Hugging Face style directory (sharded index first)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{index}: not a valid shard index ({type(exc).__name__}: {exc})") from None
            if not names or not all(isinstance(n, str) and n and "/" not in n and n not in (".", "..") for n in names):
                raise CheckpointError(f"{index}: weight_map must name shard files in {path}")
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise CheckpointError(f"{index}: shard {missing[0]!r} is missing")
            return [path / name for name in names]
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (path / name).exists():
            return [path / name]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    raise CheckpointError(f"{path}: directory holds no model.safetensors, shard index or pytorch_model.bin")


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The files that make up one checkpoint (several for sharded ones)."""
    p = Path(path)
    try:
        if not p.exists():
            raise CheckpointError(f"{p}: checkpoint file not found")
        if p.is_dir():
            return _resolve_dir(p)
        if not p.is_file():  # a device or a pipe would be read forever
            raise CheckpointError(f"{p}: not a regular file")
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if p.name.endswith(".index.json"):
        return _resolve_dir(p.parent)
    return [p]


def _load_file(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({str(exc).splitlines()[0]})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        msg = str(exc)
        if "weights_only" in msg or "Unsupported global" in msg or "WeightsUnpickler" in msg:
            raise CheckpointError(f"{path}: {CONVERT_HINT}") from None
        raise CheckpointError(f"{path}: unreadable checkpoint ({msg.splitlines()[0] if msg else type(exc).__name__})") from None
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return obj


def load_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load every tensor of a checkpoint into one CPU state dict (keys without a `module.` prefix)."""
    state: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(path):
        state.update(_load_file(f, trust_pickle))
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not state:
        raise CheckpointError(f"{path}: checkpoint holds no tensors")
    return state


def check_finite(state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse checkpoints with NaN or inf in a floating tensor (they poison every merge)."""
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{name}: tensor {key!r} contains NaN or inf")


def check_compatible(base: dict[str, torch.Tensor], other: dict[str, torch.Tensor], name: str, base_name: str) -> None:
    """Same keys and shapes as the base, or a message naming the first offending tensor."""
    missing = [k for k in base if k not in other]
    if missing:
        raise CheckpointError(f"{name}: tensor {missing[0]!r} of the base {base_name} is missing")
    extra = [k for k in other if k not in base]
    if extra:
        raise CheckpointError(f"{name}: tensor {extra[0]!r} is not in the base {base_name}")
    for key, t in base.items():
        if tuple(other[key].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{name}: tensor {key!r} has shape {tuple(other[key].shape)}; base {base_name} has {tuple(t.shape)}"
            )


RACY_S = 1.0  # a file changed this recently may change again within one timestamp tick: not cached


def file_signature(path: Path) -> str:
    """The cache key of one file's current state: path, size, mtime, ctime and inode.

    A rewrite that keeps the size and restores the mtime still changes the ctime (and an atomic
    replace changes the inode), so a cached digest is served only for the very same bytes.
    """
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def file_digest(path: Path, cache=None) -> str:
    """SHA-256 of one file's bytes, served from `cache` only when the file's signature is unchanged."""
    try:
        key = file_signature(path)
        st = path.stat()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from None
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return cached
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror})") from None
    digest = h.hexdigest()
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_S * 1e9
    if cache is not None and settled:
        cache[key] = digest
    return digest


def content_hash(path: str | os.PathLike, cache=None) -> str:
    """SHA-256 over the bytes of every file of a checkpoint (sharded ones in name order).

    `cache` (a dict, or the store's hash cache) maps a file's signature (path, size, mtime_ns,
    ctime_ns, inode) to its digest, so unchanged multi-GB files are hashed once and a changed one
    is always hashed again.
    """
    digest = hashlib.sha256()
    for f in checkpoint_files(path):
        digest.update(file_digest(f, cache).encode())
    return digest.hexdigest()
