"""LiNeS (Wang et al., ICLR 2025, "LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances
Model Merging"): scale each layer's update linearly with its depth, keeping shallow layers near θ₀.

The paper's scaling of block ℓ of L (1-based) is λ(ℓ) = α + β·(ℓ − 1)/(L − 1); with 0-based block
indices, as here, λ = α + β·depth, depth = ℓ/(L − 1) ∈ [0, 1] (the authors' `LiNeS_scaling`,
github.com/wang-kee/LiNeS, src/eval/eval.py). It composes with any method: the engine multiplies each
method's τᵢ′ by λ(depth of the tensor) (`apply_lines`) when the spec's `merge.lines` is set, and
`method: lines` is task arithmetic with it.

Depths (`layer_depths`): a key's block index comes from names such as
`visual.transformer.resblocks.3.…` (open_clip), `model.layers.12.…` (Llama), `encoder.layer.5.…`
(BERT), `h.7.…` (GPT-2), `blocks.2.…` (timm) — the first such component — and L is the largest index
plus one. Keys outside the blocks get 0 when they are input-side (embeddings, `conv1`, `ln_pre`, …) and
1 when they are output-side (`ln_post`, final norms, `proj`, `lm_head`, heads, …), by name, and for
other names by position in the key list (after the last block key: 1, else 0). The authors' code scales
every key outside the blocks by α (depth 0), the final norm and projection too; here those get α + β.
With no blocks found every key gets depth 1 (a uniform scale α + β).

Defaults α = 0, β = 1: the defaults of the authors' `line_scaling(task_vector, alpha=0.0, beta=1.0,
num_blocks=12)` (LiNeS_example.ipynb; its example run uses 0.1 and 0.9), a ramp from the pre-trained
first block to the full update in the last. For single-task editing the authors search α ∈ [0, 1] with
β = 1 − α; for multi-task merging they set α = (‖Σᵢτᵢ‖₁ / ‖τ_merged‖₁)/T (1/T for task arithmetic) and
tune β on validation data. Under MAP the coefficients cᵢ scale every layer, so only the shape of λ
over depth (the ratio α : α + β) matters beyond what c already explores.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Mapping

import torch

from explorer.errors import SpecError
from explorer.merging.methods.registry import MergeMethod, register

#: Component names followed by a block index: open_clip `resblocks`, HF `layers` / `layer`, GPT-2 `h`, timm `blocks`.
BLOCK_NAMES = ("resblocks", "layers", "layer", "blocks", "block", "h")
_BLOCK = re.compile(r"(?:^|\.)(?:" + "|".join(BLOCK_NAMES) + r")\.(\d+)(?:\.|$)")
#: Input-side components outside the blocks (any component containing "embed" counts too): depth 0.
BEFORE = frozenset({"wte", "wpe", "conv1", "ln_pre", "pre_layrnorm", "pre_layernorm", "cls_token", "shared", "stem"})
#: Output-side components outside the blocks: depth 1.
AFTER = frozenset({"ln_post", "ln_final", "ln_f", "norm", "final_layer_norm", "final_layernorm", "post_layernorm",
                   "fc_norm", "proj", "projection", "text_projection", "visual_projection", "lm_head", "head",
                   "classifier", "pooler", "score", "logit_scale"})


def block_index(key: str) -> int | None:
    """The block index in `key` (its first `<block name>.<integer>` component), or None."""
    m = _BLOCK.search(key)
    return int(m.group(1)) if m else None


def _side(key: str) -> float | None:
    """0 for an input-side name, 1 for an output-side one, None when the name does not say."""
    parts = key.split(".")
    if any("embed" in p or p in BEFORE for p in parts):
        return 0.0
    if any(p in AFTER for p in parts):
        return 1.0
    return None


def layer_depths(keys: list[str]) -> dict[str, float]:
    """Each key's depth in [0, 1]: ℓ/(L − 1) in block ℓ of L (L = largest index + 1); outside the blocks
    0 before them and 1 after them (see the module docstring); 1 for every key when no block is found."""
    index = {k: block_index(k) for k in keys}
    blocks = [i for i in index.values() if i is not None]
    if not blocks:
        return {k: 1.0 for k in keys}
    span = max(blocks)  # L − 1
    last = max(pos for pos, k in enumerate(keys) if index[k] is not None)
    out = {}
    for pos, k in enumerate(keys):
        if index[k] is not None:
            out[k] = index[k] / span if span else 1.0
        else:
            side = _side(k)
            out[k] = side if side is not None else (1.0 if pos > last else 0.0)
    return out


def lines_scale(depth: float, params: Mapping) -> float:
    """λ = α + β·depth (the paper's α + β·(ℓ − 1)/(L − 1))."""
    return float(params["alpha"]) + float(params["beta"]) * float(depth)


def apply_lines(stack: torch.Tensor, key: str, depths: Mapping[str, float], params: Mapping) -> torch.Tensor:
    """One tensor's τ′ (T, ...) times λ(depth of `key`); `depths` from `layer_depths` over all merged keys,
    `params` with `alpha` and `beta` (the spec's `merge.lines`)."""
    if key not in depths:
        raise KeyError(f"LiNeS: no depth for tensor {key!r} (layer_depths was given other keys)")
    return stack * lines_scale(depths[key], params)


def apply_lines_(stack: torch.Tensor, key: str, depths: Mapping[str, float], params: Mapping) -> torch.Tensor:
    """`apply_lines` in place (no second copy of the layer's T pieces)."""
    if key not in depths:
        raise KeyError(f"LiNeS: no depth for tensor {key!r} (layer_depths was given other keys)")
    return stack.mul_(lines_scale(depths[key], params))


def check_lines(params: Mapping) -> None:
    """α ≥ 0 and β ≥ 0 (layer-increasing), finite, not both 0 (every update would vanish)."""
    for name in ("alpha", "beta"):
        v = params.get(name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise SpecError(f"merge.lines.{name} must be a finite number ≥ 0, got {v!r}")
    if params["alpha"] == 0 and params["beta"] == 0:
        raise SpecError("merge.lines.beta must be > 0 when merge.lines.alpha is 0 (every update would be scaled to 0)")


@register("lines")
class Lines(MergeMethod):
    """Task arithmetic with LiNeS: the preprocessing is the identity, the engine applies the scaling.

    Its α and β live in the spec's `merge.lines` (as for any method LiNeS composes with), so the
    method itself reads no parameter; `defaults` fill in what `merge.lines` leaves out."""

    title = "task arithmetic + LiNeS"
    parameters = ()
    defaults = {"alpha": 0.0, "beta": 1.0}
    equivariant = True

    def check(self, params: Mapping) -> None:
        if "alpha" in params or "beta" in params:  # the `merge.lines` mapping
            check_lines(params)

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return stack

    def describe(self, params: Mapping) -> str:
        return "task arithmetic (τᵢ′ = θᵢ − θ₀)"  # the export's note adds the scaling from params["lines"]
