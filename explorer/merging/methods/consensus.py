"""Consensus merging with TALL masks (Wang et al., ICML 2024, "Localizing Task Information for Improved
Model Merging and Compression"): keep only the entries that several tasks need.

With τ_MTL = Σⱼ τⱼ, task i's TALL mask marks the entries where τᵢ matters more than what the other
tasks add: mᵢ = |τᵢ| > λ·|τ_MTL − τᵢ| (elementwise; strict, as in the authors' `generate_task_masks`,
so an entry no task touched counts for none). The consensus mask keeps entries marked by at least k
tasks, Σᵢ mᵢ ≥ k, and every task gets the same mask: τᵢ′ = τᵢ ⊙ consensus, any tensor shape. k = 2
drops "selfish" (one task) and "catastrophic" (no task) entries, k = 1 only the catastrophic ones.

Under MAP the masks are computed once, from the unweighted sum, and frozen; the coefficients then
scale the masked vectors (the reference merges τ_MTL ⊙ consensus with one global α, i.e. c = α·(1, …, 1)).
Defaults: k = 2 (`prun_thre_k: 2` in the authors' config/method/consensus.yaml, github.com/nik-dim/tall_masks);
λ = 0.6 (FusionBench's config/method/tall_mask/task_arithmetic.yaml). The authors pick λ per task on
validation data from {0.2, 0.3, 0.4, 0.5, 0.6}; smaller λ marks more entries. Masks are computed in float64.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping

import torch

from explorer.errors import SpecError
from explorer.merging.methods.registry import CHUNK, MergeMethod, register


def tall_masks(stack: torch.Tensor, mask_lambda: float) -> torch.Tensor:
    """Per-task TALL masks (T, ...), bool: |τᵢ| > λ·|Σⱼ τⱼ − τᵢ|."""
    x = stack.to(torch.float64)
    return x.abs() > mask_lambda * (x.sum(dim=0) - x).abs()


def consensus_mask(stack: torch.Tensor, min_tasks: int, mask_lambda: float) -> torch.Tensor:
    """Entries whose TALL masks agree for at least `min_tasks` tasks (the tensor's shape), bool."""
    return tall_masks(stack, mask_lambda).sum(dim=0) >= min_tasks


def check_consensus(params: Mapping) -> None:
    k = params.get("min_tasks")
    integral = isinstance(k, numbers.Integral) or (isinstance(k, float) and k.is_integer())
    if isinstance(k, bool) or not integral or k < 1:
        raise SpecError(f"merge.min_tasks must be an integer ≥ 1 (how many tasks an entry must matter to), got {k!r}")
    lam = params.get("mask_lambda")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam <= 0:
        raise SpecError(f"merge.mask_lambda must be a finite number > 0, got {lam!r}")


@register("consensus")
class Consensus(MergeMethod):
    title = "consensus (TALL masks)"
    parameters = ("min_tasks", "mask_lambda")
    defaults = {"min_tasks": 2, "mask_lambda": 0.6}

    def check(self, params: Mapping) -> None:
        check_consensus(params)

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        keep = consensus_mask(stack, int(params["min_tasks"]), float(params["mask_lambda"]))
        return torch.where(keep, stack, torch.zeros_like(stack)).to(torch.float32)

    def preprocess_streamed(self, fill, n_tasks: int, shape: tuple, key: str, params: Mapping, emit) -> None:
        """The masks a chunk at a time: every task's elements of one chunk (T chunks of float32), their
        float64 sum and TALL marks counted into a uint8 array, then each piece, produced again chunk by
        chunk, cut to the consensus. Held: one piece, a quarter-piece count and T chunks.
        Bit for bit `preprocess` (the sum is accumulated in the same order)."""
        lam, k = float(params["mask_lambda"]), int(params["min_tasks"])
        n = int(torch.Size(shape).numel())
        parts = torch.empty((n_tasks, min(CHUNK, n)), dtype=torch.float32)
        count = torch.zeros(n, dtype=torch.uint8)
        for s in range(0, n, CHUNK):
            width = min(CHUNK, n - s)
            for i in range(n_tasks):
                fill(i, parts[i, :width], s)
            x = parts[:, :width].to(torch.float64)
            total = torch.zeros(width, dtype=torch.float64)
            for i in range(n_tasks):
                total += x[i]
            for i in range(n_tasks):
                count[s:s + width] += x[i].abs() > lam * (total - x[i]).abs()
        del parts
        piece = torch.empty(shape, dtype=torch.float32)
        flat = piece.view(-1)
        for i in range(n_tasks):
            for s in range(0, n, CHUNK):  # the same ranges as the masks were counted from
                fill(i, flat[s:s + CHUNK], s)
                flat[s:s + CHUNK].masked_fill_(count[s:s + CHUNK] < k, 0)
            emit(i, piece)

    def describe(self, params: Mapping) -> str:
        return (f"consensus TALL masks (task i marks the entries where |τᵢ| > {params['mask_lambda']:g}·|Σⱼτⱼ − τᵢ|; "
                f"entries marked by fewer than {int(params['min_tasks'])} tasks are zeroed in every τᵢ)")
