"""Task suites: evaluators a spec names as `tasks.<name>.evaluator`, and the datasets they read.

Each suite is one module with an `evaluate(model, **params) -> float` and an
`evaluate.fingerprint(**params)` naming the data it reads (part of the store's evaluation
identity): `clip.py` (CLIP zero-shot classification; specs name `explorer.clip_suite:evaluate`),
`lm.py` (JSONL prompts: exact match, multiple choice, loss; `explorer.lm_suite:evaluate`),
`lm_eval_harness.py` (an lm-evaluation-harness task, in memory).
"""
