"""Task vectors τᵢ = θᵢ − θ₀, preprocessed by a merge method (explorer/merging/methods/).

Computed once per run; only floating tensors are merged (integer position ids, masks and
counters stay the base's). TIES and DARE change the vectors, not the merge rule, so MAP's
per-task coefficients still apply: θ(c) = θ₀ + Σ cᵢ τᵢ'.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from explorer.errors import SpecError
from explorer.merging.methods import get_method


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

    def iter_preprocessed(self, base: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor | None, list]]:
        """(key, θ₀ in float32, [θ₀ + τᵢ′]) per merged tensor, (key, None, [θ₀] * T) for the others,
        in the base's order: the preprocessed experts, one tensor at a time."""
        for key, t in base.items():
            if key in self.vectors:
                b = t.to(torch.float32)
                yield key, b, [b + self.vectors[key][i] for i in range(self.vectors[key].shape[0])]
            else:
                yield key, None, [t] * self.n_tasks


def mergeable_keys(base: dict[str, torch.Tensor], prefix: str | None = None) -> list[str]:
    """Floating tensors (optionally under `prefix`), in the base's order."""
    keys = [k for k, t in base.items() if t.is_floating_point() and (not prefix or k.startswith(prefix))]
    if not keys:
        where = f" under prefix {prefix!r}" if prefix else ""
        raise SpecError(f"the base checkpoint has no floating tensors{where} to merge")
    return keys


def compute_task_vectors(
    base: dict[str, torch.Tensor],
    finetuned: list[dict[str, torch.Tensor]],
    method: str = "task_arithmetic",
    density: float = 0.2,
    seed: int = 0,
    prefix: str | None = None,
) -> TaskVectors:
    """Stack τᵢ for every mergeable tensor and apply the method's preprocessing (merging/methods/)."""
    params = {"method": method, "density": density, "seed": seed}
    merge_method = get_method(method)
    merge_method.check(params)
    keys = mergeable_keys(base, prefix)
    vectors = {}
    for key in keys:
        b = base[key].to(torch.float32)
        stack = torch.stack([ft[key].to(torch.float32) - b for ft in finetuned])
        vectors[key] = merge_method.preprocess(stack, key, params).contiguous()
    return TaskVectors(keys=keys, vectors=vectors)
