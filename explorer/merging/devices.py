"""Which device a merge runs on: cuda when there is one, else mps, else cpu, or what the spec says."""
from __future__ import annotations

import torch

from explorer.errors import SpecError

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
