"""Moved: the CLIP zero-shot suite lives in explorer/suites/clip.py. Specs keep naming
`explorer.clip_suite:evaluate`; this alias serves them (results stored before the move are reused)."""
from explorer.suites.clip import eval_data, evaluate, fingerprint, zero_shot_head

__all__ = ["eval_data", "evaluate", "fingerprint", "zero_shot_head"]
