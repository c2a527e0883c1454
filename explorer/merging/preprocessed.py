"""Preprocessed experts on disk: a merge method's τᵢ′ computed once, tensor by tensor, for streamed models.

A method other than task arithmetic needs whole tensors of every task at once (top-k, masks, SVDs),
which a streaming merge would otherwise redo at every point. Here it runs once per experiment: each
merged tensor of the base and the experts is read, preprocessed (LiNeS scaling included) and written
as θ₀ + τᵢ′ in float32 to one safetensors file per expert, so peak memory is one tensor's T pieces.
Later merges are task arithmetic over these files, tensor by tensor as θ₀ + Σ cᵢ τᵢ′ (mergekit's
order, so exports stay exact), with no preprocessing at any point; a second engine finds them by
content: the folder is named by the experiment's content key and complete only when its `done.json`
names the same key. Memory: less than one tensor's T pieces in float32, as each method's
`preprocess_streamed` produces pieces, or chunks of them, again where needed (DARE: one piece, TIES:
two, consensus: one and a quarter-piece count, CART: τ̄ and one, TSV-M: one and the stacked singular
vectors; a method without its own keeps the T pieces); everything else moves in CHUNK-sized pieces.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import torch

from explorer.merging.hf_folder import SafetensorsStreamWriter
from explorer.merging.methods import get_method
from explorer.merging.methods.lines import apply_lines_, layer_depths
from explorer.merging.methods.registry import CHUNK
from explorer.merging.safetensors_file import SafetensorsCheckpoint
from explorer.version import __version__

DONE = "done.json"


def needs_preprocessing(params: Mapping) -> bool:
    """Linear methods whose τᵢ′ is not θᵢ − θ₀ (TIES, DARE, TSV-M, CART, consensus, LiNeS)."""
    return get_method(params["method"]).linear and (params["method"] != "task_arithmetic" or bool(params.get("lines")))


def preprocessed_experts(base: SafetensorsCheckpoint, experts: list[SafetensorsCheckpoint], keys: list[str],
                         params: Mapping, folder: Path, key: str, log=None,
                         depth_keys: list[str] | None = None, merged_only: bool = False) -> list[SafetensorsCheckpoint]:
    """θ₀ + τᵢ′ per expert (float32 where merged, θ₀ as it is elsewhere) under `folder`, written once
    for the content key `key` and reused after; returns them as checkpoints a streaming merge reads.
    `depth_keys`: the tensors LiNeS depths are counted over, when not `keys` (LoRA experts merge only
    their targets, at the depths full experts would have). `merged_only`: write the `keys` only (LoRA
    experts, whose merge reads nothing else back), not θ₀'s other tensors per expert."""
    folder = Path(folder)
    paths = [folder / f"expert-{i}.safetensors" for i in range(len(experts))]
    done = folder / DONE
    try:
        complete = json.loads(done.read_text()).get("key") == key and all(p.is_file() for p in paths)
    except (OSError, ValueError):
        complete = False
    if not complete:
        _write(base, experts, keys, params, folder, paths, key, log, depth_keys, merged_only)
    return [SafetensorsCheckpoint(p, f"{ex.name} (preprocessed: {params['method']})") for p, ex in zip(paths, experts)]


