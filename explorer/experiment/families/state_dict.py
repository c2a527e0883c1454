"""`model.family: state_dict`, and the state-dict merge path the other in-memory families share.

The base and every expert are plain checkpoint files (safetensors, or pickles with
`trust_pickle`). They are loaded as state dicts, checked against the base (same keys, shapes,
finite values), and their task vectors τᵢ′ (after TIES/DARE) are held in float32; merges are
written by `explorer.merging.inplace.Merger` into the module the family builds. For `state_dict` that
module is a dict of tensors (the evaluator gets the state dict itself); `open_clip` and user
factories ("package.module:factory") subclass this and build a real module instead.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from explorer.experiment.families.registry import register
from explorer.merging.checkpoints import check_compatible, check_finite, load_state_dict
from explorer.merging.devices import pick_device
from explorer.merging.inplace import Merger
from explorer.merging.task_vectors import compute_task_vectors
from explorer.version import __version__


class StateDictMerge:
    """Load state dicts, compute task vectors, merge into `build_module(...)`; export merged.safetensors."""

    #: What `write_merged` writes, as named in exports' notes.
    artifact = "merged.safetensors"

    def build_module(self, base: dict, base_name: str, architecture: str | None = None, config_dir=None):
        """The object a merge is written into, holding the base weights."""
        raise NotImplementedError

    def load_engine(self, engine, experiment) -> None:
        """Fill the runner's Engine: base, task vectors, module and merger, all in memory."""
        spec = experiment.spec
        base_path = experiment.path(spec.model.base)
        engine.base = load_state_dict(base_path, spec.model.trust_pickle)
        check_finite(engine.base, str(base_path))
        finetuned = []
        for task in experiment.tasks:
            path = experiment.path(spec.tasks[task].checkpoint)
            state = load_state_dict(path, spec.model.trust_pickle)
            check_compatible(engine.base, state, str(path), str(base_path))
            check_finite(state, str(path))
            finetuned.append(state)
        engine.task_vectors = compute_task_vectors(engine.base, finetuned, experiment.merge_parameters(),
                                                   spec.model.merge_prefix)
        del finetuned
        engine.device = pick_device(experiment.device or spec.device)
        engine.model = self.build_module(engine.base, str(base_path), spec.model.architecture,
                                         experiment.path(spec.model.config_dir))
        engine.merger = Merger(engine.model, engine.base, engine.task_vectors, engine.device)

    def write_merged(self, experiment, coefficients, out_dir: Path, via_inputs: bool = False) -> dict[str, Path]:
        """merged.safetensors with the base's keys and dtypes (built in memory, as the merge is)."""
        path = Path(out_dir) / self.artifact
        state = merged_state_dict(experiment.engine, coefficients, via_inputs)
        save_file(state, str(path), metadata={"format": "pt", "merge-explorer": __version__,
                                              "coefficients": json.dumps([float(c) for c in coefficients])})
        path.chmod(0o666 & ~current_umask())  # safetensors writes 0600; exports get the umask's like their siblings
        return {"merged": path}


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads' files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def merged_state_dict(engine, coefficients, via_inputs: bool = False) -> dict[str, torch.Tensor]:
    """θ₀ + Σ cᵢ τᵢ′ with the base's keys and dtypes, in float32 in the order mergekit's task_arithmetic
    uses (δᵢ = input − θ₀, δᵢ·wᵢ, summed over i, added to θ₀, cast), so that a half-precision output
    rounds the same way in both and mergekit rebuilds this file bit for bit rather than to within one
    bf16/fp16 step. `via_inputs`: mergekit reads the written θ₀ + τᵢ′, so δᵢ = (θ₀ + τᵢ′) − θ₀.
    Differs from the evaluated merge (`Merger`) only by float32 rounding."""
    vectors = engine.task_vectors.vectors
    w = torch.tensor([float(c) for c in np.asarray(coefficients, dtype=float)], dtype=torch.float32)
    out = {}
    for key, t in engine.base.items():
        if key not in vectors:
            out[key] = t.detach().to("cpu").clone().contiguous()  # clone: no shared storage (tied weights)
            continue
        b = t.detach().to("cpu", torch.float32)
        deltas = vectors[key].to("cpu", torch.float32).clone()
        if via_inputs:
            deltas = (b + deltas) - b
        deltas.mul_(w.view(-1, *([1] * b.dim())))
        out[key] = (b + engine.task_vectors.combine(key, deltas.sum(dim=0))).to(t.dtype).contiguous()
    return out


@register("state_dict")
class StateDict(StateDictMerge):
    """The checkpoint's state dict is the model: evaluators receive a dict of tensors."""

    def build_module(self, base: dict, base_name: str, architecture: str | None = None, config_dir=None):
        return {k: v.clone() for k, v in base.items()}
