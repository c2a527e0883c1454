"""merge-explorer: amortized Pareto fronts for model merging (MAP), with an interactive explorer."""
from .explore import ExploreResult, explore

__version__ = "0.1.0"
__all__ = ["explore", "ExploreResult", "__version__"]