def _write(base, experts, keys, params, folder: Path, paths: list[Path], key: str, log, depth_keys=None,
           merged_only: bool = False) -> None:
    method = get_method(params["method"])
    merged = set(keys)
    depths = layer_depths(depth_keys or keys) if params.get("lines") else {}
    order = sorted(merged if merged_only else base.entries,
                   key=lambda k: (str(base.entries[k].file), base.entries[k].offset))
    specs = [(k, torch.float32 if k in merged else base.entries[k].dtype, tuple(base.entries[k].shape)) for k in order]
    tmp = folder.with_name(folder.name + f".partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if log:
        log(f"preprocessing the experts once ({method.title}): {len(keys)} tensors into {folder}")
    meta = {"format": "pt", "merge-explorer": __version__, "method": json.dumps(dict(params), sort_keys=True)}
    writers = [SafetensorsStreamWriter(tmp / p.name, specs, meta) for p in paths]
    reader = ChunkReader()
    try:
        for k in order:
            if k not in merged:  # θ₀ as it is, copied through in chunks
                for w in writers:
                    w.append_parts(k, reader.chunks(base, k))
                continue
            def fill(i: int, out: torch.Tensor, start: int = 0, k=k) -> None:
                task_vector_into(experts[i], base, k, out, reader, start)

            def emit(i: int, piece: torch.Tensor, k=k) -> None:  # θ₀ + τᵢ′, θ₀ added a chunk at a time
                if depths:
                    apply_lines_(piece[None], k, depths, params["lines"])
                flat = piece.view(-1)
                for start, part in reader.float_chunks(base, k):
                    flat[start:start + part.numel()].add_(part)
                writers[i].append(k, piece)

            method.preprocess_streamed(fill, len(experts), tuple(base.entries[k].shape), k, params, emit)
            release_freed_memory()
        for w in writers:
            w.close()
    finally:
        for w in writers:
            w.fh.close()
    (tmp / DONE).write_text(json.dumps({"key": key, "params": dict(params)}, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)


def release_freed_memory() -> None:
    """Hand the allocator's freed heap pages back to the system (glibc's malloc_trim): the chunk-sized
    temporaries of one tensor's preprocessing would otherwise stay resident beside the next tensor's T
    pieces. A no-op where there is no glibc."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def task_vector_into(expert, base: SafetensorsCheckpoint, key: str, out: torch.Tensor, reader: "ChunkReader",
                     start: int = 0) -> None:
    """τ = θ_expert − θ₀ of one tensor written into `out` (float32: the tensor's shape, or flat for its
    elements [start, start + out.numel())): from an expert's own `task_vector_into` (LoRA: s·B·A from
    the factors), else a chunk at a time from its file."""
    own = getattr(expert, "task_vector_into", None)
    if own is not None:
        own(key, out, start)
        return
    flat = out.view(-1)
    stop = start + flat.numel()
    for at, part in reader.float_chunks(expert, key, start, stop):
        flat[at - start:at - start + part.numel()].copy_(part)
    for at, part in reader.float_chunks(base, key, start, stop):
        flat[at - start:at - start + part.numel()].sub_(part)


class ChunkReader:
    """Reads tensors from safetensors checkpoints in chunks into reused buffers (one per dtype)."""

    def __init__(self, chunk: int = CHUNK):
        self.chunk = chunk
        self._raw: dict[torch.dtype, torch.Tensor] = {}
        self._wide: dict[torch.dtype, torch.Tensor] = {}

    def _buffer(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._raw:
            self._raw[dtype] = torch.empty(self.chunk, dtype=dtype)
        return self._raw[dtype]

    def chunks(self, ck: SafetensorsCheckpoint, key: str, start: int = 0, stop: int | None = None):
        """Flat pieces of tensor `key` (elements [start, stop)) in its own dtype (each valid until the next is read)."""
        e = ck.entries[key]
        stop = e.numel if stop is None else stop
        buf = self._buffer(e.dtype)
        for at in range(start, stop, self.chunk):
            yield ck.read_into(key, buf[: min(self.chunk, stop - at)], at)

    def float_chunks(self, ck, key: str, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.float32):
        """(element index, flat piece in `dtype`) of tensor `key` from `start` to `stop`; a checkpoint without
        `read_into` is read whole."""
        if not hasattr(ck, "read_into"):
            whole = ck.read(key).reshape(-1)
            stop = whole.numel() if stop is None else stop
            for at in range(start, stop, self.chunk):
                yield at, whole[at:min(at + self.chunk, stop)].to(dtype)
            return
        at = start
        for part in self.chunks(ck, key, start, stop):
            if part.dtype != dtype:
                if dtype not in self._wide:
                    self._wide[dtype] = torch.empty(self.chunk, dtype=dtype)
                part = self._wide[dtype][: part.numel()].copy_(part)
            yield at, part
            at += part.numel()
