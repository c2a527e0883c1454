"""Offline demos and test landscapes: the CLIP and LLM model zoos, the testbeds, analytic landscapes."""
