"""Writing θ₀ + Σ cᵢ τᵢ into one model in place.

The model is built once; each new coefficient vector costs one pass over the task vectors
(a (T,) × (T, n) product per tensor, written straight into the parameter), no file I/O and no
new allocations of model size.
"""
from __future__ import annotations

import numpy as np
import torch

from explorer.merging.methods import get_method
from explorer.merging.task_vectors import TaskVectors


class Merger:
    """Holds θ₀ and the stacked τ on the target's device and writes merges into `target`.

    target: an `nn.Module` (its parameters/buffers are written by state-dict key) or a plain
    `dict[str, Tensor]` (moved to `device` and written in place, keeping each tensor's dtype).
    """

    def __init__(self, target, base: dict[str, torch.Tensor], task_vectors: TaskVectors, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.task_vectors = task_vectors
        if isinstance(target, torch.nn.Module):
            target.to(self.device)
            named = dict(target.state_dict(keep_vars=True))
            self.slots = {k: named[k].data if hasattr(named[k], "data") else named[k] for k in task_vectors.keys}
        else:  # a plain dict is the model: every tensor goes where the task vectors are (in place)
            for k, v in list(target.items()):
                if isinstance(v, torch.Tensor) and v.device != self.device:
                    target[k] = v.to(self.device)
            self.slots = {k: target[k] for k in task_vectors.keys}
        self.target = target
        self.base = {k: base[k].to(self.device, torch.float32).contiguous() for k in task_vectors.keys}
        self.flat_vectors = {
            k: v.to(self.device).reshape(v.shape[0], -1) for k, v in task_vectors.vectors.items()
        }
        self.coefficients: np.ndarray | None = None
        self.linear = get_method(task_vectors.params["method"]).linear

    def _merged(self, key: str, c: torch.Tensor) -> torch.Tensor:
        """θ₀ + combine(Σ cᵢ τᵢ′) of one tensor, float32, flat."""
        delta = (self.flat_vectors[key].T @ c).view(self.base[key].shape)
        return self.base[key].reshape(-1) + self.task_vectors.combine(key, delta).reshape(-1)

    @torch.no_grad()
    def apply(self, coefficients) -> None:
        """Set every merged tensor of the target to θ₀ + Σ cᵢ τᵢ′ (computed in float32, cast to the slot's dtype;
        a nonlinear method transforms the sum first)."""
        c = torch.as_tensor(np.asarray(coefficients, dtype=np.float32), device=self.device)
        if c.shape != (self.task_vectors.n_tasks,):
            raise ValueError(f"expected {self.task_vectors.n_tasks} coefficients, got shape {tuple(c.shape)}")
        if not self.linear:  # Iso-C and the like: each tensor's Σ cᵢ τᵢ′ is transformed before it is added
            for key, slot in self.slots.items():
                slot.copy_(self._merged(key, c).view(slot.shape))
            self.coefficients = np.asarray(coefficients, dtype=float).copy()
            return
        for key, slot in self.slots.items():
            if slot.dtype == torch.float32 and slot.is_contiguous():  # fused, straight into the parameter
                torch.addmv(self.base[key].reshape(-1), self.flat_vectors[key].T, c, out=slot.view(-1))
            else:
                slot.copy_(torch.addmv(self.base[key].reshape(-1), self.flat_vectors[key].T, c).view(slot.shape))
        self.coefficients = np.asarray(coefficients, dtype=float).copy()

    def merged_state_dict(self, coefficients, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full state dict with the base's keys and dtypes, merged tensors replaced (on the CPU)."""
        c = torch.as_tensor(np.asarray(coefficients, dtype=np.float32), device=self.device)
        out = {}
        for key, t in base.items():
            if key in self.flat_vectors:
                merged = (torch.addmv(self.base[key].reshape(-1), self.flat_vectors[key].T, c) if self.linear
                          else self._merged(key, c))
                out[key] = merged.view(t.shape).to("cpu", t.dtype).contiguous()
            else:
                out[key] = t.detach().to("cpu").contiguous()
        return out
