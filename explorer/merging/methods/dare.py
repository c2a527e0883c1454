"""DARE: drop each entry with probability 1 − density and rescale the survivors (seeded per tensor)."""
from __future__ import annotations

import zlib
from typing import Mapping

import torch

from explorer.merging.methods.registry import CHUNK, MergeMethod, register
from explorer.merging.methods.ties import check_density


def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def _drop_(flat: torch.Tensor, density: float, gen: torch.Generator, chunk: int = CHUNK) -> None:
    """Drop and rescale a flat tensor in place, drawing its uniforms from `gen` in chunks: the same
    stream, hence the same mask, as one draw over the whole tensor."""
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk]
        drop = torch.rand(part.numel(), generator=gen) >= density
        part.div_(density).masked_fill_(drop, 0)


def dare_drop_(stack: torch.Tensor, density: float, seed: int, key: str, chunk: int = CHUNK) -> torch.Tensor:
    """DARE on one contiguous tensor, in place: drop entries with probability 1 − density, rescale the
    survivors by 1/density; one generator seeded by (seed, key) draws for the whole stack."""
    _drop_(stack.view(-1), density, _generator(seed, key), chunk)
    return stack


def dare_drop(stack: torch.Tensor, density: float, seed: int, key: str) -> torch.Tensor:
    """DARE on one tensor, leaving `stack` as it is."""
    return dare_drop_(stack.clone(memory_format=torch.contiguous_format), density, seed, key)


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

    def preprocess_(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return dare_drop_(stack, params["density"], params["seed"], key)

    def preprocess_streamed(self, fill, n_tasks: int, shape: tuple, key: str, params: Mapping, emit) -> None:
        """One piece at a time: the stack's draws are task after task, so one generator serves them in order."""
        gen = _generator(params["seed"], key)
        piece = torch.empty(shape, dtype=torch.float32)
        for i in range(n_tasks):
            fill(i, piece)
            _drop_(piece.view(-1), params["density"], gen)
            emit(i, piece)

    def describe(self, params: Mapping) -> str:
        return (f"DARE (seeded masks, seed {params['seed']}: entries dropped with probability {1 - params['density']:g}, "
                f"survivors scaled by 1/{params['density']:g})")
