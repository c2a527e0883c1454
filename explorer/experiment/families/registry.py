"""Model families: how a spec's `model.family` turns checkpoints into a model and a merger.

A family is one module here that registers itself by name (the way mergekit's merge methods and
open_clip's model configs do). Adding a family is adding one module and one line in `BUILTIN`,
which maps names to modules so that a family's heavy imports (transformers, open_clip, ...)
happen only when a spec uses it. A family provides what `Family` below writes down. `state_dict` (state_dict.py) holds the in-memory path: state
dicts, float32 task vectors, `explorer.merging.inplace.Merger`; `open_clip` (open_clip.py) and
user factories ("package.module:factory", factory.py) build their module on it. `hf_causal_lm`
(hf_causal_lm.py) streams from safetensors.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from explorer.errors import SpecError

#: Registered families: name -> module that registers it on import.
BUILTIN = {"open_clip": "explorer.experiment.families.open_clip",
           "state_dict": "explorer.experiment.families.state_dict",
           "hf_causal_lm": "explorer.experiment.families.hf_causal_lm"}
#: The module of user factories ("package.module:factory" in the spec).
FACTORY = "explorer.experiment.families.factory"


class Family(Protocol):
    """What a model family provides (optional: `identity(experiment) -> str`, files besides the
    weights that the content key covers; `build_module(base, base_name, architecture, config_dir)`,
    the module a state dict is loaded into, for families built on the state-dict path)."""

    #: What `write_merged` writes, as named in exports' notes ("merged.safetensors" or "merged/").
    artifact: str

    def load_engine(self, engine, experiment) -> None:
        """Fill the experiment's `Engine` (`model`, `merger`, `device`, `base`, `task_vectors`)."""

    def write_merged(self, experiment, coefficients, out_dir: Path, via_inputs: bool = False) -> dict[str, Path]:
        """Write the merged model at `coefficients` into `out_dir`; {"merged": path}. `via_inputs`:
        compute it as mergekit does from preprocessed experts written to disk (export.py decides)."""

_REGISTRY: dict[str, object] = {}


def register(name: str):
    """Class decorator: make a family available under `name` (an instance is registered)."""

    def wrap(cls):
        _REGISTRY[name] = cls()
        return cls

    return wrap


def lookup(name: str):
    """The family called `name`: a registered one, a user factory for 'package.module:factory', or
    None for an unknown name (the spec refuses those first)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module = BUILTIN.get(name)
    if module is None:
        if ":" in name:
            return importlib.import_module(FACTORY).UserFactory(name)
        return None
    importlib.import_module(module)
    return _REGISTRY[name]


def names() -> list[str]:
    """Every family name a spec may use (besides a 'package.module:factory' path)."""
    return list(BUILTIN) + sorted(set(_REGISTRY) - set(BUILTIN))


def build_model(family: str, base: dict, base_name: str, architecture: str | None = None, config_dir=None):
    """The module (or, for family 'state_dict', a dict of tensors) holding the base weights, built by
    the family's module (open_clip, state_dict, or a 'package.module:factory')."""
    family_impl = lookup(family)
    if family_impl is None:
        raise SpecError(f"unknown model.family {family!r}")
    if not hasattr(family_impl, "build_module"):
        raise SpecError(f"model.family {family!r} does not build a module from a state dict")
    return family_impl.build_module(base, base_name, architecture, config_dir)
