"""LiNeS: scale each task vector's update by the depth of its layer (placeholder until the full module lands)."""
from __future__ import annotations

import re
from typing import Mapping

from explorer.errors import SpecError
from explorer.merging.methods.registry import MergeMethod, register

_BLOCK = re.compile(r"(?:^|\.)(?:resblocks|layers|layer|blocks|block|h)\.(\d+)\.")


def layer_depths(keys: list[str]) -> dict[str, float]:
    """Each key's depth in [0, 1]: block ℓ of L gets ℓ / (L − 1); keys before the blocks 0, after them 1."""
    index = {k: (int(m.group(1)) if (m := _BLOCK.search(k)) else None) for k in keys}
    found = sorted({i for i in index.values() if i is not None})
    if not found:
        return {k: 1.0 for k in keys}
    span = max(found[-1] - found[0], 1)
    out, seen_block = {}, False
    for k in keys:
        if index[k] is not None:
            seen_block = True
            out[k] = (index[k] - found[0]) / span
        else:
            out[k] = 1.0 if seen_block else 0.0
    return out


def lines_scale(depth: float, params: Mapping) -> float:
    return float(params["alpha"]) + float(params["beta"]) * depth


def apply_lines(stack, key: str, depths: Mapping[str, float], params: Mapping):
    return stack * lines_scale(depths.get(key, 1.0), params)


@register("lines")
class Lines(MergeMethod):
    defaults = {"alpha": 0.5, "beta": 0.5}

    def check(self, params: Mapping) -> None:
        for k in ("alpha", "beta"):
            if k in params and params[k] is not None and params[k] < 0:
                raise SpecError(f"merge.lines.{k} must be ≥ 0, got {params[k]}")
