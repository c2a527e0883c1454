"""Exceptions a user can act on; caught only at the CLI and app edges."""


class ExplorerError(Exception):
    """Base class: the message is one line that names the file, key or tensor at fault."""

    def __str__(self) -> str:
        text = super().__str__()
        # quoted library messages (SQLite, YAML, torch) may span lines: the user still gets one
        return " ".join(text.split()) if len(text.splitlines()) > 1 else text


class SpecError(ExplorerError):
    """The spec (or an argument standing in for it) is invalid."""


class CheckpointError(ExplorerError):
    """A checkpoint is missing, unreadable, unsafe to load or inconsistent with the base."""


class EvaluationError(ExplorerError):
    """An evaluator failed or returned a non-finite metric."""


class StoreError(ExplorerError):
    """The evaluation store is corrupt, foreign or unwritable."""
