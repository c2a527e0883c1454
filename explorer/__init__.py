"""merge-explorer: amortized Pareto fronts for model merging (MAP), with an interactive explorer.

The package in layers (imports flow downwards only; import-linter checks it, see pyproject.toml):
the faces (cli, app_state, export, report, figures) > demo > suites > experiment > merging | core
> errors | version. docs/ARCHITECTURE.md has the map.
"""
from explorer.core.explore import explore
from explorer.core.result import ExploreResult
from explorer.version import __version__

__all__ = ["explore", "ExploreResult", "__version__"]
