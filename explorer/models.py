"""Building the module a merge is written into, from the spec's `model` section.

Like open_clip's factory, one call serves a tiny demo model and ViT-B/32: the family names how
to build the module, the base state dict fills it.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch

from .errors import CheckpointError, ExplorerError, SpecError


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


def build_model(family: str, base: dict[str, torch.Tensor], base_name: str, architecture: str | None = None,
                config_dir: str | Path | None = None):
    """The module (or, for family 'state_dict', a dict of tensors) holding the base weights."""
    if family == "state_dict":
        return {k: v.clone() for k, v in base.items()}
    if family == "open_clip":
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
    factory = resolve_callable(family, "model.family")
    try:
        module = factory(base)
    except ExplorerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory: name it and the checkpoint it was given
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{base_name}: model.family {family!r} could not build a model from it "
                              f"({type(exc).__name__}: {text[:300]})") from None
    if isinstance(module, torch.nn.Module):
        module.eval()
    elif not isinstance(module, dict):
        raise SpecError(f"model.family {family!r} returned {type(module).__name__}; expected a torch.nn.Module "
                        "or a dict of tensors")
    return module


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
