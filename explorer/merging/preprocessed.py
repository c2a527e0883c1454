"""Preprocessed experts on disk: a merge method's τᵢ′ computed once, tensor by tensor, for streamed models.

A method other than task arithmetic needs whole tensors of every task at once (top-k, masks, SVDs),
which a streaming merge would otherwise redo at every point. Here it runs once per experiment: each
merged tensor of the base and the experts is read, preprocessed (LiNeS scaling included) and written
as θ₀ + τᵢ′ in float32 to one safetensors file per expert, so peak memory is one tensor's T pieces.
Later merges are task arithmetic over these files, tensor by tensor as θ₀ + Σ cᵢ τᵢ′ (mergekit's
order, so exports stay exact), with no preprocessing at any point; a second engine finds them by content: the folder is named by the experiment's content key and complete only
when its `done.json` names the same key.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import torch

from explorer.merging.hf_folder import SafetensorsStreamWriter
from explorer.merging.methods import get_method
from explorer.merging.methods.lines import apply_lines, layer_depths
from explorer.merging.safetensors_file import SafetensorsCheckpoint
from explorer.version import __version__

DONE = "done.json"


def needs_preprocessing(params: Mapping) -> bool:
    """Linear methods whose τᵢ′ is not θᵢ − θ₀ (TIES, DARE, TSV-M, CART, consensus, LiNeS)."""
    return get_method(params["method"]).linear and (params["method"] != "task_arithmetic" or bool(params.get("lines")))


def preprocessed_experts(base: SafetensorsCheckpoint, experts: list[SafetensorsCheckpoint], keys: list[str],
                         params: Mapping, folder: Path, key: str, log=None,
                         depth_keys: list[str] | None = None) -> list[SafetensorsCheckpoint]:
    """θ₀ + τᵢ′ per expert (float32 where merged, θ₀ as it is elsewhere) under `folder`, written once
    for the content key `key` and reused after; returns them as checkpoints a streaming merge reads.
    `depth_keys`: the tensors LiNeS depths are counted over, when not `keys` (LoRA experts merge only
    their targets, at the depths full experts would have)."""
    folder = Path(folder)
    paths = [folder / f"expert-{i}.safetensors" for i in range(len(experts))]
    done = folder / DONE
    try:
        complete = json.loads(done.read_text()).get("key") == key and all(p.is_file() for p in paths)
    except (OSError, ValueError):
        complete = False
    if not complete:
        _write(base, experts, keys, params, folder, paths, key, log, depth_keys)
    return [SafetensorsCheckpoint(p, f"{ex.name} (preprocessed: {params['method']})") for p, ex in zip(paths, experts)]


def _write(base, experts, keys, params, folder: Path, paths: list[Path], key: str, log, depth_keys=None) -> None:
    method = get_method(params["method"])
    merged = set(keys)
    depths = layer_depths(depth_keys or keys) if params.get("lines") else {}
    order = sorted(base.entries, key=lambda k: (str(base.entries[k].file), base.entries[k].offset))
    specs = [(k, torch.float32 if k in merged else base.entries[k].dtype, tuple(base.entries[k].shape)) for k in order]
    tmp = folder.with_name(folder.name + f".partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if log:
        log(f"preprocessing the experts once ({method.title}): {len(keys)} tensors into {folder}")
    meta = {"format": "pt", "merge-explorer": __version__, "method": json.dumps(dict(params), sort_keys=True)}
    writers = [SafetensorsStreamWriter(tmp / p.name, specs, meta) for p in paths]
    try:
        for k in order:
            b = base.read(k)
            if k not in merged:
                for w in writers:
                    w.append(k, b)
                continue
            b = b.to(torch.float32)
            stack = method.preprocess(torch.stack([ex.read(k).to(torch.float32) - b for ex in experts]), k, params)
            if depths:
                stack = apply_lines(stack, k, depths, params["lines"])
            for i, w in enumerate(writers):
                w.append(k, (b + stack[i]).contiguous())
        for w in writers:
            w.close()
    finally:
        for w in writers:
            w.fh.close()
    (tmp / DONE).write_text(json.dumps({"key": key, "params": dict(params)}, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
