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
           "ties": "explorer.merging.methods.ties", "dare": "explorer.merging.methods.dare",
           "lines": "explorer.merging.methods.lines",
           "tsv": "explorer.merging.methods.tsv",
           "cart": "explorer.merging.methods.cart",
           "consensus": "explorer.merging.methods.consensus",
           "iso_c": "explorer.merging.methods.iso_c"}

_REGISTRY: dict[str, "MergeMethod"] = {}
#: Elements a streamed preprocessing works on at a time (256 KB of float32): its temporaries stay this small.
CHUNK = 1 << 16


class MergeMethod:
    """What a merge method provides.

    `parameters`: the spec's `merge:` keys it reads, in the order they enter the experiment's
    content key, with their `defaults`; `preprocess` turns one tensor's stacked task vectors
    (T, ...) into τ′, float32, once per experiment. A method that is not linear in the coefficients
    (`linear = False`, e.g. Iso-C) also transforms each merged tensor's Σ cᵢ τᵢ′ at every merge
    (`combine`). `mergekit`: mergekit's name for the same method, where mergekit has one.
    """

    name = ""
    title = ""  # what a stakeholder reads in legends and tables ("TSV-M")
    parameters: tuple[str, ...] = ()
    defaults: dict = {}
    mergekit: str | None = None
    linear = True
    #: τ′ of task vectors Q Xᵢ Pᵀ is Q τ′(X)ᵢ Pᵀ for any Q, P with orthonormal columns (the identity and
    #: SVD-based methods), so low-rank task vectors (LoRA) are preprocessed as their small cores Xᵢ
    equivariant = False
    #: Bumped when the method's definition changes what it computes: enters the experiment's content key
    #: (from 2 on), so a store never mixes merges of two definitions
    revision = 1

    def check(self, params: Mapping) -> None:
        """Raise SpecError naming the parameter at fault (`merge.<name>`)."""

    def preprocess(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        return stack

    def preprocess_(self, stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        """`preprocess` allowed to overwrite `stack` (contiguous float32)."""
        return self.preprocess(stack, key, params)

    def preprocess_streamed(self, fill, n_tasks: int, shape: tuple, key: str, params: Mapping, emit) -> None:
        """`preprocess` for pieces that can be produced again: `fill(i, out)` writes τᵢ of tensor `key`
        into `out` (float32, `shape`), `fill(i, out, start)` only its flat elements [start, start + out.numel())
        into a flat `out`; `emit(i, piece)` takes τᵢ′ (and may overwrite it), for i in order.

        Here the T pieces are stacked (one layer × T in memory); methods that need less (TIES, DARE:
        one or two pieces at a time; consensus: a piece and its mask count) override it."""
        import torch

        stack = torch.empty((n_tasks, *shape), dtype=torch.float32)
        for i in range(n_tasks):
            fill(i, stack[i])
        stack = self.preprocess_(stack, key, params)
        for i in range(n_tasks):
            emit(i, stack[i])

    def preprocess_core(self, cores: torch.Tensor, shape: tuple, key: str, params: Mapping) -> torch.Tensor:
        """`preprocess` of task vectors τᵢ = Q Cᵢ Pᵀ of a tensor of `shape` (m, n) given as their cores Cᵢ
        (T, p, q), float64 in and out; only for `equivariant` methods (ranks that depend on the tensor's
        size are taken from `shape`, not from the cores)."""
        if not self.equivariant:
            raise NotImplementedError(f"merge method {self.name!r} needs the dense entries of its task vectors")
        return self.preprocess(cores, key, params).to(cores.dtype)

    def combine(self, delta: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
        """The merged update of one tensor from Σ cᵢ τᵢ′ (float32, the tensor's shape): itself when linear."""
        return delta

    def describe(self, params: Mapping) -> str:
        """One phrase for exports' notes: what the preprocessing did, with its parameters."""
        return "no preprocessing (τᵢ′ = θᵢ − θ₀)"


def register(name: str):
    """Class decorator: make a method available under `name` (an instance is registered)."""

    def wrap(cls):
        instance = cls()
        instance.name = name
        instance.title = instance.title or name
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


#: Keys of the spec's `merge:` section that any method accepts (read by TIES and DARE only).
SHARED = ("density", "seed")
#: Keys some methods read; the others refuse them.
OPTIONAL = ("rank_ratio", "min_tasks", "mask_lambda")


def _get(params, key: str):
    return params.get(key) if isinstance(params, Mapping) else getattr(params, key, None)


def method_parameters(name: str, params) -> dict:
    """{"method": name, **the parameters it reads, defaults filled in}: what a merge is keyed and
    exported by. `params`: a mapping or an object with the parameters as attributes (the spec's `merge`)."""
    method = get_method(name)
    out = {"method": name}
    for p in method.parameters:
        value = _get(params, p)
        out[p] = method.defaults.get(p) if value is None else value
    return out


def merge_parameters(merge) -> dict:
    """The spec's `merge` section as the engine uses it: the method's parameters, checked, and
    `lines` ({alpha, beta}, defaults filled in) when LiNeS scaling is on (always for `method: lines`).
    Refuses a parameter the method does not read, naming it."""
    name = _get(merge, "method") or "task_arithmetic"
    method = get_method(name)
    for key in OPTIONAL:
        if _get(merge, key) is not None and key not in method.parameters:
            raise SpecError(f"merge.{key} is not a parameter of merge method {name!r}"
                            + (f" (it reads {', '.join(method.parameters)})" if method.parameters else " (it has none)"))
    out = method_parameters(name, merge)
    method.check(out)
    lines = _get(merge, "lines")
    if lines is not None or name == "lines":
        scaling = get_method("lines")
        given = {k: _get(lines, k) for k in ("alpha", "beta")} if lines is not None else {}
        out["lines"] = {k: (scaling.defaults[k] if given.get(k) is None else given[k]) for k in ("alpha", "beta")}
        scaling.check(out["lines"])
    return out


def preprocess(stack: torch.Tensor, key: str, params: Mapping) -> torch.Tensor:
    """τ′ of one tensor's stacked task vectors under `params["method"]`."""
    return get_method(params["method"]).preprocess(stack, key, params)
