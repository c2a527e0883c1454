"""Merge methods: preprocessing of the task vectors under MAP's coefficients (see registry.py)."""
from explorer.merging.methods.registry import (
    MergeMethod,
    get_method,
    method_names,
    method_parameters,
    preprocess,
    register,
)

__all__ = ["MergeMethod", "get_method", "method_names", "method_parameters", "preprocess", "register"]
