"""The pure core: designs, surrogates, fronts, decisions, polish, adaptive sampling and `explore`.

numpy and scipy only: no torch, no files, no specs (import-linter checks it).
"""
