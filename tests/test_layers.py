"""The package's layers hold: import-linter's contracts (pyproject.toml) are kept, and the core runs without torch.

import-linter reads every import statement, those inside functions included, so an import circle
hidden behind a lazy import breaks the `acyclic_siblings` contract just like a top-level one.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "0 broken" in report or "broken" not in report.split("Contracts:")[-1], report
    for contract in ("Layers:", "The core is numpy and scipy", "never imports streamlit", "No import circles"):
        assert f"{contract}" in report and "KEPT" in report.split(contract, 1)[1].splitlines()[0], report


def test_the_core_explores_without_torch():
    """`from explorer import explore` and the whole core load no torch (a notebook or a server without it)."""
    code = ("import sys, pkgutil, importlib, explorer.core as core\n"
            "from explorer import explore\n"
            "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('explorer.core.' + m.name)\n"
            "heavy = sorted(m for m in ('torch', 'safetensors', 'open_clip', 'transformers', 'streamlit') if m in sys.modules)\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
