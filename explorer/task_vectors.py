"""Task vectors τᵢ = θᵢ − θ₀ and the preprocessing methods that sit under MAP's coefficients.

Computed once per run; only floating tensors are merged (integer position ids, masks and
counters stay the base's). TIES and DARE change the vectors, not the merge rule, so MAP's
per-task coefficients still apply: θ(c) = θ₀ + Σ cᵢ τᵢ'.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from .errors import SpecError

METHODS = ("task_arithmetic", "ties", "dare")


@dataclass
class TaskVectors:
    """Stacked task vectors per merged tensor: `vectors[key]` has shape (T, *base[key].shape), float32."""

    keys: list[str]
    vectors: dict[str, torch.Tensor]

    @property
    def n_tasks(self) -> int:
        return next(iter(self.vectors.values())).shape[0] if self.vectors else 0

    def numel(self) -> int:
        return sum(v.numel() for v in self.vectors.values())


def mergeable_keys(base: dict[str, torch.Tensor], prefix: str | None = None) -> list[str]:
    """Floating tensors (optionally under `prefix`), in the base's order."""
    keys = [k for k, t in base.items() if t.is_floating_point() and (not prefix or k.startswith(prefix))]
    if not keys:
        where = f" under prefix {prefix!r}" if prefix else ""
        raise SpecError(f"the base checkpoint has no floating tensors{where} to merge")
    return keys


def ties_trim_and_elect(stack: torch.Tensor, density: float) -> torch.Tensor:
    """TIES on one tensor: keep each task's top-`density` magnitudes, elect a sign, drop disagreeing entries."""
    t = stack.shape[0]
    flat = stack.reshape(t, -1)
    k = max(1, int(round(density * flat.shape[1])))
    if k < flat.shape[1]:
        threshold = flat.abs().kthvalue(flat.shape[1] - k + 1, dim=1, keepdim=True).values
        flat = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
    elected = torch.sign(flat.sum(dim=0, keepdim=True))
    agree = torch.sign(flat) == elected
    return torch.where(agree, flat, torch.zeros_like(flat)).reshape(stack.shape)


def dare_drop(stack: torch.Tensor, density: float, seed: int, key: str) -> torch.Tensor:
    """DARE on one tensor: drop entries with probability 1 − density, rescale survivors by 1/density."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    keep = torch.rand(stack.shape, generator=gen) < density
    return torch.where(keep, stack / density, torch.zeros_like(stack))


def compute_task_vectors(
    base: dict[str, torch.Tensor],
    finetuned: list[dict[str, torch.Tensor]],
    method: str = "task_arithmetic",
    density: float = 0.2,
    seed: int = 0,
    prefix: str | None = None,
) -> TaskVectors:
    """Stack τᵢ for every mergeable tensor and apply the method's preprocessing."""
    if method not in METHODS:
        raise SpecError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "task_arithmetic" and not 0.0 < density <= 1.0:
        raise SpecError(f"merge density must be in (0, 1], got {density}")
    keys = mergeable_keys(base, prefix)
    vectors = {}
    for key in keys:
        b = base[key].to(torch.float32)
        stack = torch.stack([ft[key].to(torch.float32) - b for ft in finetuned])
        if method == "ties":
            stack = ties_trim_and_elect(stack, density)
        elif method == "dare":
            stack = dare_drop(stack, density, seed, key)
        vectors[key] = stack.contiguous()
    return TaskVectors(keys=keys, vectors=vectors)
