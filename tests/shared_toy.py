"""One trained toy experiment per test session for the fault, store and fuzz tests (copy it to change it)."""
from __future__ import annotations

import shutil
from pathlib import Path

from tests import toy_zoo


def shared_toy(tmp_path_factory) -> Path:
    """The spec of a toy experiment (checkpoints, no store) built once per session; treat it as read-only."""
    directory = tmp_path_factory.getbasetemp() / "toy-shared"
    spec = directory / "spec.yaml"
    if not spec.exists():
        toy_zoo.build(directory)
    return spec


def copy_toy(spec: Path, directory: Path) -> Path:
    """A private copy of the toy experiment without its store."""
    shutil.copytree(spec.parent, directory, ignore=shutil.ignore_patterns("store.sqlite*"))
    return directory / spec.name
