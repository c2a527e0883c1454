"""CLIP zero-shot classification: the suite lives in explorer/clip_suite.py (specs name
`explorer.clip_suite:evaluate`); this module gives it its place among the suites."""
from explorer.clip_suite import eval_data, evaluate, fingerprint, zero_shot_head

__all__ = ["eval_data", "evaluate", "fingerprint", "zero_shot_head"]
