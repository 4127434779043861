"""Evaluation of both papers: probe scoring and generation, per-item predictions, metrics, statistics and
out-of-domain benchmarks.
"""
