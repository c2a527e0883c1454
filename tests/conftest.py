"""Shared fixtures: tiny real models in temporary directories, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package is importable from a checkout without installing it
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def quick_zoo(tmp_path_factory) -> Path:
    """A real, quick-scale demo zoo (pretrained tiny CLIP + one expert per task), built once per session."""
    from explorer.demo import zoo

    out = tmp_path_factory.mktemp("demo-zoo")
    zoo.build_zoo(out, seed=0, scale="quick", progress=False)
    return out
