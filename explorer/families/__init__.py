"""Model families: how a spec's `model.family` turns checkpoints into a model and a merger.

A family is one module here that registers itself by name (the way mergekit's merge methods and
open_clip's model configs do). Adding a family is adding one module and one line in `BUILTIN`,
which maps names to modules so that a family's heavy imports (transformers, open_clip, ...)
happen only when a spec uses it. A family provides:

- `load_engine(engine, experiment)`: fill the runner's `Engine` (`model`, `merger`, `device`,
  `base`, `task_vectors`) from the spec;
- `export(experiment, coefficients, out_dir) -> dict[str, Path]`: write the merged model
  (`artifact` names it: "merged.safetensors" or "merged/");
- optionally `identity(experiment) -> str`: files besides the weights that the content key covers.

`state_dict` (state_dict.py) holds the in-memory path: state dicts, float32 task vectors,
`explorer.merge.Merger`; `open_clip` (open_clip.py) and user factories ("package.module:factory",
factory.py) build their module on it. `hf_causal_lm` (hf_causal_lm.py) streams from safetensors.
"""
from __future__ import annotations

import importlib

#: Registered families: name -> module that registers it on import.
BUILTIN = {"open_clip": "explorer.families.open_clip", "state_dict": "explorer.families.state_dict",
           "hf_causal_lm": "explorer.families.hf_causal_lm"}

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
            from .factory import UserFactory

            return UserFactory(name)
        return None
    importlib.import_module(module)
    return _REGISTRY[name]


def names() -> list[str]:
    """Every family name a spec may use (besides a 'package.module:factory' path)."""
    return list(BUILTIN) + sorted(set(_REGISTRY) - set(BUILTIN))
