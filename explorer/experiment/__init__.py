"""The experiment layer: a spec bound to a store, its engine, the evaluation loop and the executors."""
from explorer.experiment.experiment import DEFAULT_STORE, Engine, Experiment

__all__ = ["DEFAULT_STORE", "Engine", "Experiment"]
