"""Task suites: evaluators a spec names as `tasks.<name>.evaluator`.

Each suite is one module with an `evaluate(model, **params) -> float` and an
`evaluate.fingerprint(**params)` naming the data it reads (part of the store's evaluation
identity). `SUITES` maps short names to those entry points, so a reader sees what exists:
"""
from __future__ import annotations

SUITES = {
    "clip": "explorer.clip_suite:evaluate",              # CLIP zero-shot classification (explorer/clip_suite.py)
    "lm": "explorer.suites.lm:evaluate",                 # JSONL prompts: exact match, multiple choice, loss
    "lm_eval": "explorer.suites.lm_eval_harness:evaluate",  # an lm-evaluation-harness task, in memory
}
