"""The merge-method registry: which preprocessing of the task vectors a spec's `merge.method` names.

A method keeps one share per task, so MAP's coefficients still apply to what it returns:
θ(c) = θ₀ + Σ cᵢ τᵢ′. Each method is one module in this folder that registers itself by name
(the way mergekit keeps `merge_methods/registry.py`); `BUILTIN` maps the names to their modules,
imported on first use. Adding a method is adding one module and one line here.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Mapping

from explorer.errors import SpecError

if TYPE_CHECKING:  # the registry itself needs no torch: a spec is validated without it
    import torch

#: Registered methods: name -> module that registers it on import.
BUILTIN = {"task_arithmetic": "explorer.merging.methods.task_arithmetic",
           "ties": "explorer.merging.methods.ties", "dare": "explorer.merging.methods.dare"}

_REGISTRY: dict[str, "MergeMethod"] = {}


class MergeMethod:
    """What a merge method provides.

    `parameters`: the spec's `merge:` keys it reads, in the order they enter the experiment's
    content key; `preprocess` turns one tensor's stacked task vectors (T, ...) into τ′, float32.
    `mergekit`: mergekit's name for the same method, where mergekit has one.
    """

    name = ""
    parameters: tuple[str, ...] = ()
    mergekit: str | None = None

    def check(self, params: Mapping) -> None:
        """Raise SpecError naming the parameter at fault."""

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return stack

    def describe(self, params: Mapping) -> str:
        """One phrase for exports' notes: what the preprocessing did, with its parameters."""
        return "no preprocessing (τᵢ′ = θᵢ − θ₀)"


def register(name: str):
    """Class decorator: make a method available under `name` (an instance is registered)."""

    def wrap(cls):
        instance = cls()
        instance.name = name
        _REGISTRY[name] = instance
        return cls

    return wrap


def method_names() -> list[str]:
    return list(BUILTIN) + sorted(set(_REGISTRY) - set(BUILTIN))


def get_method(name: str) -> MergeMethod:
    """The method called `name`; SpecError for an unknown one."""
    if name not in _REGISTRY:
        module = BUILTIN.get(name)
        if module is None:
            raise SpecError(f"unknown merge method {name!r}; choose one of {', '.join(method_names())}")
        importlib.import_module(module)
    return _REGISTRY[name]


def method_parameters(name: str, params) -> dict:
    """{"method": name, **the parameters it reads}: what a merge is keyed and exported by.
    `params`: a mapping or an object with the parameters as attributes (the spec's `merge`)."""
    method = get_method(name)
    get = params.get if isinstance(params, Mapping) else lambda k: getattr(params, k)
    return {"method": name, **{p: get(p) for p in method.parameters}}


def preprocess(stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
    """τ′ of one tensor's stacked task vectors under `params["method"]`."""
    return get_method(params["method"]).preprocess(stack, key, params)
