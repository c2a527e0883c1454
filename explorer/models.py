"""Building the module a merge is written into, from the spec's `model` section, and picking its device.

Like open_clip's factory, one call serves a tiny demo model and ViT-B/32: the family names how
to build the module (explorer/families/), the base state dict fills it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .errors import SpecError


def resolve_callable(path: str, what: str = "callable"):
    """Import `package.module:function`, with errors that name the part that failed."""
    if ":" not in path:
        raise SpecError(f"{what} {path!r} must look like 'package.module:function'")
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{what} {path!r}: cannot import module {module_name!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{what} {path!r} is not callable")
    return obj


def build_model(family: str, base: dict[str, torch.Tensor], base_name: str, architecture: str | None = None,
                config_dir: str | Path | None = None):
    """The module (or, for family 'state_dict', a dict of tensors) holding the base weights, built by
    the family's module in explorer/families/ (open_clip, state_dict, or a 'package.module:factory')."""
    from .families import lookup

    family_impl = lookup(family)
    if family_impl is None:
        raise SpecError(f"unknown model.family {family!r}")
    if not hasattr(family_impl, "build_module"):
        raise SpecError(f"model.family {family!r} does not build a module from a state dict")
    return family_impl.build_module(base, base_name, architecture, config_dir)


DEVICE_KINDS = ("cpu", "cuda", "mps")


def device_kind(device: str | None = "auto") -> str:
    """'cpu', 'cuda' or 'mps': what `device` resolves to here (part of every task's identity)."""
    device = device or "auto"
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind, _, index = str(device).partition(":")
    if kind not in DEVICE_KINDS or (index and not (index.isdigit() and kind != "cpu")):
        raise SpecError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return kind


def pick_device(device: str = "auto") -> torch.device:
    """cuda when available, else mps, else cpu; an explicit choice wins (if this machine has it)."""
    kind = device_kind(device)
    if device in (None, "auto"):
        return torch.device(kind)
    if kind == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
    if kind == "cuda" and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise SpecError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise SpecError(f"device {device!r}: MPS is not available on this machine (use --device cpu)")
    return torch.device(device)
