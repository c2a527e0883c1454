"""TSV-M (Task Singular Vectors, merge; Gargiulo et al., CVPR 2025) as per-task shares of the merge.

For every 2-D tensor, each task vector τᵢ = UᵢSᵢVᵢᵀ keeps its top k = max(1, ⌊r/T⌋) singular
triplets (r = min(m, n), T tasks). The kept left vectors of all tasks are stacked, Û = [U₁,ₖ … U_T,ₖ]
(m × Tk), and replaced by the nearest matrix with orthonormal columns, U⊥ = PQᵀ where Û = PΣQᵀ;
the same for V̂. Task i's share is its block: τᵢ′ = U⊥,ᵢ diag(Sᵢ,ₖ) V⊥,ᵢᵀ, so Σᵢ τᵢ′ = U⊥ŜV⊥ᵀ is the
TSV-M merge and MAP's cᵢ scales task i's own singular values: θ(c) = θ₀ + Σ cᵢ τᵢ′ (c = (1, …, 1) is
TSV-M with α = 1; the reference's global α is c = α·(1, …, 1) on the 2-D tensors). FusionBench
(`fusion_bench/method/task_singular_vector/utils/TSVM_utils.py`, `compute_and_sum_svd_mem_reduction`)
and the authors' code use k = int(r/T), which is 0 when T > r; here at least one triplet is kept. When
Tk > m the stacked vectors cannot all be orthonormal and U⊥ is the partial isometry PQᵀ.

Tensors that are not 2-D (biases, norms, embeddings of other ranks, conv kernels) keep each task's τᵢ
as it is. The reference averages them (every task weighted 1/T); kept per task, MAP's coefficient scales
each task's own update, and at c = eᵢ those tensors equal expert i's (at c = (1, …, 1) they are the sum,
not the mean). All SVDs run in float64 (the result is float32); on streamed models
(`preprocess_streamed`) each task's top triplets come from its Gram matrix and the stacked vectors'
polar factor from theirs (gram.py), one piece and the float32 stacks held instead of the T pieces.

Rank-deficient task vectors (revision 2): a task keeps kᵢ = min(k, rank τᵢ) triplets, the rank counted
at float32 precision (singular values above σ₁·max(m, n)·2⁻²³). The reference keeps k regardless; below
the rank the extra "singular vectors" of a zero singular value are whatever null-space basis the SVD
routine returns, and stacked with the other tasks' they move the orthogonalisation of every kept vector,
so the merge would depend on the LAPACK build. For the same reason the stacked vectors' polar factor is
taken on their range: where the stack is rank-deficient (singular values ≤ 1e-6·σ₁, e.g. an
embedding whose padding row no task changed, with Tk = m) the SVD's PQᵀ would add a direction of the
routine's choosing. This matters for LoRA experts (rank r ≪ k: their pieces
are computed from the factors' small cores, merging/lora.py) and for a zero task vector (kᵢ = 0, no
piece); generic full fine-tunes have rank ≥ k and are unchanged.
"""
from __future__ import annotations

from typing import Mapping

import torch

from explorer.merging.methods.gram import BLOCK, top_singular
from explorer.merging.methods.registry import MergeMethod, register


def tsv_rank(r: int, n_tasks: int) -> int:
    """Triplets kept per task: max(1, ⌊r / T⌋)."""
    return max(1, r // n_tasks)


#: Singular values of the stacked singular vectors below this share of the largest count as zero: their
#: directions are not determined by the stack (the SVD routine's choice), so the polar factor leaves them out.
POLAR_TOL = 1e-6


def nearest_orthonormal(a: torch.Tensor) -> torch.Tensor:
    """PQᵀ for a = PΣQᵀ (thin SVD): the orthogonal polar factor of `a`, on its range where `a` is rank-deficient
    (singular values ≤ POLAR_TOL·σ₁ left out)."""
    p, s, qh = torch.linalg.svd(a, full_matrices=False)
    keep = s > s[:1].clamp_min(0) * POLAR_TOL if s.numel() else s > 0
    return p[:, keep] @ qh[keep]


def numerical_rank(s: torch.Tensor, shape: tuple) -> int:
    """Singular values `s` (descending) above s₁·max(m, n)·2⁻²³: the rank at float32 precision."""
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > s[0] * max(shape) * 2.0 ** -23).sum())


def polar_(a: torch.Tensor) -> torch.Tensor:
    """`nearest_orthonormal` of a tall float32 matrix in place, through its K × K Gram matrix (float64):
    a ← a W Λ^(-1/2) Wᵀ over the eigenvalues above POLAR_TOL² of the largest: `nearest_orthonormal`'s PQᵀ."""
    if a.shape[1] == 0:
        return a
    g = torch.zeros((a.shape[1], a.shape[1]), dtype=torch.float64)
    for r in range(0, a.shape[0], BLOCK):
        b = a[r:r + BLOCK].to(torch.float64)
        g.addmm_(b.T, b)
    lam, w = torch.linalg.eigh(g)
    del g
    keep = lam > lam.max().clamp_min(0) * POLAR_TOL ** 2
    w = w[:, keep]
    inv_sqrt = (w / lam[keep].sqrt()) @ w.T
    del w
    for r in range(0, a.shape[0], BLOCK):
        a[r:r + BLOCK] = a[r:r + BLOCK].to(torch.float64) @ inv_sqrt
    return a


