"""DARE: drop each entry with probability 1 − density and rescale the survivors (seeded per tensor)."""
from __future__ import annotations

import zlib
from typing import Mapping

import torch

from explorer.merging.methods.registry import MergeMethod, register
from explorer.merging.methods.ties import check_density


def dare_drop(stack: torch.Tensor, density: float, seed: int, key: str) -> torch.Tensor:
    """DARE on one tensor: drop entries with probability 1 − density, rescale survivors by 1/density."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    keep = torch.rand(stack.shape, generator=gen) < density
    return torch.where(keep, stack / density, torch.zeros_like(stack))


@register("dare")
class Dare(MergeMethod):
    title = "DARE"
    parameters = ("density", "seed")
    defaults = {"density": 0.2, "seed": 0}
    mergekit = "dare_linear"

    def check(self, params: Mapping) -> None:
        check_density(params)

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return dare_drop(stack, params["density"], params["seed"], key)

    def describe(self, params: Mapping) -> str:
        return (f"DARE (seeded masks, seed {params['seed']}: entries dropped with probability {1 - params['density']:g}, "
                f"survivors scaled by 1/{params['density']:g})")
