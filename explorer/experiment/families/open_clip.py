"""`model.family: open_clip`: CLIP models built by open_clip's factory from `model.architecture`.

One call serves a tiny demo model and ViT-B/32: `open_clip.create_model(architecture)` builds the
module (configs from `model.config_dir` are registered first), the base state dict fills it, and
merges go through the state-dict path (`explorer.experiment.families.state_dict`). A checkpoint of another
architecture is named by the first tensor that does not fit.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from explorer.errors import CheckpointError, SpecError
from explorer.experiment.families.registry import register
from explorer.experiment.families.state_dict import StateDictMerge


def register_open_clip_configs(config_dir: str | Path | None) -> None:
    """Make the model configs (*.json) in `config_dir` known to open_clip's factory."""
    if config_dir is None:
        return
    import open_clip

    d = Path(config_dir)
    if not d.is_dir():
        raise SpecError(f"model.config_dir {d} is not a directory")
    open_clip.add_model_config(d)


def check_architecture(module: torch.nn.Module, state: dict[str, torch.Tensor], checkpoint: str, architecture: str) -> None:
    """Name the first tensor whose key or shape does not fit the named architecture."""
    expected = module.state_dict()
    for key, t in expected.items():
        if key not in state:
            raise CheckpointError(f"{checkpoint}: has no tensor {key!r}, which architecture {architecture!r} needs; is it a checkpoint of another architecture?")
        if tuple(state[key].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{checkpoint}: tensor {key!r} has shape {tuple(state[key].shape)}; architecture {architecture!r} expects {tuple(t.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{checkpoint}: tensor {extra[0]!r} is unknown to architecture {architecture!r}")


@register("open_clip")
class OpenCLIP(StateDictMerge):
    """open_clip models (`model.architecture`, e.g. 'ViT-B-32'), merged as state dicts."""

    def build_module(self, base: dict, base_name: str, architecture: str | None = None, config_dir=None):
        import open_clip

        if not architecture:
            raise SpecError("model.architecture is required for family 'open_clip' (e.g. 'ViT-B-32')")
        register_open_clip_configs(config_dir)
        if architecture not in open_clip.list_models():
            raise SpecError(f"model.architecture {architecture!r} is not an open_clip model (see open_clip.list_models())")
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # open_clip warns that no pretrained weights were loaded: we load them next
        try:
            module = open_clip.create_model(architecture)
        finally:
            quiet.setLevel(level)
        check_architecture(module, base, base_name, architecture)
        try:
            module.load_state_dict(base)
        except RuntimeError as exc:
            raise CheckpointError(f"{base_name}: does not load into {architecture!r} ({str(exc).strip().splitlines()[-1][:300]})") from None
        return module.eval()
