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
not the mean). All SVDs run in float64 (the result is float32); a task vector of rank below k makes the
stacked vectors, and so the result, depend on the SVD routine's choice of null-space vectors, as in the
reference.
"""
from __future__ import annotations

from typing import Mapping

import torch

from explorer.merging.methods.registry import MergeMethod, register


def tsv_rank(r: int, n_tasks: int) -> int:
    """Triplets kept per task: max(1, ⌊r / T⌋)."""
    return max(1, r // n_tasks)


def nearest_orthonormal(a: torch.Tensor) -> torch.Tensor:
    """PQᵀ for a = PΣQᵀ (thin SVD): the orthogonal polar factor of `a`."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv_pieces(stack: torch.Tensor) -> torch.Tensor:
    """Per-task TSV-M pieces of one 2-D tensor's stacked task vectors (T, m, n), float32."""
    t, m, n = stack.shape
    if stack.numel() == 0:
        return stack.to(torch.float32)
    k = tsv_rank(min(m, n), t)
    lefts, values, rights = [], [], []
    for i in range(t):  # one task at a time: the full SVD of a large matrix is the memory peak
        u, s, vh = torch.linalg.svd(stack[i].to(torch.float64), full_matrices=False)
        lefts.append(u[:, :k])
        values.append(s[:k])
        rights.append(vh[:k].T)
    u_orth = nearest_orthonormal(torch.cat(lefts, dim=1))   # (m, Tk), task i's block at columns ik..(i+1)k
    v_orth = nearest_orthonormal(torch.cat(rights, dim=1))  # (n, Tk)
    u_blocks = u_orth.reshape(m, t, k).permute(1, 0, 2)      # (T, m, k)
    v_blocks = v_orth.reshape(n, t, k).permute(1, 0, 2)      # (T, n, k)
    s = torch.stack(values)                                  # (T, k)
    return torch.einsum("tmk,tk,tnk->tmn", u_blocks, s, v_blocks).to(torch.float32)


@register("tsv")
class TaskSingularVectors(MergeMethod):
    title = "TSV-M"
    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        if stack.ndim != 3:
            return stack.to(torch.float32)
        return tsv_pieces(stack)

    def describe(self, params: Mapping) -> str:
        return ("TSV-M (per 2-D tensor: each τᵢ keeps its top max(1, ⌊r/T⌋) singular triplets, the stacked "
                "singular vectors of all tasks are orthogonalised (U⊥ = PQᵀ, same for V), τᵢ′ = U⊥,ᵢ Sᵢ V⊥,ᵢᵀ; "
                "other tensors keep τᵢ)")
