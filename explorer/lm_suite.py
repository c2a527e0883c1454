"""`explorer.lm_suite:evaluate`: language-model tasks from JSONL files (see explorer/suites/lm.py).

Kept as a top-level module so specs can name it like `explorer.clip_suite:evaluate`.
"""
from explorer.suites.lm import METRICS, evaluate, fingerprint, read_records, tokenizer_for

__all__ = ["METRICS", "evaluate", "fingerprint", "read_records", "tokenizer_for"]
