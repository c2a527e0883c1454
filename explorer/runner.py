"""Moved: `Experiment` and `Engine` live in explorer/experiment/experiment.py (import them from
`explorer.experiment`); this alias keeps `from explorer.runner import Experiment` working."""
from explorer.experiment.experiment import DEFAULT_STORE, Engine, Experiment

__all__ = ["DEFAULT_STORE", "Engine", "Experiment"]
