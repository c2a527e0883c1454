"""Merging checkpoints too large for float32 copies: θ₀ + Σ cᵢ τᵢ computed chunk by chunk from disk.

The classic path (`task_vectors.py` + `merge.py`) holds every task vector in float32: fine for a
CLIP image encoder, 16 bytes per parameter per expert too many for a 7B language model. Here the
task vectors are never materialised at all: τᵢ = θᵢ − θ₀ is formed in float32 one chunk (a few
million elements) at a time from the checkpoints' own bf16/fp16 tensors, and the merged chunk is
written straight into the loaded model's parameter. Two memory modes:

- *resident*: each expert's mergeable tensors stay in memory in their own dtype (memory-mapped
  through safetensors' `safe_open` on the CPU, copied once to the GPU otherwise);
- *streaming*: each merge reads the experts' chunks from disk again (`pread`, double-buffered so
  the next chunk is read while this one is merged), so memory stays at the model plus a few chunks;
  merged chunks are dropped from the page cache at once, so that 3 × 13.5 GB of experts going
  through it at every point (a 7B model) do not push θ₀ out of it.

θ₀ is read from the base checkpoint in both modes (its pages are normally in the OS page cache,
since the model was just loaded from it); holding it would cost one more model's worth of memory.
Large CPU merges (`FUSED_FROM`) run one compiled kernel per chunk that reads θ₀ and the experts
once; resident, θ₀'s chunk is then mapped from the page cache rather than copied.
For TIES and DARE the preprocessing needs a whole tensor (top-k per task, one drop mask per key),
so those methods merge tensor by tensor with the same functions as the classic path.
Reading the files is safetensors_file.py's part.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from explorer.errors import CheckpointError, SpecError
from explorer.merging.task_vectors import coefficient_vector
from explorer.merging.methods import get_method
from explorer.merging.methods.lines import apply_lines, layer_depths
from explorer.merging.safetensors_file import (
    SafetensorsCheckpoint,
    check_same_tensors,
)

#: Elements merged per step: 4 Mi elements = 8 MB per bf16 source, 16 MB float32 accumulator.
CHUNK = 1 << 22
#: Elements per arithmetic step on the CPU: two float32 temporaries of 1 MB fit a core's L2 cache.
CACHE_CHUNK = 1 << 18
#: Most CPU threads doing the arithmetic by default (passes over memory: beyond a few cores the
#: memory bus sets the pace, and evaluation wants cores too).
MAX_WORKERS = 4
#: From this many merged elements on, CPU task-arithmetic merges run one fused kernel per chunk
#: (torch.compile: θ₀ and the experts read once, the float32 sum kept in registers, instead of six
#: passes over a cached piece); measured 2x faster on a 1B model. Smaller models skip the one-off
#: compile (seconds) it costs per process.
FUSED_FROM = 1 << 27
#: Page size used to touch every page of a parameter once (4 KiB on the platforms torch supports).
PAGE = 4096
MODES = ("auto", "resident", "streaming")
#: Kept free besides the resident task vectors (evaluation activations, the allocator, Python).
RESERVE_BYTES = 2 << 30
def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device` (CUDA: free memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_mode(need: int, available: int, requested: str = "auto") -> str:
    """'resident' when the task vectors fit next to a reserve for evaluation, else 'streaming'."""
    if requested not in MODES:
        raise SpecError(f"merge memory mode {requested!r} is not one of {', '.join(MODES)}")
    if requested != "auto":
        return requested
    return "resident" if need + RESERVE_BYTES + need // 10 <= available else "streaming"


def fused_merge(out: torch.Tensor, base: torch.Tensor, experts: list[torch.Tensor], coefficients: torch.Tensor) -> None:
    """out = keep·θ₀ + Σ cᵢ θᵢ in float32, rounded once to out's dtype; `coefficients` = (c₁ … cₙ, keep).
    The same sum, in the same order, as the piece-by-piece path; compiled, it is one pass over memory."""
    acc = base.float() * coefficients[-1]
    for i, x in enumerate(experts):
        acc = acc + x.float() * coefficients[i]
    out.copy_(acc.to(out.dtype))


_COMPILED: dict[int, Callable] = {}


def compiled_merge(threads: int) -> Callable:
    """`fused_merge` compiled, one per thread count: the merge sets torch's threads to `threads`
    around each call, and the compiled code is specialised to the thread count it first ran with."""
    fn = _COMPILED.get(threads)
    if fn is None:
        # dynamic sizes (every tensor ends in a shorter chunk); dynamic_threads keeps the OpenMP loop,
        # which inductor would drop for sizes it cannot see at compile time
        fn = _COMPILED[threads] = torch.compile(fused_merge, dynamic=True, options={"cpp.dynamic_threads": True})
    return fn


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


class StreamingMerger:
    """Writes θ₀ + Σ cᵢ (θᵢ − θ₀) into a loaded model, reading θ₀ and θᵢ in their own dtype.

    target: the module whose parameters (by state-dict key) receive the merge; `keys` are the
    tensors to merge (floating, present in every checkpoint). Same interface as `merge.Merger`:
    `apply(c)`, `merged_state_dict(c)`, plus `iter_merged(c)` for writing one tensor at a time.
    """

    def __init__(self, target: torch.nn.Module, base: SafetensorsCheckpoint, experts: list[SafetensorsCheckpoint],
                 keys: list[str], method: str = "task_arithmetic", density: float = 0.2, seed: int = 0,
                 device: str | torch.device = "cpu", mode: str = "auto", chunk: int = CHUNK,
                 log: Callable[[str], None] | None = None, workers: int | None = None, fused: bool | None = None,
                 params: Mapping | None = None):
        self.params = dict(params) if params else {"method": method, "density": float(density), "seed": int(seed)}
        method = self.params["method"]
        density, seed = self.params.get("density", density), self.params.get("seed", seed)
        self.merge_method = get_method(method)
        self.base, self.experts, self.keys = base, experts, list(keys)
        self.method, self.density, self.seed = method, float(density), int(seed)
        self.depths = layer_depths(self.keys) if self.params.get("lines") else {}
        # a method other than task arithmetic, or LiNeS, needs whole tensors (top-k, masks, SVDs, depth scales);
        # experts preprocessed ahead (merging/preprocessed.py) merge tensor by tensor too, as θ₀ + Σ cᵢ τᵢ′ in
        # mergekit's order, so that exports of those methods stay exact
        self.per_tensor = method != "task_arithmetic" or bool(self.depths) or bool(self.params.get("preprocessed"))
        self.device = torch.device(device)
        self.chunk = int(chunk)
        self.target = target
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._acc: dict[tuple, torch.Tensor] = {}
        self._readers = ThreadPoolExecutor(max_workers=len(experts) + 1, thread_name_prefix="merge-read")
        for ex in experts:
            check_same_tensors(base, ex, self.keys)
        named = dict(target.state_dict(keep_vars=True))
        missing = [k for k in self.keys if k not in named]
        if missing:
            raise CheckpointError(f"{base.name}: tensor {missing[0]!r} has no parameter of that name in the loaded model")
        self.slots = {k: named[k].data if hasattr(named[k], "data") else named[k] for k in self.keys}
        for k, slot in self.slots.items():
            if tuple(slot.shape) != base.entries[k].shape:
                raise CheckpointError(f"{base.name}: tensor {k!r} has shape {base.entries[k].shape}; "
                                      f"the loaded model has {tuple(slot.shape)}")
        self.workers = 1  # threads doing the arithmetic: one on a GPU (one kernel per chunk) and for TIES/DARE
        if self.device.type == "cpu" and method == "task_arithmetic":
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            self.workers = max(1, int(workers) if workers is not None else min(MAX_WORKERS, cores))
        # helpers beside the calling thread; each runs torch single-threaded (an OpenMP team per
        # 256 K-element step would cost more than the step)
        self._compute = (ThreadPoolExecutor(max_workers=self.workers - 1, thread_name_prefix="merge-math",
                                            initializer=torch.set_num_threads, initargs=(1,))
                         if self.workers > 1 else None)
        self._log = log or _stderr
        widths_fit = all(ck.entries[k].dtype.itemsize <= 4 for ck in [base, *experts] for k in self.keys)  # float32 sums
        size = sum(base.entries[k].numel for k in self.keys)
        self.fused = bool(self.device.type == "cpu" and method == "task_arithmetic" and widths_fit
                          and (size >= FUSED_FROM if fused is None else fused))
        self.task_vector_bytes = sum(ex.nbytes(self.keys) for ex in experts)
        self.available = available_memory(self.device)
        self.mode = choose_mode(self.task_vector_bytes, self.available, mode)
        self.resident: list[dict[str, torch.Tensor]] | None = None
        (log or _stderr)(self.describe())
        if self.mode == "resident":
            self.resident = []
            for ex in experts:
                held = ex.mapped(self.keys)
                if self.device.type != "cpu":
                    held = {k: v.to(self.device) for k, v in held.items()}
                self.resident.append(held)
        self.check_finite()
        self._own_target_pages()
        if self.fused:
            self._compile()
        self.coefficients: np.ndarray | None = None

    @torch.no_grad()
    def _own_target_pages(self) -> None:
        """Write to every page of the CPU parameters once, keeping their values.

        transformers leaves a safetensors model's parameters as private memory maps of the file; the
        first write to each page then copies it (a page fault, and a disk read if the page left the
        cache). Paying that here, once, gives every merge point the same cost.
        """
        for slot in self.slots.values():
            if slot.device.type != "cpu" or not slot.is_contiguous() or slot.numel() == 0:
                continue
            raw = slot.view(-1).view(torch.uint8)
            touch = raw[::PAGE]
            touch.copy_(touch.clone())

    @torch.no_grad()
    def _compile(self) -> None:
        """Compile the fused kernel now (setup, not the first point) for every expert taking part; on
        a machine where it cannot be compiled (no C++ compiler), merge piece by piece instead."""
        key = self.keys[0]
        probe = [torch.zeros(64, dtype=ck.entries[key].dtype) for ck in [self.base, *self.experts]]
        out = torch.empty(64, dtype=self.slots[key].dtype)
        started = time.perf_counter()
        try:
            with self._cpu_threads():
                compiled_merge(self.workers)(out, probe[0], probe[1:], torch.zeros(len(self.experts) + 1))
            self._log(f"merge kernel: fused, {self.workers} threads (compiled in {time.perf_counter() - started:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager path is exact too
            self.fused = False
            self._log(f"merge kernel: not compiled ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                      "merging piece by piece")

    def describe(self) -> str:
        where = "RAM" if self.device.type == "cpu" else str(self.device)
        dtypes = sorted({str(self.experts[0].entries[k].dtype).removeprefix("torch.") for k in self.keys})
        size = f"{len(self.experts)} task vectors in {'/'.join(dtypes)}: {_gb(self.task_vector_bytes)}"
        if self.mode == "resident":
            return f"merge memory: resident ({size} held in {where}; {_gb(self.available)} available)"
        return (f"merge memory: streaming ({size} read from disk for each merge; "
                f"{_gb(self.available)} available in {where})")

    # --- reading -----------------------------------------------------------------------------
    def _jobs(self, keys: list[str], active: list[int]) -> list[tuple[str, int, int]]:
        """(key, start, stop) element ranges; whole tensors for TIES/DARE (they need the full tensor)."""
        jobs = []
        for k in keys:
            n = self.base.entries[k].numel
            # streaming reads every source per job: larger jobs keep the disk reads long and sequential
            step = n if self.per_tensor else self.chunk * (4 if self.resident is None else 1)
            jobs.extend((k, s, min(n, s + step)) for s in range(0, n, max(1, step)))
        return jobs

    def _buffer(self, slot: int, source: int, dtype: torch.dtype, n: int) -> torch.Tensor:
        """A reusable host buffer (two sets alternate): fresh allocations would page-fault every chunk."""
        if self.per_tensor:
            return torch.empty(n, dtype=dtype)
        key = (slot, source, dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, min(self.chunk, 1 << 16)), dtype=dtype,
                              pin_memory=self.device.type == "cuda")
            self._buffers[key] = buf
        return buf[:n]

    def _read(self, job, active: list[int], slot: int) -> dict:
        """Host buffers for one job: θ₀'s chunk, and the experts' chunks unless they are resident."""
        key, s, e = job
        n = e - s
        out = {}
        if self.fused:  # θ₀ straight from the page cache: the fused kernel reads it once, nothing is copied
            out["base"], out["mapping"] = self.base.window(key, s, n)
        if self.resident is not None:
            if not self.fused:
                out["base"] = self.base.read_into(key, self._buffer(slot, -1, self.base.entries[key].dtype, n), s)
            return out
        # streaming: the sources are read concurrently (several requests in flight keep a disk busy)
        sources = ([] if self.fused else [(-1, self.base)]) + [(i, self.experts[i]) for i in active]
        reads = [self._readers.submit(ck.read_into, key, self._buffer(slot, i, ck.entries[key].dtype, n), s)
                 for i, ck in sources]
        got = {i: r.result() for (i, _), r in zip(sources, reads)}
        if not self.fused:
            out["base"] = got.pop(-1)
        return out | {"experts": got}

    def _expert_chunk(self, i: int, job, bufs) -> torch.Tensor:
        key, s, e = job
        if self.resident is not None:
            return self.resident[i][key].reshape(-1)[s:e]
        return bufs["experts"][i].to(self.device)

    def _pipeline(self, jobs, active):
        """Yield (job, buffers), reading job j+1 in a thread while the caller merges job j."""
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._read, jobs[0], active, 0)
            for j, job in enumerate(jobs):
                bufs = pending.result()
                if j + 1 < len(jobs):  # buffer set (j+1) % 2 was last used by job j-1, already merged
                    pending = pool.submit(self._read, jobs[j + 1], active, (j + 1) % 2)
                    if j + 2 < len(jobs):
                        pool.submit(self._advise, jobs[j + 2], active)
                yield job, bufs
                mapping = bufs.pop("mapping", None)
                if mapping is not None:
                    bufs.clear()  # the tensor over the window goes first, then the window
                    with contextlib.suppress(BufferError):
                        mapping.close()
                if self.resident is None:  # job j is merged: its expert bytes are not needed before the next point
                    pool.submit(self._forget, job, active)

    def _advise(self, job, active: list[int]) -> None:
        """Ask the OS to start reading a later job's bytes now (asynchronous readahead)."""
        key, s, e = job
        self.base.advise(key, s, e - s)
        if self.resident is None:
            for i in active:
                self.experts[i].advise(key, s, e - s)

    def _forget(self, job, active: list[int]) -> None:
        """Streaming: let the OS drop the experts' pages just merged. They come back only at the next
        point, after all the others: caching them would push out pages that are reused sooner, θ₀'s
        first (read at every point, and in the cache since the model was loaded from it)."""
        key, s, e = job
        for i in active:
            self.experts[i].advise(key, s, e - s, forget=True)

    # --- merging -----------------------------------------------------------------------------
    def _merge_into(self, job, bufs, c: np.ndarray, active: list[int], out: torch.Tensor) -> None:
        """Write the merged chunk into `out` (the parameter's slice, in its dtype), computed in float32
        (float64 if θ₀ is float64)."""
        key = job[0]
        b = bufs["base"].to(self.device)
        acc_dtype = torch.float64 if b.dtype == torch.float64 else torch.float32
        if self.per_tensor:
            out.copy_(self._merge_whole(key, b, bufs, c, acc_dtype).reshape(-1))
            return
        xs = [(self._expert_chunk(i, job, bufs), float(c[i])) for i in active]
        keep = float(1.0 - sum(ci for _, ci in xs))
        if self.fused:
            coefficients = torch.tensor([ci for _, ci in xs] + [keep], dtype=torch.float32)
            compiled_merge(self.workers)(out, b, [x for x, _ in xs], coefficients)
            return
        n = b.numel()
        step = CACHE_CHUNK if self.device.type == "cpu" else max(1, n)
        # the pieces' views made once per job (one call each), not sliced per piece in Python
        b_parts, out_parts = b.split(step), out.split(step)
        x_parts = [(x.split(step), ci, x.dtype.itemsize <= acc_dtype.itemsize) for x, ci in xs]
        pieces = len(b_parts)
        claim = itertools.count()  # next() is atomic under the GIL: idle workers take the next piece

        def work(worker: int) -> None:
            a_full = self._accumulator(acc_dtype, min(step, n), 2 * worker)
            t_full = None
            while (p := next(claim)) < pieces:
                bp = b_parts[p]
                a = a_full[: bp.numel()]
                a.copy_(bp)
                if x_parts:
                    # (1 − Σcᵢ) θ₀ + Σ cᵢ θᵢ  ==  θ₀ + Σ cᵢ (θᵢ − θ₀); at c = eᵢ it is θᵢ bit for bit
                    a.mul_(keep)
                    for parts, ci, widen_in_kernel in x_parts:
                        if widen_in_kernel:
                            a.add_(parts[p], alpha=ci)  # widened exactly inside the kernel: no temporary
                        else:  # a float64 expert into a float32 sum: round it first, as θᵢ in float32
                            if t_full is None:
                                t_full = self._accumulator(acc_dtype, min(step, n), 2 * worker + 1)
                            t = t_full[: bp.numel()]
                            t.copy_(parts[p])
                            a.add_(t, alpha=ci)
                out_parts[p].copy_(a)  # rounded once to the parameter's dtype while the piece is in cache

        helpers = [self._compute.submit(work, w) for w in range(1, min(self.workers, pieces))] if self._compute else []
        try:
            work(0)
        finally:
            for h in helpers:
                h.result()

    def iter_preprocessed(self) -> Iterator[tuple[str, torch.Tensor | None, list[torch.Tensor]]]:
        """(key, θ₀ in float32, [θ₀ + τᵢ′]) per merged tensor, (key, None, [θ₀] * T) for the others, in
        the base's order: τᵢ′ recomputed from the files one tensor at a time, by the method's preprocessing."""
        merged = set(self.keys)
        for key in self.base.entries:
            if key not in merged:
                t = self.base.read(key)
                yield key, None, [t] * len(self.experts)
                continue
            b = self.base.read(key).to(torch.float32)
            stack = torch.stack([ex.read(key).to(torch.float32) - b for ex in self.experts])
            stack = self._preprocess(stack, key)
            yield key, b, [b + stack[i] for i in range(stack.shape[0])]

    def _merge_whole(self, key: str, b: torch.Tensor, bufs, c: np.ndarray, acc_dtype) -> torch.Tensor:
        """TIES / DARE on a whole tensor, with the classic path's preprocessing."""
        base32 = b.to(acc_dtype)
        job = (key, 0, b.numel())
        stack = torch.stack([self._expert_chunk(i, job, bufs).to(acc_dtype) - base32 for i in range(len(self.experts))])
        shape = (len(self.experts), *self.base.entries[key].shape)
        stack = stack.reshape(shape)
        stack = self._preprocess(stack, key)
        ct = torch.as_tensor(c, dtype=acc_dtype, device=self.device)
        if self.merge_method.linear:
            return torch.addmv(base32, stack.reshape(len(self.experts), -1).T, ct)
        delta = (stack.reshape(len(self.experts), -1).T @ ct).reshape(shape[1:])
        return base32 + self.merge_method.combine(delta, key, self.params).reshape(-1)

    def _preprocess(self, stack: torch.Tensor, key: str) -> torch.Tensor:
        """τ′ of one tensor: the method's preprocessing, then LiNeS scaling when it is on."""
        stack = self.merge_method.preprocess(stack, key, self.params)
        return apply_lines(stack, key, self.depths, self.params["lines"]) if self.depths else stack

    def _accumulator(self, dtype: torch.dtype, n: int, which: int) -> torch.Tensor:
        acc = self._acc.get((dtype, which))
        if acc is None or acc.numel() < n:
            acc = torch.empty(max(n, min(self.chunk, 1 << 16)), dtype=dtype, device=self.device)
            self._acc[(dtype, which)] = acc
        return acc[:n]

    @contextmanager
    def _cpu_threads(self):
        """One intra-op thread for CPU merges: each step is a short pass over one cache-sized piece,
        where OpenMP hand-offs cost more than they bring (measured 4-8x slower with 2 threads on a
        busy 2-core machine). Cores are used instead by `workers` threads taking whole pieces, and
        the reader thread overlaps disk reads with them. The fused kernel (large models) is one pass
        per chunk and splits it over `workers` threads itself."""
        if self.device.type != "cpu" or self.per_tensor:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.workers if self.fused else 1)  # the fused kernel splits each chunk itself
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _active(self, c: np.ndarray) -> list[int]:
        if self.per_tensor:
            return list(range(len(self.experts)))
        return [i for i in range(len(self.experts)) if float(c[i]) != 0.0]  # a zero coefficient reads nothing

    def _coefficients(self, coefficients) -> np.ndarray:
        return coefficient_vector(coefficients, len(self.experts))

    @torch.no_grad()
    def apply(self, coefficients) -> None:
        """Set every merged parameter of the target to θ₀ + Σ cᵢ τᵢ (float32 math, cast to its dtype)."""
        c = self._coefficients(coefficients)
        active = self._active(c)
        with self._cpu_threads():
            for job, bufs in self._pipeline(self._jobs(self.keys, active), active):
                key, s, e = job
                self._merge_into(job, bufs, c, active, self.slots[key].view(-1)[s:e])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.coefficients = c.copy()

    @torch.no_grad()
    def iter_merged(self, coefficients) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, CPU tensor in the base's dtype) for every tensor of the base, in file order: merged
        where merged, θ₀ elsewhere. One tensor in memory at a time (for exports)."""
        c = self._coefficients(coefficients)
        active = self._active(c)
        merged = set(self.keys)
        order = sorted(self.base.entries, key=lambda k: (str(self.base.entries[k].file), self.base.entries[k].offset))
        for key in order:
            entry = self.base.entries[key]
            if key not in merged:
                yield key, self.base.read(key)
                continue
            out = torch.empty(entry.numel, dtype=entry.dtype)
            with self._cpu_threads():
                for job, bufs in self._pipeline(self._jobs([key], active), active):
                    self._merge_into(job, bufs, c, active, out[job[1]:job[2]])
            yield key, out.view(entry.shape)

    def merged_state_dict(self, coefficients, base=None) -> dict[str, torch.Tensor]:
        """Every tensor merged at `coefficients`, in one dict (small models; exports stream instead)."""
        return dict(self.iter_merged(coefficients))

    # --- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def check_finite(self) -> None:
        """Refuse NaN/inf in any merged tensor of the base or an expert (one pass over the data).

        A chunk's float32 sum is finite unless the chunk holds NaN/inf (or overflows, which the
        exact test below then clears): one cheap reduction instead of an elementwise test.
        """
        with self._cpu_threads():
            for ck in [self.base, *self.experts]:
                idx = self.experts.index(ck) if ck is not self.base else None
                for key in self.keys:
                    n = ck.entries[key].numel
                    for s in range(0, n, self.chunk):
                        e = min(n, s + self.chunk)
                        if idx is not None and self.resident is not None:
                            part = self.resident[idx][key].reshape(-1)[s:e]
                        else:
                            part = ck.read_into(key, self._buffer(0, -2, ck.entries[key].dtype, e - s), s)
                        wide = self._accumulator(torch.float32, e - s, 1)
                        wide.copy_(part)
                        if not bool(torch.isfinite(wide.sum())) and not bool(torch.isfinite(part).all()):
                            raise CheckpointError(f"{ck.name}: tensor {key!r} contains NaN or inf")

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        if self._compute is not None:
            self._compute.shutdown(wait=True)
        self.resident = None
        for ck in [self.base, *self.experts]:
            ck.close()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
