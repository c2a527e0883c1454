"""TIES: keep each task's largest entries, elect one sign per entry, drop the entries that disagree."""
from __future__ import annotations

from typing import Mapping

import torch

from explorer.errors import SpecError
from explorer.merging.methods.registry import MergeMethod, register


def check_density(params: Mapping) -> None:
    if not 0.0 < params["density"] <= 1.0:
        raise SpecError(f"merge.density must be in (0, 1], got {params['density']}")


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


@register("ties")
class Ties(MergeMethod):
    title = "TIES"
    parameters = ("density",)
    defaults = {"density": 0.2}
    mergekit = "ties"

    def check(self, params: Mapping) -> None:
        check_density(params)

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return ties_trim_and_elect(stack, params["density"])

    def describe(self, params: Mapping) -> str:
        return (f"TIES (per tensor: each τᵢ keeps its top {params['density']:g} fraction by magnitude, the sign is "
                f"elected from the unweighted sum of the trimmed vectors, entries of the other sign are dropped)")