def tsv_pieces(stack: torch.Tensor, shape: tuple | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-task TSV-M pieces of one 2-D tensor's stacked task vectors (T, m, n), in `dtype`.
    `shape`: the tensor's (m, n) when `stack` holds cores of larger low-rank task vectors (k and the
    rank tolerance come from it)."""
    t, m, n = stack.shape
    shape = tuple(shape or (m, n))
    if stack.numel() == 0:
        return stack.to(dtype)
    k = tsv_rank(min(shape), t)
    lefts, values, rights = [], [], []
    for i in range(t):  # one task at a time: the full SVD of a large matrix is the memory peak
        u, s, vh = torch.linalg.svd(stack[i].to(torch.float64), full_matrices=False)
        ki = min(k, numerical_rank(s, shape))
        lefts.append(u[:, :ki])
        values.append(s[:ki])
        rights.append(vh[:ki].T)
    out = torch.zeros((t, m, n), dtype=torch.float64)
    if sum(v.numel() for v in values) == 0:
        return out.to(dtype)
    u_orth = nearest_orthonormal(torch.cat(lefts, dim=1))   # (m, Σkᵢ), task i's block after the others'
    v_orth = nearest_orthonormal(torch.cat(rights, dim=1))  # (n, Σkᵢ)
    start = 0
    for i, s in enumerate(values):
        block = slice(start, start + s.numel())
        torch.matmul(u_orth[:, block] * s, v_orth[:, block].T, out=out[i])
        start += s.numel()
    return out.to(dtype)


@register("tsv")
class TaskSingularVectors(MergeMethod):
    title = "TSV-M"
    equivariant = True
    revision = 2  # kᵢ = min(k, rank τᵢ)

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        if stack.ndim != 3:
            return stack.to(torch.float32)
        return tsv_pieces(stack)

    def preprocess_core(self, cores: torch.Tensor, shape: tuple, key: str, params: Mapping) -> torch.Tensor:
        return tsv_pieces(cores, shape, dtype=torch.float64)

    def preprocess_streamed(self, fill, n_tasks: int, shape: tuple, key: str, params: Mapping, emit) -> None:
        """No stack and no dense SVD: each task's top triplets from its Gram matrix (gram.py, one piece
        held), the stacked singular vectors (float32, at most one piece's size on each side)
        orthogonalised through their own Gram matrix, then each piece U⊥,ᵢ Sᵢ V⊥,ᵢᵀ a block of rows at
        a time. Within float32 rounding of `preprocess`."""
        if len(shape) != 2 or 0 in shape:
            return super().preprocess_streamed(fill, n_tasks, shape, key, params, emit)
        k, tol = tsv_rank(min(shape), n_tasks), max(shape) * 2.0 ** -23
        m, n = shape
        piece = torch.empty(shape, dtype=torch.float32)
        # the long side's vectors straight into their stack (float32, T·k columns at most: one piece)
        stack_long = torch.empty((max(m, n), n_tasks * k), dtype=torch.float32)
        shorts, values, used = [], [], 0
        for i in range(n_tasks):
            fill(i, piece)
            u, sv, v = top_singular(piece, k, tol, stack_long[:, used:])
            shorts.append((u if m <= n else v).to(torch.float32))
            values.append(sv)
            used += sv.numel()
        stack_long = stack_long[:, :used]
        stack_short = torch.cat(shorts, dim=1)
        del shorts, piece  # no piece is held while the stacks are orthogonalised
        u_orth = polar_(stack_short if m <= n else stack_long)
        v_orth = polar_(stack_long if m <= n else stack_short)
        piece = torch.empty(shape, dtype=torch.float32)
        start = 0
        for i, sv in enumerate(values):
            cols = slice(start, start + sv.numel())
            right = v_orth[:, cols].to(torch.float64).T
            for r in range(0, shape[0], BLOCK):
                piece[r:r + BLOCK] = (u_orth[r:r + BLOCK, cols].to(torch.float64) * sv) @ right
            start += sv.numel()
            emit(i, piece)

    def describe(self, params: Mapping) -> str:
        return ("TSV-M (per 2-D tensor: each τᵢ keeps its top min(max(1, ⌊r/T⌋), rank τᵢ) singular triplets, the "
                "stacked singular vectors of all tasks are orthogonalised (U⊥ = PQᵀ, same for V), τᵢ′ = U⊥,ᵢ Sᵢ V⊥,ᵢᵀ; "
                "other tensors keep τᵢ)")
