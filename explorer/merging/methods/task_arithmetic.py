"""Task arithmetic: the task vectors as they are, τᵢ′ = τᵢ."""
from __future__ import annotations

from explorer.merging.methods.registry import MergeMethod, register


@register("task_arithmetic")
class TaskArithmetic(MergeMethod):
    title = "task arithmetic"
    mergekit = "task_arithmetic"
    equivariant = True
