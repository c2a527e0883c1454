"""Reading safetensors files without loading them: headers, tensor windows, page-cache hints.

A merge of a large model reads the same tensors at every point, from the base and from every
expert; `SafetensorsCheckpoint` knows where each tensor's bytes lie (`read_header`), reads one
tensor or one chunk of it (`pread`, or a memory map of the page cache for θ₀), and tells the OS
which pages it will not need again.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explorer.errors import CheckpointError
from explorer.merging.checkpoints import checkpoint_files

MAX_HEADER = 100 << 20

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie: file, absolute byte offset, dtype, shape."""

    file: Path
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse a safetensors header (8-byte little-endian length, then JSON) without reading data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: unreadable safetensors file (header is not a mapping)")
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            begin, end = (int(v) for v in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {key!r} has an unsupported or malformed header entry") from None
        entry = TensorEntry(path, 8 + n + begin, end - begin, dtype, shape)
        if end < begin or entry.offset + entry.nbytes > size or entry.nbytes != entry.numel * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {key!r} lies outside the file or has the wrong size (truncated?)")
        out[key] = entry
    return out


class SafetensorsCheckpoint:
    """A (single or sharded) safetensors checkpoint indexed by tensor name; data read on demand."""

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        self.path = Path(path)
        self.name = name or str(path)
        files = checkpoint_files(self.path)
        bad = [f for f in files if f.suffix != ".safetensors"]
        if bad:
            raise CheckpointError(
                f"{bad[0]}: large-model merges read safetensors only; convert it once with "
                "transformers (model.save_pretrained(dir, safe_serialization=True))"
            )
        self.entries: dict[str, TensorEntry] = {}
        for f in files:
            self.entries.update(read_header(f))
        if not self.entries:
            raise CheckpointError(f"{self.name}: checkpoint holds no tensors")
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return list(self.entries)

    def _fd(self, file: Path) -> int:
        with self._lock:
            fd = self._fds.get(file)
            if fd is None:
                try:
                    fd = os.open(file, os.O_RDONLY)
                except OSError as exc:
                    raise CheckpointError(f"{file}: cannot read it ({exc.strerror})") from None
                self._fds[file] = fd
            return fd

    def read_into(self, key: str, out: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Fill the flat CPU tensor `out` with elements [start, start + out.numel()) of tensor `key`."""
        e = self.entries[key]
        item = e.dtype.itemsize
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        offset, done, want = e.offset + start * item, 0, out.numel() * item
        fd = self._fd(e.file)
        while done < want:
            try:
                got = os.preadv(fd, [view[done:want]], offset + done)
            except OSError as exc:
                raise CheckpointError(f"{e.file}: reading tensor {key!r} failed ({exc.strerror})") from None
            if got <= 0:
                raise CheckpointError(f"{e.file}: tensor {key!r} is truncated")
            done += got
        return out

    def advise(self, key: str, start: int, n: int, forget: bool = False) -> None:
        """Hint that elements [start, start + n) of `key` will be read soon, or with `forget`, that they
        will not be read again soon (their page-cache pages can go first). No-op where unsupported."""
        if not hasattr(os, "posix_fadvise"):
            return
        e = self.entries[key]
        try:
            os.posix_fadvise(self._fd(e.file), e.offset + start * e.dtype.itemsize, n * e.dtype.itemsize,
                             os.POSIX_FADV_DONTNEED if forget else os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

    def window(self, key: str, start: int, n: int) -> tuple[torch.Tensor, "mmap.mmap"]:
        """Elements [start, start + n) of `key` mapped read-only from the page cache, with no copy:
        (tensor, mapping). Closing the mapping once the tensor is dropped unmaps it, so resident
        memory never holds more of the file than the windows in use."""
        e = self.entries[key]
        item = e.dtype.itemsize
        begin = e.offset + start * item
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # map every page in one call
        try:
            mapping = mmap.mmap(self._fd(e.file), begin - aligned + n * item, flags=flags, prot=mmap.PROT_READ,
                                offset=aligned)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{e.file}: cannot map tensor {key!r} ({exc})") from None
        with warnings.catch_warnings():  # read-only on purpose: nothing writes through it
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.frombuffer(mapping, dtype=e.dtype, count=n, offset=begin - aligned)
        return tensor, mapping

    def read(self, key: str) -> torch.Tensor:
        """One whole tensor, read into fresh memory (not memory-mapped)."""
        e = self.entries[key]
        out = torch.empty(e.numel, dtype=e.dtype)
        return self.read_into(key, out).view(e.shape)

    def mapped(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Tensors memory-mapped through safetensors' `safe_open` (pages load on first touch)."""
        from safetensors import SafetensorError, safe_open

        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.entries[k].file, []).append(k)
        out = {}
        for file, names in by_file.items():
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for k in names:
                        out[k] = handle.get_tensor(k)
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{file}: unreadable safetensors file ({str(exc).splitlines()[0]})") from None
        return out

    def nbytes(self, keys: list[str]) -> int:
        return sum(self.entries[k].nbytes for k in keys)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):  # file descriptors only; nothing to flush
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def check_same_tensors(base: SafetensorsCheckpoint, other: SafetensorsCheckpoint, keys: list[str]) -> None:
    """Same names and shapes as the base for every tensor (one line naming the first that differs)."""
    for k in keys:
        if k not in other.entries:
            raise CheckpointError(f"{other.name}: tensor {k!r} of the base {base.name} is missing")
    extra = [k for k in other.entries if k not in base.entries]
    if extra:
        raise CheckpointError(f"{other.name}: tensor {extra[0]!r} is not in the base {base.name}")
    for k in keys:
        a, b = base.entries[k], other.entries[k]
        if a.shape != b.shape:
            raise CheckpointError(f"{other.name}: tensor {k!r} has shape {b.shape}; base {base.name} has {a.shape}")
        if not b.dtype.is_floating_point:
            raise CheckpointError(f"{other.name}: tensor {k!r} is {b.dtype}; the base's is floating ({a.dtype})")


