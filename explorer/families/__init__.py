"""Model families: how a spec's `model.family` turns checkpoints into a model and a merger.

A family is one module here that registers itself by name (the way mergekit's merge methods and
open_clip's model configs do). Adding a family is adding one module and one line in `BUILTIN`,
which maps names to modules so that a family's heavy imports (transformers, ...) happen only
when a spec uses it. A registered family provides:

- `load_engine(engine, experiment)`: fill the runner's `Engine` (`model`, `merger`, `device`,
  `base`, `task_vectors`) from the spec;
- `validate(experiment)`: cheap checks when the experiment is opened (no weights read);
- `export(experiment, coefficients, out_dir) -> dict[str, Path]`: write the merged model.

`open_clip`, `state_dict` and user factories ("package.module:factory") are built by
`explorer.models.build_model`, with state dicts merged by `explorer.merge.Merger`.
"""
from __future__ import annotations

import importlib

#: Families built by explorer.models (held in float32 state dicts; the classic path).
CLASSIC = ("open_clip", "state_dict")
#: Registered families: name -> module that registers it on import.
BUILTIN = {"hf_causal_lm": "explorer.families.hf_causal_lm"}

_REGISTRY: dict[str, object] = {}


def register(name: str):
    """Class decorator: make a family available under `name` (an instance is registered)."""

    def wrap(cls):
        _REGISTRY[name] = cls()
        return cls

    return wrap


def lookup(name: str):
    """The registered family called `name`, or None for the classic families and user factories."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module = BUILTIN.get(name)
    if module is None:
        return None
    importlib.import_module(module)
    return _REGISTRY[name]


def names() -> list[str]:
    """Every family name a spec may use (besides a 'package.module:factory' path)."""
    return list(CLASSIC) + sorted(set(BUILTIN) | set(_REGISTRY))
