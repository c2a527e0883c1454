"""The experiment layer: a spec bound to a store, its engine, the evaluation loop and the executors.

`from explorer.experiment import Experiment` works; the attribute is resolved on first use, so that
importing the spec or the store (the app's first page) does not load torch.
"""
__all__ = ["DEFAULT_STORE", "Engine", "Experiment"]


def __getattr__(name: str):
    if name in __all__:
        import explorer.experiment.experiment as module  # imports torch: only when asked for

        return getattr(module, name)
    raise AttributeError(f"module 'explorer.experiment' has no attribute {name!r}")
