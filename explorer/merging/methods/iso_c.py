"""Iso-C (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces"): flatten the spectrum of each merged matrix. Not linear in the coefficients.

The task vectors are used as they are (τᵢ′ = τᵢ); at every merge each 2-D tensor's Δ = Σ cᵢ τᵢ, with
thin SVD Δ = UΣVᵀ, becomes mean(σ)·UVᵀ: the same singular vectors, every singular value replaced by their
mean (over all r = min(m, n) of them, zeros included, as in FusionBench's `iso_c`,
fusion_bench/method/isotropic_merging/iso_utils.py). Other tensors keep Δ as it is.

The reference merges θ₀ + α·Iso(Σ τᵢ) with a global α (1.0 in FusionBench's config; tuned on
validation data by the authors, typically ≈ 1.5). mean(σ) is linear in a positive scale, so
Iso(sΔ) = s·Iso(Δ) for s > 0 and that α is the diagonal c = α·(1, …, 1) on the 2-D tensors: no
separate parameter. The reference averages the other tensors
(Σ τᵢ / T, times α); here they are Σ cᵢ τᵢ, which at c = α·(1, …, 1) is T times the reference's.
When Δ has rank below r, the singular vectors of its zero singular values are not unique and the result
depends on the SVD routine (as in the reference). The SVD runs in float64.
"""
from __future__ import annotations

from typing import Mapping

import torch

from explorer.merging.methods.registry import MergeMethod, register


def isotropic(delta: torch.Tensor) -> torch.Tensor:
    """mean(σ)·UVᵀ of a 2-D tensor Δ = UΣVᵀ, in Δ's dtype."""
    if delta.numel() == 0:
        return delta
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    return (s.mean() * (u @ vh)).to(delta.dtype)


@register("iso_c")
class IsoC(MergeMethod):
    title = "Iso-C"
    linear = False

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return stack

    def combine(self, delta: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return isotropic(delta) if delta.ndim == 2 else delta

    def describe(self, params: Mapping) -> str:
        return ("Iso-C (at every merge, each 2-D tensor's Σ cᵢτᵢ = UΣVᵀ becomes mean(σ)·UVᵀ, a flat spectrum; "
                "other tensors Σ cᵢτᵢ)")
