"""TIES: keep each task's largest entries, elect one sign per entry, drop the entries that disagree."""
from __future__ import annotations

from typing import Mapping

import torch

from explorer.errors import SpecError
from explorer.merging.methods.registry import CHUNK, MergeMethod, register


def check_density(params: Mapping) -> None:
    if not 0.0 < params["density"] <= 1.0:
        raise SpecError(f"merge.density must be in (0, 1], got {params['density']}")


#: Integers with the bit layout of each float type: non-negative floats order like their bits.
_BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def kth_largest_magnitude(x: torch.Tensor, k: int, chunk: int = CHUNK) -> torch.Tensor:
    """The k-th largest |x| (1 ≤ k ≤ x.numel()), exactly, with chunk-sized temporaries.

    A radix select over the bit patterns of |x|, one byte per pass from the top: each pass counts
    the next byte of the entries that share the bytes fixed so far. `kthvalue` would sort a copy of
    the whole tensor and keep its indices: three layers' worth of memory for one."""
    flat = x.reshape(-1)
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} outside 1..{n}")
    itype = _BITS[flat.dtype]
    nbits = flat.element_size() * 8
    prefix = 0
    for shift in range(nbits - 8, -1, -8):
        counts = torch.zeros(256, dtype=torch.int64)
        for start in range(0, n, chunk):
            bits = flat[start:start + chunk].abs().view(itype)
            if shift + 8 < nbits:  # only the entries whose higher bytes are the ones fixed so far
                bits = bits[(bits >> (shift + 8)) == (prefix >> (shift + 8))]
            counts += torch.bincount(((bits >> shift) & 255).to(torch.int64), minlength=256)
        at_least = counts.flip(0).cumsum(0)  # at_least[j]: entries whose byte is ≥ 255 − j
        j = int(torch.searchsorted(at_least, k))
        digit = 255 - j
        k -= int(at_least[j] - counts[digit])  # the entries above this byte come first
        prefix |= digit << shift
    return torch.tensor(prefix, dtype=itype).view(flat.dtype)


def _trim_(piece: torch.Tensor, threshold: torch.Tensor, chunk: int = CHUNK) -> None:
    """Zero the entries of one task's piece below its magnitude threshold, a chunk at a time."""
    flat = piece.view(-1)
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk]
        part.masked_fill_(part.abs() < threshold, 0)


def ties_streamed(fill, n_tasks: int, shape: tuple, density: float, emit, chunk: int = CHUNK) -> None:
    """TIES with two pieces in memory instead of T: each trimmed τᵢ is added to a running sum (the
    elected sign is the sum's), then each τᵢ is produced again, trimmed and cut to the elected sign.
    Same result as `ties_trim_and_elect` (the sum is accumulated in the same order)."""
    piece = torch.empty(shape, dtype=torch.float32)
    total = torch.zeros(shape, dtype=torch.float32)
    n = piece.numel()
    k = max(1, int(round(density * n)))
    thresholds = []
    for i in range(n_tasks):
        fill(i, piece)
        thresholds.append(kth_largest_magnitude(piece, k, chunk) if k < n else None)
        if thresholds[-1] is not None:
            _trim_(piece, thresholds[-1], chunk)
        total.add_(piece)
    elected = total.view(-1)
    for i in range(n_tasks):
        fill(i, piece)
        if thresholds[i] is not None:
            _trim_(piece, thresholds[i], chunk)
        flat = piece.view(-1)
        for start in range(0, n, chunk):
            part = flat[start:start + chunk]
            part.masked_fill_(torch.sign(part) != torch.sign(elected[start:start + chunk]), 0)
        emit(i, piece)


def ties_trim_and_elect_(stack: torch.Tensor, density: float, chunk: int = CHUNK) -> torch.Tensor:
    """TIES on one contiguous tensor (T, ...), in place: keep each task's top-`density` magnitudes,
    elect a sign per entry from the trimmed sum, zero the entries of the other sign."""
    t = stack.shape[0]
    flat = stack.view(t, -1)
    n = flat.shape[1]
    k = max(1, int(round(density * n)))
    if k < n:
        for i in range(t):
            _trim_(flat[i], kth_largest_magnitude(flat[i], k, chunk), chunk)
    for start in range(0, n, chunk):
        part = flat[:, start:start + chunk]
        elected = torch.sign(part.sum(dim=0, keepdim=True))
        part.masked_fill_(torch.sign(part) != elected, 0)
    return stack


def ties_trim_and_elect(stack: torch.Tensor, density: float) -> torch.Tensor:
    """TIES on one tensor, leaving `stack` as it is."""
    return ties_trim_and_elect_(stack.clone(memory_format=torch.contiguous_format), density)


@register("ties")
class Ties(MergeMethod):
    title = "TIES"
    parameters = ("density",)
    defaults = {"density": 0.2}
    mergekit = "ties"

    def check(self, params: Mapping) -> None:
        check_density(params)

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return ties_trim_and_elect(stack, params["density"])

    def preprocess_(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return ties_trim_and_elect_(stack, params["density"])

    def preprocess_streamed(self, fill, n_tasks: int, shape: tuple, key: str, params: Mapping, emit) -> None:
        ties_streamed(fill, n_tasks, shape, params["density"], emit)

    def describe(self, params: Mapping) -> str:
        return (f"TIES (per tensor: each τᵢ keeps its top {params['density']:g} fraction by magnitude, the sign is "
                f"elected from the unweighted sum of the trimmed vectors, entries of the other sign are dropped)")
