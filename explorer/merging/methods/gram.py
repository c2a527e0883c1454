"""Top singular triplets of one large 2-D task vector held once in float32, from its Gram matrix.

A dense SVD of an m × n tensor in float64 holds a float64 copy, U, Vᵀ and LAPACK's workspace: about
eight float32 copies of the tensor at once (an LLM's 32000 × 2048 embedding: 2 GB). The SVD-based
methods need only the top k triplets, so when they stream (`preprocess_streamed`) they take them from
the Gram matrix of the short side instead, G = X Xᵀ (m ≤ n) or XᵀX (m > n), accumulated in float64 a
block of the long side at a time: eigenvalues λⱼ = σⱼ², eigenvectors the singular vectors of that
side, the other side's from X itself (V = XᵀU/σ, U = XV/σ), again a block at a time. Precision: the
eigenvectors' error is about ε·σ₁²/(σₖ² − σₖ₊₁²) with ε = 2⁻⁵² (float64), far below float32's
rounding for the triplets the methods keep (their σ are above σ₁·max(m, n)·2⁻²³; tests hold these
methods to 1e-6 of the float64 dense SVD).
"""
from __future__ import annotations

import torch

#: Columns (or rows) of the long side per float64 block.
BLOCK = 256


def short_side_gram(x: torch.Tensor) -> torch.Tensor:
    """X Xᵀ (m ≤ n) or XᵀX (m > n) of a 2-D float32 tensor, float64, a block of the long side at a time."""
    m, n = x.shape
    if m <= n:
        g = torch.zeros((m, m), dtype=torch.float64)
        for s in range(0, n, BLOCK):
            b = x[:, s:s + BLOCK].to(torch.float64)
            g.addmm_(b, b.T)
    else:
        g = torch.zeros((n, n), dtype=torch.float64)
        for s in range(0, m, BLOCK):
            b = x[s:s + BLOCK].to(torch.float64)
            g.addmm_(b.T, b)
    return g


def short_side(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, S): the top k singular vectors of the short side (U when m ≤ n, else V; float64, orthonormal to
    rounding whatever their accuracy) and singular values, from the Gram matrix; non-positive eigenvalues
    (rank below k) are dropped."""
    lam, vecs = torch.linalg.eigh(short_side_gram(x))  # ascending: the top k are the last columns
    top = max(0, lam.numel() - k)
    lam, vecs = lam[top:].flip(0), vecs[:, top:].flip(1)
    keep = int((lam > 0).sum())
    return vecs[:, :keep].contiguous(), lam[:keep].sqrt()


def project_(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x ← the best approximation of x within the span of its short-side singular vectors `w`
    (W Wᵀ X for m ≤ n, X W Wᵀ otherwise; with the top k, LowRankₖ(X)), in place, a block at a time."""
    m, n = x.shape
    if m <= n:
        for c in range(0, n, BLOCK):
            b = x[:, c:c + BLOCK].to(torch.float64)
            x[:, c:c + BLOCK] = w @ (w.T @ b)
    else:
        for r in range(0, m, BLOCK):
            b = x[r:r + BLOCK].to(torch.float64)
            x[r:r + BLOCK] = (b @ w) @ w.T
    return x


def top_singular(x: torch.Tensor, k: int, rank_tol: float, long_out: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U (m, k′), S (k′,), V (n, k′)): the top k′ = min(k, #{σ > σ₁·rank_tol}) singular triplets of the 2-D
    float32 tensor `x`; the short side in float64, the long side (X W / S, a block at a time) in float32,
    written into the first k′ columns of `long_out` when given (no other copy of it)."""
    m, n = x.shape
    w, s = short_side(x, k)
    if s.numel():
        keep = int((s > s[0] * rank_tol).sum())
        w, s = w[:, :keep], s[:keep]
    rows = n if m <= n else m
    out = (long_out if long_out is not None else torch.empty((rows, s.numel()), dtype=torch.float32))[:, : s.numel()]
    for b in range(0, rows, BLOCK):
        block = x[:, b:b + BLOCK].T if m <= n else x[b:b + BLOCK]  # V = XᵀU / S, or U = XV / S
        out[b:b + BLOCK] = block.to(torch.float64) @ w / s
    return (w, s, out) if m <= n else (out, s, w)
