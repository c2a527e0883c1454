"""`model.family: state_dict`, and the state-dict merge path the other in-memory families share.

The base and every expert are plain checkpoint files (safetensors, or pickles with
`trust_pickle`). They are loaded as state dicts, checked against the base (same keys, shapes,
finite values), and their task vectors τᵢ′ (after TIES/DARE) are held in float32; merges are
written by `explorer.merge.Merger` into the module the family builds. For `state_dict` that
module is a dict of tensors (the evaluator gets the state dict itself); `open_clip` and user
factories ("package.module:factory") subclass this and build a real module instead.
"""
from __future__ import annotations

from pathlib import Path

from . import register


class StateDictMerge:
    """Load state dicts, compute task vectors, merge into `build_module(...)`; export merged.safetensors."""

    #: What `export` writes, as named in exports' notes.
    artifact = "merged.safetensors"

    def build_module(self, base: dict, base_name: str, architecture: str | None = None, config_dir=None):
        """The object a merge is written into, holding the base weights."""
        raise NotImplementedError

    def load_engine(self, engine, experiment) -> None:
        """Fill the runner's Engine: base, task vectors, module and merger, all in memory."""
        from ..checkpoints import check_compatible, check_finite, load_state_dict
        from ..merge import Merger
        from ..models import pick_device
        from ..spec import resolve
        from ..task_vectors import compute_task_vectors

        spec, spec_dir = experiment.spec, experiment.spec_dir
        base_path = resolve(spec_dir, spec.model.base)
        engine.base = load_state_dict(base_path, spec.model.trust_pickle)
        check_finite(engine.base, str(base_path))
        finetuned = []
        for task in experiment.tasks:
            path = resolve(spec_dir, spec.tasks[task].checkpoint)
            state = load_state_dict(path, spec.model.trust_pickle)
            check_compatible(engine.base, state, str(path), str(base_path))
            check_finite(state, str(path))
            finetuned.append(state)
        engine.task_vectors = compute_task_vectors(
            engine.base, finetuned, spec.merge.method, spec.merge.density, spec.merge.seed, spec.model.merge_prefix
        )
        del finetuned
        engine.device = pick_device(experiment.device or spec.device)
        engine.model = self.build_module(engine.base, str(base_path), spec.model.architecture,
                                         resolve(spec_dir, spec.model.config_dir))
        engine.merger = Merger(engine.model, engine.base, engine.task_vectors, engine.device)

    def export(self, experiment, coefficients, out_dir: Path) -> dict[str, Path]:
        """merged.safetensors with the base's keys and dtypes (built in memory, as the merge is)."""
        from ..export import write_merged_checkpoint

        path = Path(out_dir) / self.artifact
        write_merged_checkpoint(path, experiment, coefficients)
        return {"merged": path}


@register("state_dict")
class StateDict(StateDictMerge):
    """The checkpoint's state dict is the model: evaluators receive a dict of tensors."""

    def build_module(self, base: dict, base_name: str, architecture: str | None = None, config_dir=None):
        return {k: v.clone() for k, v in base.items()}
