"""CART (Choi et al. 2024, "Revisiting Weight Averaging for Model Merging"): low-rank task vectors
centred on the experts' mean, as per-task shares of the merge.

CART merges θ̄ + Σᵢ LowRankₖ(θᵢ − θ̄) with θ̄ the mean of the experts. Here τ̄ = mean of the τᵢ
(θ̄ = θ₀ + τ̄) and, for every 2-D tensor,

    τᵢ′ = τ̄ / T + LowRankₖ(τᵢ − τ̄),   k = max(1, ⌊rank_ratio · r⌋), r = min(m, n)

(LowRankₖ: the truncated SVD), so θ(c) = θ₀ + Σ cᵢ τᵢ′ is CART's merge at c = (1, …, 1) and θ₀ at
c = 0. Tensors that are not 2-D get the same split without truncation, τᵢ′ = τ̄ / T + (τᵢ − τ̄):
at c = (1, …, 1) they are θ̄, as in the authors' code (where Σᵢ(θᵢ − θ̄) = 0), and at c = eᵢ
they are θ₀ + τᵢ − (T−1)/T·τ̄.

From the authors' code (github.com/JH-GEECS/CART, `src/merging.py`): k = max(1, int(ratio · r)) (a floor;
a ratio of 1 keeps every triplet), applied to each task's deviation from the mean. Their static configs
use the rank ratio 0.12 with a prior (coefficient on Σ LowRank, θ̄ kept at weight 1) of 2.0 for
ViT-B/32 × 8 tasks and `initial_merge_rank_ratio` 0.08 with coefficient 1.0 as the starting point of
their adaptive variant; the default here is 0.08. A prior p ≠ 1 (θ̄ + p·Σ LowRank) is not on MAP's
diagonal c = (s, …, s), which scales θ̄ − θ₀ too. Their code truncates only attention/MLP weight
matrices (keys with "attn"/"mlp", without "ln"/"bias"); here every 2-D tensor is truncated (positional
embeddings and projections too). SVDs run in float64; the result is float32. On streamed models
(`preprocess_streamed`) the truncation is the projection onto the top-k singular vectors of the short
side, taken from its Gram matrix (gram.py), with τ̄ and one piece held instead of the T pieces. For LoRA experts the
SVDs run on the small cores of the factors (merging/lora.py): a rank k above the deviation's rank
(≤ Σ rᵢ) keeps it whole, as the dense truncation does up to zero singular values.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping

import torch

from explorer.errors import SpecError
from explorer.merging.methods.gram import project_, short_side
from explorer.merging.methods.registry import CHUNK, MergeMethod, register


def cart_rank(r: int, rank_ratio: float) -> int:
    """Triplets kept: max(1, ⌊rank_ratio · r⌋), at most r (the small epsilon absorbs 0.29·100 = 28.999…)."""
    return min(r, max(1, int(math.floor(rank_ratio * r + 1e-9))))


def low_rank(x: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-k approximation of a 2-D tensor (truncated SVD), in x's dtype."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


def cart_pieces(stack: torch.Tensor, rank_ratio: float, shape: tuple | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """τᵢ′ = τ̄/T + LowRankₖ(τᵢ − τ̄) (2-D) or τ̄/T + τᵢ − τ̄ (other shapes), in `dtype`. `shape`: the
    tensor's (m, n) when `stack` holds cores of larger low-rank task vectors (k comes from it)."""
    t = stack.shape[0]
    x = stack.to(torch.float64)
    mean = x.mean(dim=0)
    deviation = x - mean
    if x.ndim == 3 and x.numel():
        k = cart_rank(min(shape or x.shape[1:]), rank_ratio)
        deviation = torch.stack([low_rank(deviation[i], k) for i in range(t)])
    return (mean / t + deviation).to(dtype)


def mean_of_pieces(fill, n_tasks: int, shape: tuple) -> torch.Tensor:
    """τ̄ of pieces that `fill(i, out, start)` produces by ranges: float32, summed in float64 a chunk at a time."""
    n = int(torch.Size(shape).numel())
    mean = torch.empty(shape, dtype=torch.float32)
    flat = mean.view(-1)
    part = torch.empty(min(CHUNK, n), dtype=torch.float32)
    for s in range(0, n, CHUNK):
        width = min(CHUNK, n - s)
        total = torch.zeros(width, dtype=torch.float64)
        for i in range(n_tasks):
            fill(i, part[:width], s)
            total += part[:width]
        flat[s:s + width] = total / n_tasks
    return mean


def check_rank_ratio(params: Mapping) -> None:
    v = params.get("rank_ratio")
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 < float(v) <= 1.0:
        raise SpecError(f"merge.rank_ratio must be a number in (0, 1], got {v!r}")


@register("cart")
class Cart(MergeMethod):
    title = "CART"
    parameters = ("rank_ratio",)
    defaults = {"rank_ratio": 0.08}

    def check(self, params: Mapping) -> None:
        check_rank_ratio(params)

    equivariant = True

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return cart_pieces(stack, float(params["rank_ratio"]))

    def preprocess_core(self, cores: torch.Tensor, shape: tuple, key: str, params: Mapping) -> torch.Tensor:
        return cart_pieces(cores, float(params["rank_ratio"]), shape, dtype=torch.float64)

    def preprocess_streamed(self, fill, n_tasks: int, shape: tuple, key: str, params: Mapping, emit) -> None:
        """Two pieces held, not the stack: τ̄ (float32, summed in float64 a chunk at a time), then per task
        τᵢ − τ̄ in place, its top-k singular vectors of the short side from the Gram matrix (gram.py),
        the projection onto them in place, + τ̄/T. Within float32 rounding of `preprocess`."""
        if len(shape) != 2 or 0 in shape:
            return super().preprocess_streamed(fill, n_tasks, shape, key, params, emit)
        mean = mean_of_pieces(fill, n_tasks, shape)
        k = cart_rank(min(shape), float(params["rank_ratio"]))
        piece = torch.empty(shape, dtype=torch.float32)
        for i in range(n_tasks):
            fill(i, piece)
            piece.sub_(mean)
            project_(piece, short_side(piece, k)[0])
            emit(i, piece.add_(mean, alpha=1.0 / n_tasks))

    def describe(self, params: Mapping) -> str:
        return (f"CART (τ̄ = mean of the τᵢ; per 2-D tensor τᵢ′ = τ̄/T + the rank-max(1, ⌊{params['rank_ratio']:g}·r⌋) "
                f"truncated SVD of τᵢ − τ̄, other tensors τ̄/T + τᵢ − τ̄; c = 1 gives θ̄ + Σ LowRank(θᵢ − θ̄))")
