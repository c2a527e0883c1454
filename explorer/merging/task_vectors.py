"""Task vectors τᵢ = θᵢ − θ₀, preprocessed by a merge method (explorer/merging/methods/).

Computed once per run; only floating tensors are merged (integer position ids, masks and
counters stay the base's). TIES and DARE change the vectors, not the merge rule, so MAP's
per-task coefficients still apply: θ(c) = θ₀ + Σ cᵢ τᵢ'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import torch

from explorer.errors import SpecError
from explorer.merging.methods import get_method
from explorer.merging.methods.lines import apply_lines, layer_depths


@dataclass
class TaskVectors:
    """Stacked task vectors per merged tensor: `vectors[key]` has shape (T, *base[key].shape), float32."""

    keys: list[str]
    vectors: dict[str, torch.Tensor]
    params: dict = field(default_factory=lambda: {"method": "task_arithmetic"})  # how they were made

    def combine(self, key: str, delta: torch.Tensor) -> torch.Tensor:
        """The merged update of tensor `key` from Σ cᵢ τᵢ′ (itself for the linear methods; Iso-C flattens it)."""
        method = get_method(self.params["method"])
        return delta if method.linear else method.combine(delta, key, self.params)

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
    params: Mapping | None = None,
    prefix: str | None = None,
) -> TaskVectors:
    """Stack τᵢ for every mergeable tensor and apply the method's preprocessing (merging/methods/),
    then LiNeS layer scaling when `params` has `lines`. `params`: the merge parameters
    ({"method": ..., its parameters, optional "lines"}, see `methods.merge_parameters`)."""
    params = dict(params or {"method": "task_arithmetic"})
    merge_method = get_method(params["method"])
    merge_method.check(params)
    keys = mergeable_keys(base, prefix)
    depths = layer_depths(keys) if params.get("lines") else {}
    vectors = {}
    for key in keys:
        b = base[key].to(torch.float32)
        stack = torch.stack([ft[key].to(torch.float32) - b for ft in finetuned])
        stack = merge_method.preprocess(stack, key, params)
        if depths:
            stack = apply_lines(stack, key, depths, params["lines"])
        vectors[key] = stack.contiguous()
    return TaskVectors(keys=keys, vectors=vectors, params=params)


def coefficient_vector(coefficients, n_tasks: int) -> np.ndarray:
    """The merge coefficients as a flat float64 vector of one per task (the mergers' shared check)."""
    c = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if c.shape != (n_tasks,):
        raise ValueError(f"expected {n_tasks} coefficients, got shape {np.shape(coefficients)}")
    return c
