"""`model.family: package.module:factory`: a user's function builds the model from the base state dict.

The escape hatch for models no registered family covers: `factory(base_state_dict)` returns a
`torch.nn.Module` (or a dict of tensors) holding the base weights; merges go through the
state-dict path (`explorer.experiment.families.state_dict`). Not registered by name: `lookup` makes one
per factory path. A factory that fails is named with the checkpoint it was given.
"""
from __future__ import annotations

import torch

from explorer.errors import CheckpointError, ExplorerError, SpecError
from explorer.experiment.families.state_dict import StateDictMerge
from explorer.experiment.identity import resolve_callable


class UserFactory(StateDictMerge):
    def __init__(self, path: str):
        self.path = path

    def build_module(self, base: dict, base_name: str, architecture: str | None = None, config_dir=None):
        factory = resolve_callable(self.path, "model.family")
        try:
            module = factory(base)
        except ExplorerError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's factory: name it and the checkpoint it was given
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{base_name}: model.family {self.path!r} could not build a model from it "
                                  f"({type(exc).__name__}: {text[:300]})") from None
        if isinstance(module, torch.nn.Module):
            module.eval()
        elif not isinstance(module, dict):
            raise SpecError(f"model.family {self.path!r} returned {type(module).__name__}; expected a torch.nn.Module "
                            "or a dict of tensors")
        return module
