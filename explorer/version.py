"""The package's version, written into every export and merged checkpoint (no imports: any layer may read it)."""
__version__ = "0.1.0"
