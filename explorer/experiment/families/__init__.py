"""Model families: how a spec's `model.family` turns checkpoints into a model and a merger (registry.py)."""
from explorer.experiment.families.registry import Family, build_model, lookup, names, register

__all__ = ["Family", "build_model", "lookup", "names", "register"]
