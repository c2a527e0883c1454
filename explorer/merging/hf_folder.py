"""Exporting a merged language model as a Hugging Face folder, one tensor in memory at a time.

A 7B merge is 14 GB in bf16: it is never built as one in-memory state dict. The shard layout
and every safetensors header are planned from the base's tensor metadata first (names, dtypes,
shapes are known before any merge), then each tensor is merged (explorer.merging.streaming) and its
bytes appended to its shard. Config, generation config and tokenizer files are copied from the
base folder, so the result loads with `AutoModelForCausalLM.from_pretrained(folder)`.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from explorer.version import __version__

DEFAULT_SHARD_BYTES = 2 << 30
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
DTYPE_CODES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
for _attr, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _attr):
        DTYPE_CODES[getattr(torch, _attr)] = _code


def plan_shards(entries: dict, order: list[str], max_bytes: int) -> list[list[str]]:
    """Consecutive keys grouped into shards of at most `max_bytes` (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key in order:
        n = entries[key].nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


class SafetensorsStreamWriter:
    """Writes a safetensors file whose header is known up front; tensors are appended in order."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict = {"__metadata__": metadata}
        offset = 0
        self.expected = []
        for key, dtype, shape in specs:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
            header[key] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.expected.append((key, dtype, tuple(shape)))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        self.fh = open(path, "wb")
        self.fh.write(struct.pack("<Q", len(raw)) + raw)
        self.next = 0

    def append(self, key: str, tensor: torch.Tensor) -> None:
        want_key, dtype, shape = self.expected[self.next]
        if key != want_key or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"tensor {key!r} ({tensor.dtype}, {tuple(tensor.shape)}) arrives where {want_key!r} "
                               f"({dtype}, {shape}) was planned")
        self._write(tensor)
        self.next += 1

    def append_parts(self, key: str, parts) -> None:
        """Tensor `key` from consecutive flat pieces (an iterable of tensors), so that a large tensor is
        copied through without ever being whole in memory."""
        want_key, dtype, shape = self.expected[self.next]
        want = int(np.prod(shape, dtype=np.int64))
        got = 0
        for part in parts:
            if key != want_key or part.dtype != dtype:
                raise RuntimeError(f"tensor {key!r} ({part.dtype}) arrives where {want_key!r} ({dtype}) was planned")
            self._write(part)
            got += part.numel()
        if got != want:
            raise RuntimeError(f"tensor {key!r}: {got} elements written where {shape} was planned")
        self.next += 1

    def _write(self, tensor: torch.Tensor) -> None:
        self.fh.write(memoryview(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()))

    def close(self) -> None:
        self.fh.close()
        if self.next != len(self.expected):
            raise RuntimeError(f"{self.fh.name}: {len(self.expected) - self.next} planned tensors were not written")


def copy_side_files(base_dir: Path, out: Path) -> list[Path]:
    """config.json, generation_config.json, tokenizer files...: everything in the base folder but weights."""
    copied = []
    for f in sorted(base_dir.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.endswith(".index.json"):
            shutil.copy2(f, out / f.name)
            copied.append(out / f.name)
    return copied


def write_merged_folder(merger, base_dir: Path, coefficients, out_dir: str | Path, max_shard_bytes: int | None = None,
                        progress: bool = False) -> Path:
    """The merge of a `StreamingMerger` at `coefficients` as a Hugging Face folder in `out_dir` (created),
    with the side files (config, tokenizer) of the base folder `base_dir`.

    Shards hold at most `max_shard_bytes` of tensor data; by default as much as the base's
    largest shard, so the merged folder is sharded like the base.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*.safetensors")) + list(out.glob("*.index.json")):
        stale.unlink()  # an earlier export with another shard count must not leave shards behind
    copy_side_files(base_dir, out)
    entries = merger.base.entries
    order = sorted(entries, key=lambda k: (str(entries[k].file), entries[k].offset))
    if max_shard_bytes is None:
        per_file: dict = {}
        for e in entries.values():
            per_file[e.file] = per_file.get(e.file, 0) + e.nbytes
        max_shard_bytes = max(per_file.values()) if len(per_file) > 1 else DEFAULT_SHARD_BYTES
    shards = plan_shards(entries, order, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    metadata = {"format": "pt", "merge-explorer": __version__,
                "coefficients": json.dumps([float(c) for c in np.asarray(coefficients, dtype=float)])}
    shard_of = {k: i for i, keys in enumerate(shards) for k in keys}
    writers: dict[int, SafetensorsStreamWriter] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="export", unit="tensor", dynamic_ncols=True)
    try:
        for key, tensor in merger.iter_merged(coefficients):
            i = shard_of[key]
            if i not in writers:
                for j in list(writers):  # shards are written one after the other
                    writers.pop(j).close()
                writers[i] = SafetensorsStreamWriter(
                    out / names[i], [(k, entries[k].dtype, entries[k].shape) for k in shards[i]], metadata)
            writers[i].append(key, tensor)
            if bar:
                bar.update(1)
        for j in list(writers):
            writers.pop(j).close()
    finally:
        for w in writers.values():
            w.fh.close()
        if bar:
            bar.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(entries[k].nbytes for k in order)},
                 "weight_map": {k: names[shard_of[k]] for k in order}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
